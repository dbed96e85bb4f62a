"""mixture samples from exactly the distribution averaging samples from (two-sample chi-square tests)."""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import spec
from scipy.stats import chi2_contingency

import mixens

PROMPTS = ["The capital of France is", "Question: what is 12 + 30?\nAnswer:"]
DRAWS_PER_PROMPT = 10_000  # 20,000 draws per strategy
SETTINGS = {"plain": dict(temperature=1.0, top_k=0), "t0.7_top5": dict(temperature=0.7, top_k=5)}
MEMBERS = {"shared": ("bpe_a", "bpe_b"), "different": ("bpe_a", "sp_c")}


def two_sample_chi_square(a: Counter, b: Counter) -> float:
    """p-value that two samples come from one distribution; rare outcomes are pooled into one bin."""
    keys = sorted(set(a) | set(b), key=lambda k: -(a[k] + b[k]))
    table, rare = [], [0, 0]
    for key in keys:
        if (a[key] + b[key]) / 2 >= 5:
            table.append([a[key], b[key]])
        else:
            rare[0] += a[key]
            rare[1] += b[key]
    if sum(rare) > 0:
        table.append(rare)
    assert len(table) >= 3, "too few bins for a meaningful test"
    return chi2_contingency(list(zip(*table)), correction=False).pvalue


def first_two_tokens(ensemble, seed: int, **sampling) -> Counter:
    """Joint outcomes (prompt, text of the first two generated tokens): the second token depends on
    the first through each member's catch-up, so lazy sync is under test too."""
    prompts = [p for p in PROMPTS for _ in range(DRAWS_PER_PROMPT)]
    result = ensemble.generate(prompts, max_new_tokens=2, seed=seed, batch_size=5_000, progress=False, **sampling)
    return Counter(zip(prompts, result.texts))


@pytest.fixture(scope="module")
def counts(tiny_models):
    """Outcome counts per (vocabulary, strategy, setting), computed once and shared by the tests."""
    ensembles, memo = {}, {}

    def ensemble(vocab: str, strategy: str, **options):
        key = (vocab, strategy, tuple(sorted(options.items())))
        if key not in ensembles:
            a, b = MEMBERS[vocab]
            members = [spec(tiny_models[a], "first", 0.35), spec(tiny_models[b], "second", 0.65)]
            ensembles[key] = mixens.load_ensemble(members, strategy, **options)
        return ensembles[key]

    def get(vocab: str, strategy: str, setting: str) -> Counter:
        if (vocab, strategy, setting) not in memo:
            # mixture draws per row here, so the 20,000 rows are independent draws (the default draws
            # once per batch: the same per-row distribution, but the rows of a batch are correlated).
            options = {"mixture": {"draw": "sequence"}, "single": {"member": "second"}}.get(strategy, {})
            seed = {"mixture": 11, "averaging": 12, "single": 13}[strategy]
            memo[(vocab, strategy, setting)] = first_two_tokens(
                ensemble(vocab, strategy, **options), seed=seed, **SETTINGS[setting]
            )
        return memo[(vocab, strategy, setting)]

    get.ensemble = ensemble
    return get


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("vocab", MEMBERS)
def test_mixture_matches_averaging(counts, vocab, setting):
    assert two_sample_chi_square(counts(vocab, "mixture", setting), counts(vocab, "averaging", setting)) > 1e-3


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("vocab", MEMBERS)
def test_control_mixture_differs_from_a_single_member(counts, vocab, setting):
    assert two_sample_chi_square(counts(vocab, "mixture", setting), counts(vocab, "single", setting)) < 1e-6


def test_default_batch_draw_matches_averaging(counts):
    """The default draw (one member for the whole batch per step), with batches of one row so the
    draws are independent: fewer draws, same claim."""
    ensemble = counts.ensemble("different", "mixture")
    observed = Counter()
    for seed in range(3_000):
        prompt = PROMPTS[seed % 2]
        text = ensemble.generate([prompt], max_new_tokens=1, seed=seed, top_k=5, temperature=0.7).texts[0]
        observed[(prompt, text)] += 1
    prompts = [PROMPTS[i % 2] for i in range(20_000)]
    reference = counts.ensemble("different", "averaging").generate(
        prompts, max_new_tokens=1, seed=5, top_k=5, temperature=0.7, batch_size=5_000, progress=False
    )
    assert two_sample_chi_square(observed, Counter(zip(prompts, reference.texts))) > 1e-3
