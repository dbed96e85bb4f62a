"""The real packaged pair, SmolLM2-135M-Instruct (byte-level BPE, 49k) + Gemma-3-270M (SentencePiece
style, 262k): different tokenizers, real weights, under mixture and averaging."""

from __future__ import annotations

import pytest

import mixens
from mixens.vocab import UnionVocab, token_surfaces

pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of Germany is Berlin. The capital of France is",
    "The capital of Spain is Madrid. The capital of Italy is",
]
ANSWERS = ["Paris", "Rome"]


@pytest.fixture(scope="module")
def pair():
    models = [
        {"name": "smollm2", "path": "packaged:smollm2-135m-instruct", "weight": 0.5, "device": "cpu"},
        {"name": "gemma3", "path": "packaged:gemma-3-270m", "weight": 0.5, "device": "cpu"},
    ]
    loaded = {s: mixens.load_ensemble(models, s) for s in ("mixture",)}
    loaded["averaging"] = loaded["mixture"].with_strategy("averaging")
    return loaded


def test_the_pair_needs_the_string_level_union(pair):
    ensemble = pair["mixture"]
    assert isinstance(ensemble.vocab, UnionVocab)
    for member in ensemble.members:
        surfaces = token_surfaces(member.tokenizer)
        for text in ["The capital of France is Paris.", "  two\n\ttabs ü 東京 🙂 1,234"]:
            ids = member.tokenizer(text, add_special_tokens=False)["input_ids"]
            assert b"".join(surfaces[i] for i in ids) == text.encode()


@pytest.mark.parametrize("strategy", ["mixture", "averaging"])
@pytest.mark.parametrize("do_sample", [False, True])
def test_factual_completion(pair, strategy, do_sample):
    # T=0.2: sharp enough that a sampled completion is the fact for any seed (at T=0.5 these small
    # models still write " Naples" for Italy about one time in five).
    result = pair[strategy].generate(
        PROMPTS, max_new_tokens=4, do_sample=do_sample, temperature=0.2, top_k=5, seed=1, until=["."]
    )
    for text, answer in zip(result.texts, ANSWERS):
        assert answer in text, result.texts
        assert "▁" not in text
    stats = result.stats
    per_step = stats.forward_passes / stats.steps
    assert per_step == (1.0 if strategy == "mixture" else 2.0)
