"""Stock lm-eval tasks and every paper task, end to end through `python -m mixens`, tiny models, offline data.

Every benchmark's rows come from the repository's own fixture (tests/data/hub).
"""

from __future__ import annotations

import json

import pytest
from conftest import HUB_FIXTURE
from test_cli import run_cli, tiny_overrides


def run_tasks(tmp_path, tiny_models, names, tasks, *extra):
    done = run_cli(
        tmp_path,
        *tiny_overrides(tiny_models, names),
        f"data.hub_mirror={HUB_FIXTURE}",
        "benchmark.name=e2e",
        f"benchmark.tasks=[{','.join(tasks)}]",
        *extra,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((tmp_path / "run" / "results.json").read_text())


def assert_score(metrics: dict, task: str, metric: str) -> None:
    assert task in metrics, sorted(metrics)
    value = metrics[task].get(metric)
    assert value is not None and 0.0 <= value <= 1.0, (task, metrics[task])


STOCK = {
    "gsm8k": "exact_match,strict-match",
    "mmlu_abstract_algebra": "acc,none",
    "mmlu_college_biology": "acc,none",
    "bbh_cot_fewshot_boolean_expressions": "exact_match,get-answer",
    "arc_challenge": "acc_norm,none",
}


def test_stock_tasks_with_different_tokenizers(tiny_models, tmp_path):
    """Generate tasks (few-shot GSM8K, BBH) and likelihood tasks (MMLU, ARC) with a heterogeneous pair."""
    record = run_tasks(
        tmp_path, tiny_models, ("bpe_a", "sp_c"), list(STOCK),
        "benchmark.limit=2", "benchmark.max_gen_toks=6", "ensemble=averaging",
    )  # fmt: skip
    for task, metric in STOCK.items():
        assert_score(record["metrics"], task, metric)
    assert record["n_samples"]["gsm8k"]["effective"] == 2
    # The generate tasks ran through the ensemble: both members fed at every step.
    assert record["speed"]["tokens_generated"] > 0
    assert record["speed"]["forward_passes_per_step"] == pytest.approx(2.0)
    samples = [json.loads(line) for line in (tmp_path / "run" / record["samples"]["arc_challenge"]).open()]
    assert len(samples) == 2 and all(len(s["resps"]) == 4 for s in samples)  # one score per option


def test_every_paper_task(tiny_models, tmp_path):
    record = run_tasks(
        tmp_path, tiny_models, ("bpe_a", "bpe_b"), ["gsm8k_paper", "mmlu_paper", "arc_paper", "bbh_paper"],
        "benchmark.limit=1", "benchmark.max_gen_toks=6",
    )  # fmt: skip
    metrics = record["metrics"]
    for task in ("gsm8k_paper", "mmlu_paper", "arc_paper", "bbh_paper"):
        assert_score(metrics, task, "exact_match,extract")
    # The groups ran every subject/subtask the mirror holds, one problem each.
    subjects = {p.name for p in (HUB_FIXTURE / "cais" / "mmlu").iterdir() if p.is_dir()}
    subtasks = {p.name for p in (HUB_FIXTURE / "SaylorTwift" / "bbh").iterdir() if p.is_dir()}
    assert {t for t in metrics if t.startswith("mmlu_paper_")} == {f"mmlu_paper_{s}" for s in subjects}
    assert {t for t in metrics if t.startswith("bbh_paper_")} == {f"bbh_paper_{s}" for s in subtasks}
    arc = [json.loads(line) for line in (tmp_path / "run" / record["samples"]["arc_paper"]).open()]
    first_test_row = json.loads((HUB_FIXTURE / "allenai/ai2_arc/ARC-Challenge/test.jsonl").read_text().splitlines()[0])
    assert arc[0]["target"] == first_test_row["answerKey"]
