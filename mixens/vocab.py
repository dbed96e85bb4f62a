"""Vocabulary alignment: one id space in which the members' next-token distributions can be mixed.

Members that share a vocabulary (same token -> id map) mix their distributions id by id. Otherwise each
token is reduced to its surface text as raw bytes (byte-level BPE symbols decoded, SentencePiece's
'▁' turned into a space, byte-fallback tokens '<0xNN>' into that byte) and the ensemble samples in the
union of those byte strings. End-of-sequence tokens of every member share one union entry; other special
tokens have no surface text and are never sampled in the union.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import torch

EOS_SURFACE = b""  # the union entry for "end of sequence" (no real token has an empty surface)
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _printable_byte_map() -> dict[str, int]:
    """Byte-level BPE writes every byte as one printable character; this is the inverse of that map."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars = {b: b for b in keep}
    shift = 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + shift
            shift += 1
    return {chr(code): b for b, code in chars.items()}


BYTE_LEVEL_DECODER = _printable_byte_map()


def _contains_type(node, kind: str) -> bool:
    if isinstance(node, dict):
        return node.get("type") == kind or any(_contains_type(v, kind) for v in node.values())
    if isinstance(node, list):
        return any(_contains_type(v, kind) for v in node)
    return False


@dataclass(frozen=True)
class TokenizerKind:
    byte_level: bool  # GPT-2 style: every token is a string of byte symbols
    space_marker: str | None  # SentencePiece style: this character stands for a space


def tokenizer_kind(tokenizer) -> TokenizerKind:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # slow tokenizers: SentencePiece conventions are the common case
        return TokenizerKind(False, "▁")
    spec = json.loads(backend.to_str())
    parts = [spec.get("decoder"), spec.get("pre_tokenizer")]
    if _contains_type(parts, "ByteLevel"):
        return TokenizerKind(True, None)
    decoder_text = json.dumps(spec.get("decoder"), ensure_ascii=False)
    marker = "▁" if (_contains_type(parts, "Metaspace") or "▁" in decoder_text) else None
    return TokenizerKind(False, marker)


def vocab_size(tokenizer) -> int:
    return max(tokenizer.get_vocab().values()) + 1


def special_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    for token_id, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(added, "special", False):
            ids.add(token_id)
    return ids


def token_surfaces(tokenizer) -> list[bytes | None]:
    """Surface bytes of every id; None for special tokens and ids without a token."""
    kind = tokenizer_kind(tokenizer)
    surfaces: list[bytes | None] = [None] * vocab_size(tokenizer)
    added = getattr(tokenizer, "added_tokens_decoder", {})
    skip = special_ids(tokenizer)
    for token, token_id in tokenizer.get_vocab().items():
        if token_id in skip:
            continue
        if token_id in added:  # added tokens hold plain text, not byte symbols
            surface = added[token_id].content.encode()
        elif kind.byte_level:
            try:
                surface = bytes(BYTE_LEVEL_DECODER[ch] for ch in token)
            except KeyError:
                surface = token.encode()
        elif match := _BYTE_FALLBACK.match(token):
            surface = bytes([int(match.group(1), 16)])
        else:
            surface = (token.replace(kind.space_marker, " ") if kind.space_marker else token).encode()
        surfaces[token_id] = surface or None
    return surfaces


def byte_token_ids(tokenizer) -> list[int | None]:
    """The id that spells each single byte, where the vocabulary has one (byte-level BPE, byte fallback)."""
    vocab = tokenizer.get_vocab()
    kind = tokenizer_kind(tokenizer)
    ids: list[int | None] = [None] * 256
    if kind.byte_level:
        for symbol, byte in BYTE_LEVEL_DECODER.items():
            ids[byte] = vocab.get(symbol)
    else:
        for byte in range(256):
            ids[byte] = vocab.get(f"<0x{byte:02X}>")
    return ids


def split_incomplete_utf8(data: bytes) -> tuple[str, bytes]:
    """Text of the complete characters, and the bytes of a character still being spelled at the end."""
    cut = len(data)
    for back in range(1, min(3, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # continuation byte: keep looking for the lead byte
            continue
        if byte >= 0xC0:
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            if back < need:
                cut = len(data) - back
        break
    return data[:cut].decode("utf-8", errors="replace"), data[cut:]


class MemberCodec:
    """A member's canonical tokenisation of (its prompt + the shared generated bytes)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.byte_ids = byte_token_ids(tokenizer)

    def encode(self, prompts: list[tuple[str, bool]], generated: list[bytes]) -> list[list[int]]:
        """One id list per row. A character not yet complete is spelled with byte tokens, where possible."""
        rows: list[list[int]] = []
        texts, pendings = zip(*(split_incomplete_utf8(g) for g in generated)) if generated else ((), ())
        # Rows are grouped by the add-special-tokens flag so each group is one batched tokenizer call.
        for flag in (True, False):
            idx = [b for b, (_, add) in enumerate(prompts) if add is flag]
            if not idx:
                continue
            encoded = self.tokenizer([prompts[b][0] + texts[b] for b in idx], add_special_tokens=flag)["input_ids"]
            for b, ids in zip(idx, encoded):
                rows.append((b, ids + [self.byte_ids[x] for x in pendings[b] if self.byte_ids[x] is not None]))
        return [ids for _, ids in sorted(rows, key=lambda pair: pair[0])]


class SharedVocab:
    """All members use one vocabulary: mix id by id."""

    shared = True

    def __init__(self, tokenizer, eos_ids: set[int]):
        self.size = vocab_size(tokenizer)
        self.eos_ids = frozenset(eos_ids)

    def member_size(self, member_index: int) -> int:
        return self.size

    def to_union(self, member_index: int, device) -> None:
        return None


class UnionVocab:
    """String-level union of different vocabularies; index 0 is the shared end-of-sequence entry."""

    shared = False
    EOS = 0

    def __init__(self, tokenizers: list, eos_ids: list[set[int]]):
        index: dict[bytes, int] = {EOS_SURFACE: self.EOS}
        self.surfaces: list[bytes] = [EOS_SURFACE]
        self.codecs = [MemberCodec(t) for t in tokenizers]
        self._sizes = [vocab_size(t) for t in tokenizers]
        maps = []
        for tokenizer, eos in zip(tokenizers, eos_ids):
            member_map = []
            for token_id, surface in enumerate(token_surfaces(tokenizer)):
                if token_id in eos:
                    member_map.append(self.EOS)
                elif surface is None:
                    member_map.append(-1)
                else:
                    if surface not in index:
                        index[surface] = len(self.surfaces)
                        self.surfaces.append(surface)
                    member_map.append(index[surface])
            maps.append(member_map)
        self.size = len(self.surfaces)
        # Ids without a surface (special tokens, holes in the id range) point at a dump column past the end.
        self._maps = [torch.tensor([m if m >= 0 else self.size for m in mm], dtype=torch.long) for mm in maps]
        self._on_device: dict = {}

    def to_union(self, member_index: int, device) -> torch.Tensor:
        key = (member_index, str(device))
        if key not in self._on_device:
            self._on_device[key] = self._maps[member_index].to(device)
        return self._on_device[key]

    def member_size(self, member_index: int) -> int:
        return self._sizes[member_index]


def build_alignment(tokenizers: list, eos_ids: list[set[int]]) -> SharedVocab | UnionVocab:
    first = tokenizers[0].get_vocab()
    if all(t.get_vocab() == first for t in tokenizers[1:]):
        return SharedVocab(tokenizers[0], set().union(*eos_ids))
    return UnionVocab(tokenizers, eos_ids)
