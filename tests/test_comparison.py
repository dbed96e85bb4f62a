"""The comparison of strategies on one set of loaded members: what runs, its intervals, its table."""

from __future__ import annotations

import math

import pytest
from conftest import spec

import mixens
from mixens.comparison import check_compare, compared_ensembles, comparison_rows, comparison_table, interval
from mixens.strategies import build_strategy


@pytest.fixture(scope="module")
def pair(tiny_models):
    return mixens.load_ensemble([spec(tiny_models["bpe_a"], "a", 0.6), spec(tiny_models["sp_c"], "c", 0.4)], "mixture")


def test_compared_strategies_share_the_loaded_members_and_end_with_the_runs_own(pair):
    runs = compared_ensembles(pair, ["members", "averaging"])
    assert [label for label, _ in runs] == ["a", "c", "averaging", "mixture"]
    assert runs[-1][1] is pair
    for _, ensemble in runs:
        assert ensemble.members is pair.members and ensemble.vocab is pair.vocab
    assert [e.strategy.name for _, e in runs] == ["single", "single", "averaging", "mixture"]
    assert [e.strategy.member for _, e in runs[:2]] == [0, 1]
    # The run's own strategy is not evaluated twice when it is listed too.
    assert [label for label, _ in compared_ensembles(pair, ["mixture", "averaging"])] == ["averaging", "mixture"]


def test_other_weights_share_the_loaded_models_and_a_zero_weight_member_never_runs(pair):
    leaning = pair.with_weights([3.0, 1.0])
    assert leaning.members is pair.members and leaning.vocab is pair.vocab and leaning.strategy is pair.strategy
    assert leaning.weights == pytest.approx((0.75, 0.25)) and pair.weights == pytest.approx((0.6, 0.4))
    settings = {"max_new_tokens": 8, "do_sample": True, "top_k": 5, "seed": 4}
    only_a = pair.with_weights([1.0, 0.0]).generate(["The capital of France is"], **settings)
    alone = pair.with_strategy("single", member="a").generate(["The capital of France is"], **settings)
    assert only_a.texts == alone.texts and only_a.stats.members["c"].forward_passes == 0
    with pytest.raises(mixens.ConfigError, match="1 weights for 2 members"):
        pair.with_weights([1.0])


def test_a_member_alone_inside_the_ensemble_writes_what_it_writes_loaded_alone(tiny_models):
    # A shared vocabulary: token for token the same. (In a union of different vocabularies a member's
    # tokens with the same surface text are one entry, so its text distribution is kept, not its ids.)
    ensemble = mixens.load_ensemble([spec(tiny_models["bpe_a"], "a"), spec(tiny_models["bpe_b"], "b")], "mixture")
    prompts = ["The capital of France is", "def add(a, b):"]
    settings = {"max_new_tokens": 6, "do_sample": True, "top_k": 5, "seed": 3}
    inside = compared_ensembles(ensemble, ["members"])[1][1].generate(prompts, **settings).texts
    alone = mixens.load_ensemble([spec(tiny_models["bpe_b"], "b")], "single").generate(prompts, **settings).texts
    assert inside == alone


@pytest.mark.parametrize(
    ("entries", "strategy", "message"),
    [(["memebrs"], "mixture", "compare has 'memebrs': strategy 'memebrs' is unknown"),
     (["members"], "single", "compare needs a strategy that loads every model")],
)  # fmt: skip
def test_bad_compare_entries_are_named(entries, strategy, message):
    with pytest.raises(mixens.ConfigError, match=message):
        check_compare(entries, build_strategy(strategy, ["a", "b"]), ["a", "b"])


def test_a_router_with_its_default_options_can_be_compared():
    check_compare(["members", "router", "averaging"], build_strategy("mixture", ["a", "b"]), ["a", "b"])


def test_right_or_wrong_scores_get_wilsons_interval():
    mean, low, high = interval([1.0] * 3 + [0.0] * 7)
    assert mean == pytest.approx(0.3)
    # Wilson score interval for 3/10 at 95%, by its formula.
    z, n, p = 1.959963984540054, 10, 0.3
    centre, half = (
        (p + z * z / (2 * n)) / (1 + z * z / n),
        z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n),
    )
    assert (low, high) == pytest.approx((centre - half, centre + half), abs=1e-9)
    assert interval([0.0] * 8)[1:] == pytest.approx((0.0, 0.3244), abs=1e-4)  # never below 0, not empty


def test_other_scores_get_a_t_interval():
    mean, low, high = interval([0.5, 0.25, 0.75, 1.0])
    assert mean == pytest.approx(0.625)
    assert (high - low) / 2 == pytest.approx(3.182446 * 0.322749 / 2, rel=1e-5)  # t(0.975, 3) * sd / sqrt(n)


def _results(task: str, scores: list[float]) -> dict:
    samples = [{"doc_id": i, "filter": "none", "exact_match": s} for i, s in enumerate(scores)]
    samples += [{"doc_id": i, "filter": "other", "exact_match": 0.0} for i in range(len(scores))]
    return {
        "results": {task: {"alias": task, "exact_match,none": sum(scores) / len(scores)}},
        "samples": {task: samples},
    }


def _speed(tokens: int, seconds: float, prefill: float, runs: float) -> dict:
    return {"tokens_generated": tokens, "wall_seconds": seconds, "tokens_per_second": tokens / seconds,
            "prefill_seconds": prefill, "decode_seconds": seconds - prefill, "member_runs_per_token": runs}  # fmt: skip


def test_rows_and_table_from_lm_eval_results():
    evaluations = [
        ("a", _results("t", [1, 0, 0, 0]), _speed(tokens=40, seconds=4.0, prefill=2.0, runs=1.0)),
        ("averaging", _results("t", [1, 1, 0, 0]), _speed(tokens=40, seconds=8.0, prefill=4.0, runs=2.0)),
        ("mixture", _results("t", [1, 1, 1, 0]), _speed(tokens=40, seconds=5.0, prefill=3.0, runs=1.0)),
    ]
    rows = comparison_rows(evaluations, ["t"])
    assert [r["scores"]["t"]["mean"] for r in rows] == [0.25, 0.5, 0.75]  # the filter of the headline metric only
    assert [r["scores"]["t"]["n"] for r in rows] == [4, 4, 4]
    assert [r["speedup_over_averaging"] for r in rows] == [2.0, 1.0, 1.6]
    assert [r["decode_tokens_per_second"] for r in rows] == [20.0, 10.0, 20.0]
    assert [r["decode_speedup_over_averaging"] for r in rows] == [2.0, 1.0, 2.0]
    table = comparison_table(rows)
    assert "mixture" in table and "75.0 [" in table and "1.60" in table
    assert len(table.splitlines()) == 2 + 3 + 1
