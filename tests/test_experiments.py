"""The presets in mixens/conf/experiment/: each composes, and its sweep expands to the table's jobs (no model runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from mixens.cli import CONF_DIR
from mixens.config import validate_run

PAPER_TASKS = {"gsm8k_paper", "mmlu_paper", "arc_paper", "bbh_paper"}
QWEN = ["qwen2.5-3b-instruct", "qwen2.5-math-1.5b-instruct"]
MISTRALS = ["openchat-3.5-0106", "nous-hermes-2-mistral-7b-dpo", "openhermes-2.5-mistral-7b"]
HETERO = ["openchat-3.5-0106", "deepseek-llm-7b-chat", "mistral-7b-instruct-v0.2"]
SMALL = ["smollm2-135m-instruct", "gemma-3-270m"]

# preset -> (jobs, models, strategies, tasks, top-k values, seeds)
EXPECTED = {
    "paper_qwen": (80, QWEN, {"averaging_topk_union", "mixture"}, PAPER_TASKS, {5, 10}, {1, 2, 3, 4, 5}),
    "paper_qwen_single": (80, QWEN, {"single"}, PAPER_TASKS, {5, 10}, {1, 2, 3, 4, 5}),
    "paper_mistral_pair": (
        80,
        MISTRALS[:2],
        {"averaging_topk_union", "mixture"},
        PAPER_TASKS,
        {5, 10},
        {1, 2, 3, 4, 5},
    ),
    "paper_mistral_trio": (80, MISTRALS, {"averaging_topk_union", "mixture"}, PAPER_TASKS, {5, 10}, {1, 2, 3, 4, 5}),
    "paper_mistral_single": (120, MISTRALS, {"single"}, PAPER_TASKS, {5, 10}, {1, 2, 3, 4, 5}),
    "paper_hetero": (80, HETERO, {"averaging_topk_union", "mixture"}, PAPER_TASKS, {5, 10}, {1, 2, 3, 4, 5}),
    "paper_hetero_single": (120, HETERO, {"single"}, PAPER_TASKS, {5, 10}, {1, 2, 3, 4, 5}),
    "paper_lambda": (
        30,
        ["llama-3.2-1b-instruct", "llama-3.1-8b-instruct"],
        {"averaging_topk_union", "mixture"},
        {"gsm8k_paper"},
        {10},
        {1, 2, 3},
    ),
    "paper_small": (4, SMALL, {"averaging_topk_union", "mixture"}, {"gsm8k_paper"}, {5}, {1, 2}),
    "paper_small_single": (4, SMALL, {"single"}, {"gsm8k_paper"}, {5}, {1, 2}),
}


def presets() -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml") if not p.stem.startswith("_"))


def sweep_jobs(name: str) -> list[list[str]]:
    """The override list of every job `python -m mixens experiment=<name>` launches."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={name}"], return_hydra_config=True)
    assert str(cfg.hydra.mode).endswith("MULTIRUN")  # a preset sweeps without -m
    params = [f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()]
    batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params), None)
    return batches[0]


def job_config(name: str, job: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=[f"experiment={name}", *job], return_hydra_config=True)


def test_every_preset_is_checked():
    assert presets() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_sweep_expands_to_the_tables_jobs(name, monkeypatch):
    # Validate hub ids by their form only: these tests run offline, without the models downloaded.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    jobs_expected, models, strategies, tasks, top_ks, seeds = EXPECTED[name]
    jobs = sweep_jobs(name)
    assert len(jobs) == jobs_expected
    # Compose every job for the small sweeps, and the first, a middle and the last for the others.
    picked = jobs if len(jobs) <= 30 else [jobs[0], jobs[len(jobs) // 2], jobs[-1]]
    seen = {"strategy": set(), "task": set(), "top_k": set(), "seed": set(), "member": set()}
    for job in picked:
        cfg = job_config(name, job)
        specs = validate_run(cfg).specs
        assert [s.name for s in specs] == models
        bench = cfg.benchmark
        assert bench.do_sample is True and bench.temperature == 1.0  # the paper samples
        assert set(bench.tasks) <= PAPER_TASKS
        # The job's folder name resolves (it names strategy, member, task, top-k, seed or weight).
        cfg.hydra.job.num = 0
        assert "${" not in OmegaConf.to_container(cfg.hydra.sweep, resolve=True)["subdir"]
        seen["strategy"].add(cfg.ensemble.strategy)
        seen["task"].add(bench.name)
        seen["top_k"].add(bench.top_k)
        seen["seed"].add(cfg.seed)
        seen["member"].add(cfg.ensemble.options.get("member"))
    assert seen["strategy"] <= strategies and seen["task"] <= tasks
    assert seen["top_k"] <= top_ks and seen["seed"] <= seeds
    if len(picked) == len(jobs):
        assert (seen["strategy"], seen["task"], seen["top_k"], seen["seed"]) == (strategies, tasks, top_ks, seeds)
    if strategies == {"single"}:
        assert seen["member"] <= set(models)


def test_the_sweep_values_cover_the_grid():
    """From the overrides alone (no composing): each grid value appears in the right number of jobs."""
    jobs = sweep_jobs("paper_hetero_single")
    members = [o.split("=", 1)[1] for job in jobs for o in job if o.startswith("ensemble.options.member=")]
    assert sorted(set(members)) == sorted(HETERO) and all(members.count(m) == 40 for m in HETERO)
    jobs = sweep_jobs("paper_qwen")
    tasks = [o.split("=", 1)[1] for job in jobs for o in job if o.startswith("benchmark=")]
    assert {t: tasks.count(t) for t in PAPER_TASKS} == {t: 20 for t in PAPER_TASKS}


def test_the_weight_sweep_moves_both_weights_together():
    weights = []
    for job in sweep_jobs("paper_lambda"):
        cfg = job_config("paper_lambda", job)
        w = {k: m.weight for k, m in cfg.models.items()}
        assert w["llama-3_2-1b-instruct"] + w["llama-3_1-8b-instruct"] == pytest.approx(1.0)
        weights.append(w["llama-3_2-1b-instruct"])
    assert sorted(set(weights)) == [0.1, 0.3, 0.5, 0.7, 0.9]
    assert all(weights.count(w) == 6 for w in set(weights))  # CE and ME x 3 seeds each


def test_a_command_line_value_overrides_the_preset():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=paper_qwen", "benchmark.limit=50", "seed=7"])
    assert cfg.benchmark.limit == 50 and cfg.seed == 7
