"""Lazy sync: a catch-up prefill of k tokens gives the logits step-by-step decoding gives."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mixens.cache import MemberCache

PROMPTS = ["The capital of France is", "Question: what is 12 + 30?\nAnswer: it is", "Hi"]


@pytest.fixture(scope="module")
def model_and_prompts(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models["bpe_a"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["bpe_a"], dtype=torch.float32).eval()
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    assert len({len(p) for p in prompts}) == len(prompts)  # different lengths: padding is exercised
    return model, tok, prompts


def _cache(model, tok, prompts):
    return MemberCache(model, torch.device("cpu"), [len(p) for p in prompts], tok.pad_token_id, model.config.vocab_size)


@torch.inference_mode()
def _reference_logits(model, ids: list[int]) -> torch.Tensor:
    """No cache, no padding: the model on the full sequence."""
    return model(input_ids=torch.tensor([ids])).logits[0, -1]


def _continuations(rows: int, k: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 400, (k,), generator=g).tolist() for _ in range(rows)]


@pytest.mark.parametrize("k", range(1, 9))
def test_catch_up_of_k_tokens_equals_step_by_step(model_and_prompts, k):
    model, tok, prompts = model_and_prompts
    rows = len(prompts)
    extra = _continuations(rows, k, seed=k)
    active = [True] * rows

    stepwise = _cache(model, tok, prompts)
    logits = stepwise.advance(prompts, active)
    for t in range(1, k + 1):
        logits_step = stepwise.advance([p + e[:t] for p, e in zip(prompts, extra)], active)

    lazy = _cache(model, tok, prompts)
    lazy.advance(prompts, active)
    logits_lazy = lazy.advance([p + e for p, e in zip(prompts, extra)], active)

    assert logits.shape == (rows, model.config.vocab_size)
    torch.testing.assert_close(logits_lazy, logits_step, atol=1e-4, rtol=0)
    for b in range(rows):
        torch.testing.assert_close(logits_lazy[b], _reference_logits(model, prompts[b] + extra[b]), atol=1e-4, rtol=0)
    assert lazy.stats.forward_passes == 2 and stepwise.stats.forward_passes == k + 1
    assert lazy.stats.catchup_tokens == rows * (k - 1)
    assert lazy.stats.prompt_tokens == sum(len(p) for p in prompts)
    assert lazy.stats.generated_tokens == rows * k


def test_per_row_crops_and_compaction_keep_logits_exact(model_and_prompts):
    """Rows re-tokenised differently (crops of different depth) and a compacted cache still give the
    logits of a fresh forward over each row's current ids."""
    model, tok, prompts = model_and_prompts
    rows = len(prompts)
    cache = _cache(model, tok, prompts)
    targets = [list(p) for p in prompts]
    cache.advance(targets, [True] * rows)
    g = torch.Generator().manual_seed(0)
    compactions = 0
    for _step in range(40):
        for b in range(rows):
            drop = int(torch.randint(0, 4, (1,), generator=g))
            if drop and len(targets[b]) - drop > len(prompts[b]):
                del targets[b][-drop:]
            targets[b] += torch.randint(5, 400, (1 + b % 2,), generator=g).tolist()
        width_before = cache.live.shape[1]
        logits = cache.advance(targets, [True] * rows)
        compactions += cache.live.shape[1] < width_before
    assert cache.stats.cropped_tokens > 0
    assert compactions > 0, "the test should exercise compaction"
    for b in range(rows):
        torch.testing.assert_close(logits[b], _reference_logits(model, targets[b]), atol=1e-4, rtol=0)


def test_inactive_rows_are_left_alone(model_and_prompts):
    model, tok, prompts = model_and_prompts
    cache = _cache(model, tok, prompts)
    cache.advance(prompts, [True] * len(prompts))
    grown = [p + [42, 43] for p in prompts]
    logits = cache.advance(grown, [True, False, True])
    assert cache.rows[1].ids == prompts[1]
    torch.testing.assert_close(logits[2], _reference_logits(model, grown[2]), atol=1e-4, rtol=0)
