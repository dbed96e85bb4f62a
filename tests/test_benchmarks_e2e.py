"""Stock lm-eval tasks and every paper task, end to end through `python -m mixens`, tiny models, offline data.

GSM8K, MMLU and BBH come from ../shared/data/hub; ARC is not there, so a few ARC-Challenge-shaped rows
(labels A-D and 1-4, as the real set has both) are written into a copy of the mirror here.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SHARED_HUB
from test_cli import run_cli, tiny_overrides

ARC_ROWS = [
    {
        "id": "fixture-1",
        "question": "Which property of a mineral can be determined just by looking at it?",
        "choices": {"text": ["luster", "mass", "weight", "hardness"], "label": ["A", "B", "C", "D"]},
        "answerKey": "A",
    },
    {
        "id": "fixture-2",
        "question": "A student mixes baking soda and vinegar and sees bubbles. What do the bubbles show?",
        "choices": {
            "text": ["a gas was produced", "the mixture froze", "light was absorbed", "nothing happened"],
            "label": ["1", "2", "3", "4"],
        },
        "answerKey": "1",
    },
    {
        "id": "fixture-3",
        "question": "Which organ pumps blood through the human body?",
        "choices": {"text": ["lungs", "heart", "stomach", "brain"], "label": ["A", "B", "C", "D"]},
        "answerKey": "B",
    },
]
ARC_README = """---
configs:
- config_name: ARC-Challenge
  data_files:
  - split: train
    path: ARC-Challenge/train.jsonl
  - split: validation
    path: ARC-Challenge/validation.jsonl
  - split: test
    path: ARC-Challenge/test.jsonl
---
ARC-Challenge-shaped rows written by the mixens tests.
"""


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    """The shared hub mirror plus allenai/ai2_arc."""
    root = tmp_path_factory.mktemp("hub")
    for org in SHARED_HUB.iterdir():
        if org.is_dir():
            (root / org.name).symlink_to(org, target_is_directory=True)
    arc = root / "allenai" / "ai2_arc"
    (arc / "ARC-Challenge").mkdir(parents=True)
    lines = "".join(json.dumps(row) + "\n" for row in ARC_ROWS)
    for split in ("train", "validation", "test"):
        (arc / "ARC-Challenge" / f"{split}.jsonl").write_text(lines)
    (arc / "README.md").write_text(ARC_README)
    return root


def run_tasks(tmp_path, tiny_models, mirror, names, tasks, *extra):
    done = run_cli(
        tmp_path,
        *tiny_overrides(tiny_models, names),
        f"data.hub_mirror={mirror}",
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


def test_stock_tasks_with_different_tokenizers(tiny_models, mirror, tmp_path):
    """Generate tasks (few-shot GSM8K, BBH) and likelihood tasks (MMLU, ARC) with a heterogeneous pair."""
    record = run_tasks(
        tmp_path, tiny_models, mirror, ("bpe_a", "sp_c"), list(STOCK),
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


def test_every_paper_task(tiny_models, mirror, tmp_path):
    record = run_tasks(
        tmp_path, tiny_models, mirror, ("bpe_a", "bpe_b"), ["gsm8k_paper", "mmlu_paper", "arc_paper", "bbh_paper"],
        "benchmark.limit=1", "benchmark.max_gen_toks=6",
    )  # fmt: skip
    metrics = record["metrics"]
    for task in ("gsm8k_paper", "mmlu_paper", "arc_paper", "bbh_paper"):
        assert_score(metrics, task, "exact_match,extract")
    # The groups ran every subject/subtask the mirror holds, one problem each.
    subjects = {p.name for p in (SHARED_HUB / "cais" / "mmlu").iterdir() if p.is_dir()}
    subtasks = {p.name for p in (SHARED_HUB / "SaylorTwift" / "bbh").iterdir() if p.is_dir()}
    assert {t for t in metrics if t.startswith("mmlu_paper_")} == {f"mmlu_paper_{s}" for s in subjects}
    assert {t for t in metrics if t.startswith("bbh_paper_")} == {f"bbh_paper_{s}" for s in subtasks}
    arc = [json.loads(line) for line in (tmp_path / "run" / record["samples"]["arc_paper"]).open()]
    assert arc[0]["target"] == ARC_ROWS[0]["answerKey"]
