"""A stop string that is the text of a special token (a chat model's end of turn that is not its EOS) stops
generation when the token is produced, although special tokens never appear in the generated text."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import _byte_level_bpe, build_tiny_model, spec
from transformers import AutoModelForCausalLM, AutoTokenizer

import mixens
from mixens.transcript import TokenTranscript
from mixens.vocab import SharedVocab

END_OF_TURN = "<|im_end|>"
PROMPTS = ["The capital of France is", "Question: what is 12 + 30?\nAnswer:"]


def _chat_tokenizer():
    tok = _byte_level_bpe()
    tok.add_special_tokens({"additional_special_tokens": [END_OF_TURN]})
    return tok


def _flag_model(folder: Path, seed: int):
    """A tiny model over a tokenizer with the special token, whose hidden dimension 0 is a flag: the layers
    never write it, so it holds the input token's embedding there, and only the special token reads it (with
    a huge weight). Tokens whose flag is negative make the special token all but impossible, positive certain."""
    build_tiny_model(folder, _chat_tokenizer(), seed=seed)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    special = AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids(END_OF_TURN)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0] = 0.0
            layer.mlp.down_proj.weight[0] = 0.0
        model.model.embed_tokens.weight[:, 0] = -0.1
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[special] = 0.0
        model.lm_head.weight[special, 0] = 1e4
    return model, special


def _save(model, folder: Path) -> str:
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def chat_models(tmp_path_factory):
    """'always': writes the special token first thing. 'after_x': writes ordinary tokens until its own
    greedy continuation reaches token x, then the special token; `reference` is that continuation up to x."""
    root = tmp_path_factory.mktemp("chat-models")
    always, special = _flag_model(root / "always", seed=4)
    with torch.no_grad():
        always.model.embed_tokens.weight[:, 0] = 0.1
    _save(always, root / "always")

    after_x, _ = _flag_model(root / "after_x", seed=5)
    tok = AutoTokenizer.from_pretrained(root / "after_x")
    prompt = tok(PROMPTS[0], return_tensors="pt")
    out = after_x.generate(**prompt, do_sample=False, max_new_tokens=12, pad_token_id=tok.pad_token_id)
    generated = out[0, prompt["input_ids"].shape[1] :].tolist()
    assert special not in generated and tok.eos_token_id not in generated
    # x: a generated token (after the first) that occurred neither in the prompt nor before it, so that
    # flagging it leaves everything before it as it was.
    seen = set(prompt["input_ids"][0].tolist())
    k = next(j for j in range(1, len(generated)) if generated[j] not in seen | set(generated[:j]))
    with torch.no_grad():
        after_x.model.embed_tokens.weight[generated[k], 0] = 0.1
    _save(after_x, root / "after_x")
    return {
        "always": str(root / "always"),
        "after_x": str(root / "after_x"),
        "reference": generated[: k + 1],
        "special": special,
    }


def test_a_special_stop_token_ends_generation_with_the_text_before_it(chat_models):
    ensemble = mixens.load_ensemble([spec(chat_models["after_x"], "chat")], "single")
    tok = ensemble.members[0].tokenizer
    reference = chat_models["reference"]
    stopped = ensemble.generate(PROMPTS[:1], max_new_tokens=24, do_sample=False, until=[END_OF_TURN])
    assert stopped.texts == [tok.decode(reference)]
    assert stopped.stats.steps == len(reference) + 1  # the special token was the last one drawn

    # Without the stop string the special token is written, left out of the text, and generation goes on.
    free = ensemble.generate(PROMPTS[:1], max_new_tokens=24, do_sample=False)
    assert free.stats.steps > stopped.stats.steps
    assert free.texts[0].startswith(stopped.texts[0]) and END_OF_TURN not in free.texts[0]


@pytest.mark.parametrize("vocab", ["shared", "different"])
def test_a_member_that_writes_a_special_stop_token_ends_the_row(chat_models, tiny_models, vocab):
    """Shared vocabulary: the ensemble draws the special token itself. Different tokenizers: the union has no
    special tokens, so the member's special stop token counts as its end of sequence for that row."""
    other = chat_models["after_x"] if vocab == "shared" else tiny_models["sp_c"]
    members = [spec(chat_models["always"], "chat", 0.9), spec(other, "other", 0.1)]
    ensemble = mixens.load_ensemble(members, "averaging")
    assert ensemble.shared_vocabulary == (vocab == "shared")
    until = [[END_OF_TURN], ["never written"]]
    result = ensemble.generate(PROMPTS, max_new_tokens=6, do_sample=False, until=until, batch_size=2)
    assert result.texts[0] == ""
    assert result.stats.tokens_generated < 2 * 6  # the first row stopped at once, the second ran on
    assert all(END_OF_TURN not in text for text in result.texts)


def test_the_transcript_cuts_before_a_special_stop_token_and_leaves_other_rows_alone():
    tok = _chat_tokenizer()
    special = tok.convert_tokens_to_ids(END_OF_TURN)
    vocab = SharedVocab(tok, {tok.eos_token_id})
    prompts = [[("Hi", True), ("Hi", True)]]
    transcript = TokenTranscript(vocab, [tok], prompts, [(END_OF_TURN,), ()])
    words = tok("The capital", add_special_tokens=False)["input_ids"]
    for token in words:
        transcript.append([token, token])
    transcript.append([special, special])
    assert transcript.done == [True, False]
    transcript.append([words[0], words[0]])
    assert transcript.texts() == ["The capital", "The capital" + tok.decode(words[:1])]


def test_an_ordinary_stop_string_is_not_a_special_token():
    """Only a stop string equal to a special token's text stops on the token; others match text as before."""
    tok = _chat_tokenizer()
    vocab = SharedVocab(tok, {tok.eos_token_id})
    transcript = TokenTranscript(vocab, [tok], [[("Hi", True)]], [("im_end", "<|im_end")])
    transcript.append([tok.convert_tokens_to_ids(END_OF_TURN)])
    assert transcript.done == [False]
