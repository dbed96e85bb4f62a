"""Vocabulary alignment: surface bytes, the string-level union, canonical re-tokenisation."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from mixens.transcript import TextTranscript
from mixens.vocab import SharedVocab, UnionVocab, build_alignment, split_incomplete_utf8, token_surfaces

TEXTS = [
    "The capital of France is Paris.",
    "  two  spaces\nand a newline\t tab",
    "Über café 🙂 東京 1,234",
    "ʘ unseen ∑ chars ✓",
]


@pytest.fixture(scope="module")
def tokenizers(tiny_models):
    return {name: AutoTokenizer.from_pretrained(path) for name, path in tiny_models.items()}


@pytest.mark.parametrize("name", ["bpe_a", "sp_c"])
@pytest.mark.parametrize("text", TEXTS)
def test_surfaces_of_a_tokenisation_spell_the_text(tokenizers, name, text):
    """Concatenated surface bytes of a tokenisation give back the text's bytes (byte fallback included)."""
    tok = tokenizers[name]
    surfaces = token_surfaces(tok)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    spelled = b"".join(surfaces[i] for i in ids)
    # A metaspace tokenizer that prepends a space to the first word spells that space too.
    assert spelled in (text.encode(), b" " + text.encode())


def test_special_tokens_have_no_surface(tokenizers):
    surfaces = token_surfaces(tokenizers["sp_c"])
    for token in ("<s>", "</s>", "<pad>", "<unk>"):
        assert surfaces[tokenizers["sp_c"].convert_tokens_to_ids(token)] is None


def test_alignment_fast_path_and_union(tokenizers):
    a, b, c = tokenizers["bpe_a"], tokenizers["bpe_b"], tokenizers["sp_c"]
    assert isinstance(build_alignment([a, b], [{a.eos_token_id}, {b.eos_token_id}]), SharedVocab)
    union = build_alignment([a, c], [{a.eos_token_id}, {c.eos_token_id}])
    assert isinstance(union, UnionVocab)
    # Both end-of-sequence tokens map to the one union EOS entry.
    assert int(union.to_union(0, "cpu")[a.eos_token_id]) == UnionVocab.EOS
    assert int(union.to_union(1, "cpu")[c.eos_token_id]) == UnionVocab.EOS
    # The same surface in both vocabularies is one union entry: "Paris" pieces shared by both.
    pieces = {}
    for member, tok in enumerate((a, c)):
        for token_id, surface in enumerate(token_surfaces(tok)):
            if surface == b" the":
                pieces[member] = int(union.to_union(member, "cpu")[token_id])
    assert len(pieces) == 2 and pieces[0] == pieces[1]
    assert len(set(union.surfaces)) == union.size


def test_split_incomplete_utf8():
    emoji = "🙂".encode()
    assert split_incomplete_utf8(b"ok" + emoji[:2]) == ("ok", emoji[:2])
    assert split_incomplete_utf8(b"ok" + emoji) == ("ok🙂", b"")
    assert split_incomplete_utf8("é".encode()[:1]) == ("", "é".encode()[:1])
    assert split_incomplete_utf8(b"") == ("", b"")


def test_members_see_their_own_canonical_tokenisation(tokenizers):
    """Text grown piece by piece (including a character split over byte tokens) is, for every member,
    always its tokenizer's own encoding of prompt + text, with the unfinished character in byte tokens."""
    a, c = tokenizers["bpe_a"], tokenizers["sp_c"]
    union = build_alignment([a, c], [{a.eos_token_id}, {c.eos_token_id}])
    prompts = [[("Say:", True)], [("Say:", True)]]
    transcript = TextTranscript(union, [a, c], prompts, until=[()])
    index = {surface: i for i, surface in enumerate(union.surfaces)}
    pieces = [b" Par", b"is", b" ", "∑".encode()[:1], "∑".encode()[1:], b" caf", "é".encode()]
    text = b""
    for piece in pieces:
        if piece not in index:  # spell it byte by byte, as a byte-level member would
            for byte in piece:
                transcript.append([index[bytes([byte])]])
        else:
            transcript.append([index[piece]])
        text += piece
        complete, pending = split_incomplete_utf8(text)
        for member, tok in enumerate((a, c)):
            expected = tok("Say:" + complete)["input_ids"]
            byte_ids = union.codecs[member].byte_ids
            expected += [byte_ids[x] for x in pending]
            assert transcript.target_ids(member) == [expected]
    assert transcript.texts() == [text.decode()]
