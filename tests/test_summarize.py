"""The summariser: results files written by mixens.results_files -> cells, tables and plots with known values."""

from __future__ import annotations

import csv
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from scipy import stats

from mixens.cli import CONF_DIR
from mixens.report.cells import group_cells, load_runs
from mixens.report.plots import accuracy_series, lambda_series
from mixens.report.tables import PAPER_RESULTS, read_paper_results
from mixens.results_files import write_results
from mixens.summarize import main, summarize

SMOL, GEMMA = "smollm2-135m-instruct", "gemma-3-270m"
TASK, METRIC = "gsm8k_paper", "exact_match,extract"
SEEDS = (1, 2, 3)
# Scores per seed: CE mean 60 (std 10), ME mean 65, members alone 40 and 55 -> best single is Gemma.
SCORES = {
    "averaging_topk_union": (0.50, 0.60, 0.70),
    "mixture": (0.55, 0.60, 0.80),
    SMOL: (0.40, 0.40, 0.40),
    GEMMA: (0.50, 0.55, 0.60),
}


def run_config(*overrides: str) -> dict:
    """The resolved config of a job of the small preset, as the app would record it."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=paper_small", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def write_run(folder: Path, config: dict, seed: int, score: float, tokens_per_second: float = 20.0) -> Path:
    """A results.json through tracking's own writer, shaped like mixens.cli.record_run's record."""
    config = {**config, "seed": seed}
    record = {
        "config": config,
        "metrics": {TASK: {"alias": TASK, METRIC: score, "exact_match_stderr,extract": 0.1, "sample_len": 4}},
        "speed": {
            "tokens_generated": 100,
            "wall_seconds": 100 / tokens_per_second,
            "tokens_per_second": tokens_per_second,
            "forward_passes_per_step": 1.0,
        },
        "versions": {},
        "seed": seed,
        "git_commit": None,
    }
    return write_results(folder, record)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    configs = {
        "averaging_topk_union": run_config("ensemble=averaging_topk_union"),
        "mixture": run_config("ensemble=mixture"),
        SMOL: run_config("ensemble=single", f"ensemble.options.member={SMOL}"),
        GEMMA: run_config("ensemble=single", f"ensemble.options.member={GEMMA}"),
    }
    for name, config in configs.items():
        for seed, score in zip(SEEDS, SCORES[name]):
            write_run(root / "pool" / f"{name}_seed{seed}", config, seed, score)
    # A weight sweep: ME faster as Gemma's weight rises (here by construction), CE flat.
    for w_gemma, rate in ((0.25, 30.0), (0.75, 10.0)):
        weights = (f"models.{SMOL}.weight={1 - w_gemma}", f"models.{GEMMA}.weight={w_gemma}")
        for strategy, speed in (("mixture", rate), ("averaging_topk_union", 5.0)):
            config = run_config(f"ensemble={strategy}", *weights)
            write_run(root / "lambda" / f"{strategy}_{w_gemma}", config, 1, 0.3 + w_gemma / 10, speed)
    (root / "broken").mkdir()
    (root / "broken" / "results.json").write_text("{ not json")
    return root


def test_runs_are_grouped_into_cells_by_pool_strategy_topk_weights(sweep):
    runs, skipped = load_runs([sweep])
    assert len(skipped) == 1 and "broken" in skipped[0]
    cells = group_cells(runs)
    pools = {key.pool for key in cells}
    assert pools == {(GEMMA, SMOL), (SMOL,), (GEMMA,)}  # sorted names; a single run is its member
    assert {key.metric for key in cells} == {METRIC}  # stderr and sample_len are not scores
    ce = [c for k, c in cells.items() if k.strategy == "averaging_topk_union" and k.weights == (0.5, 0.5)]
    assert len(ce) == 1 and ce[0].key.top_k == 5
    assert {seed: run.value for seed, run in ce[0].by_seed.items()} == dict(zip(SEEDS, SCORES["averaging_topk_union"]))
    assert len(cells) == 4 + 4  # 4 equal-weight cells + 2 weightings x 2 strategies


def test_the_table_has_means_stds_gains_and_paired_differences(sweep, tmp_path):
    done = summarize([sweep], tmp_path / "out", paper_csv=None, plots=False)
    rows = {(r["strategy"], r["pool"], r["weights"]): r for r in done["rows"]}
    pair = f"{GEMMA}+{SMOL}"
    ce, me = rows[("CE", pair, "0.5/0.5")], rows[("ME", pair, "0.5/0.5")]
    assert ce["mean"] == pytest.approx(60.0) and ce["std"] == pytest.approx(10.0)
    assert me["mean"] == pytest.approx(65.0)
    assert me["std"] == pytest.approx(statistics.stdev([55.0, 60.0, 80.0]))
    assert ce["best_single"] == me["best_single"] == GEMMA
    assert ce["gain_over_best_single"] == pytest.approx(5.0) and me["gain_over_best_single"] == pytest.approx(10.0)
    assert rows[("single", SMOL, "")]["mean"] == pytest.approx(40.0)

    assert ce["ci_low"] == pytest.approx(60.0 - stats.t.ppf(0.975, 2) * 10.0 / math.sqrt(3))

    paired = {p["weights"]: p for p in done["paired"]}
    equal = paired["0.5/0.5"]
    # No samples files in this sweep: paired by seed; differences 5, 0, 10 points.
    assert (equal["unit"], equal["n"], equal["seeds"]) == ("seeds", 3, 3)
    assert equal["me_minus_ce"] == pytest.approx(5.0)
    # Exact sign-flip test over 2^3 patterns: |mean| >= 5 points in half of them.
    assert equal["p_difference"] == pytest.approx(0.5)
    assert equal["verdict"] == "undecided"  # 3 seeds show neither a difference nor equivalence
    assert equal["speedup"] == pytest.approx(1.0)  # the fixture's runs all report 20 tokens/s
    assert math.isnan(paired["0.25/0.75"]["p_difference"])  # one pair: no test

    table = (tmp_path / "out" / "summary.md").read_text()
    assert "+5.00 (gemma-3-270m)" in table and "| undecided |" in table
    with (tmp_path / "out" / "cells.csv").open() as handle:
        written = list(csv.DictReader(handle))
    assert len(written) == 8 and {r["strategy"] for r in written} == {"CE", "ME", "single"}


def test_plots_are_written_and_draw_the_inputs(sweep, tmp_path):
    done = summarize([sweep], tmp_path, paper_csv=None)
    assert {p.name for p in done["figures"]} == {
        "accuracy.png",
        "me_minus_ce.png",
        "speedup.png",
        "lambda_tradeoff.png",
    }
    for path in done["figures"]:
        assert path.stat().st_size > 10_000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    points = {label: rest for label, *rest in accuracy_series(done["cells"])[(TASK, METRIC)]}
    half = stats.t.ppf(0.975, 2) * 10.0 / math.sqrt(3)  # CE: mean 60, std 10 over 3 seeds
    assert points[f"{GEMMA}+{SMOL} · CE k=5"] == pytest.approx([60.0, 60.0 - half, 60.0 + half])
    assert points[f"{GEMMA}+{SMOL} · ME k=5"][0] == pytest.approx(65.0)
    assert points[f"{GEMMA} · single k=5"][0] == pytest.approx(55.0)  # the members alone beside them

    lines = lambda_series(done["cells"])[(f"{GEMMA}+{SMOL}", SMOL, TASK, METRIC)]
    # λ = the weight of the model the runs list first (SmolLM2, as the paper's λ is its first model's)
    assert [p[0] for p in lines["ME k=5"]] == [0.25, 0.5, 0.75]
    assert lines["ME k=5"][0] == pytest.approx((0.25, 37.5, 10.0))
    assert lines["ME k=5"][2] == pytest.approx((0.75, 32.5, 30.0))
    assert [p[2] for p in lines["CE k=5"]] == pytest.approx([5.0, 20.0, 5.0])


def test_published_numbers_sit_beside_the_cells(sweep, tmp_path):
    paper = tmp_path / "paper.csv"
    paper.write_text(
        "# a note\n"
        "table,pool,strategy,top_k,task,metric,value,source\n"
        f'T1,{SMOL}+{GEMMA},mixture,5,{TASK},"{METRIC}",71.3,test\n'
        f"T1,{SMOL}+{GEMMA},averaging_topk_union,5,{TASK},,70.1,test\n"  # no metric: any
        f'T1,{SMOL},single,,{TASK},"{METRIC}",40.2,test\n'  # single rows state no top-k
    )
    done = summarize([sweep], tmp_path / "out", paper_csv=paper, plots=False)
    me = [r for r in done["rows"] if r["strategy"] == "ME" and r["weights"] == "0.5/0.5"][0]
    ce = [r for r in done["rows"] if r["strategy"] == "CE" and r["weights"] == "0.5/0.5"][0]
    assert me["paper"] == "71.3" and ce["paper"] == "70.1"
    smol = [r for r in done["rows"] if r["pool"] == SMOL]
    assert smol and all(r["paper"] == "40.2" for r in smol)
    others = [r for r in done["rows"] if r is not me and r is not ce and r["pool"] != SMOL]
    assert others and all(r["paper"] == "" for r in others)  # not other weights, not the other member


def test_the_shipped_paper_file_parses_and_an_empty_one_is_said(sweep, tmp_path):
    shipped = read_paper_results(PAPER_RESULTS)
    assert len(shipped) == 92  # the 96 cells of the two tables; OpenChat alone is printed in both, identically
    qwen = "qwen2.5-3b-instruct+qwen2.5-math-1.5b-instruct"
    assert shipped[(qwen, "averaging_topk_union", 5, "gsm8k_paper", "exact_match,extract")]["value"] == "83.14"
    assert shipped[("qwen2.5-3b-instruct", "single", None, "arc_paper", "exact_match,extract")]["value"] == "81.81"
    empty = tmp_path / "empty.csv"
    empty.write_text("table,pool,strategy,top_k,task,metric,value,source\n")
    done = summarize([sweep], tmp_path / "out", paper_csv=empty, plots=False)
    assert "No published numbers were read" in done["markdown"]


def test_the_command_line_writes_next_to_the_outputs(sweep, capsys):
    main([str(sweep / "pool"), "--no-plots"])
    printed = capsys.readouterr().out
    assert "ME minus CE" in printed and "12 runs in 4 cells" in printed and "How to read this" in printed
    assert (sweep / "pool" / "summary" / "summary.md").exists()


def test_no_results_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no results.json"):
        summarize([tmp_path], tmp_path / "out")


def paper_pool_config(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=paper_qwen", "benchmark.top_k=5", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def test_the_command_summarises_a_paper_pool_beside_the_papers_numbers(tmp_path):
    """`python -m mixens.summarize` on a sweep named like the paper's Qwen pool: the paper's layout with
    its numbers, the members alone as rows, and a temperature variant kept apart from the protocol's runs."""
    qwen, math_ = "qwen2.5-3b-instruct", "qwen2.5-math-1.5b-instruct"
    runs = {
        "ce": (paper_pool_config("ensemble=averaging_topk_union"), (0.82, 0.84, 0.83)),
        "me": (paper_pool_config("ensemble=mixture"), (0.83, 0.83, 0.84)),
        "qwen": (paper_pool_config("ensemble=single", f"ensemble.options.member={qwen}"), (0.79, 0.80, 0.78)),
        "math": (paper_pool_config("ensemble=single", f"ensemble.options.member={math_}"), (0.78, 0.79, 0.80)),
    }
    for name, (config, scores) in runs.items():
        for seed, score in zip(SEEDS, scores):
            write_run(tmp_path / "sweep" / f"{name}_{seed}", config, seed, score)
    # Two runs at seed 0 that differ in temperature only: two cells of one run each, not one of two seeds.
    for temperature, score in ((0.7, 0.5), (0.3, 0.6)):
        config = paper_pool_config("ensemble=mixture", f"benchmark.temperature={temperature}")
        write_run(tmp_path / "sweep" / f"me_t{temperature}", config, 0, score)
    out = tmp_path / "summary"
    done = subprocess.run([sys.executable, "-m", "mixens.summarize", str(tmp_path / "sweep"), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    layout = done.stdout[done.stdout.index(f"### {qwen}+{math_}") :].split("\n\n")[1]
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in layout.splitlines()[2:]}
    assert rows[f"{qwen} (single k=5) [benchmark.temperature=1.0]"].endswith(
        "(79.77)"
    )  # members alone, with the paper's
    assert rows[f"{math_} (single k=5) [benchmark.temperature=1.0]"].endswith("(79.39)")
    assert list(rows)[:3] == [
        f"{qwen} (single k=5) [benchmark.temperature=1.0]",
        f"{math_} (single k=5) [benchmark.temperature=1.0]",
        "CE k=5 [benchmark.temperature=1.0]",
    ]
    assert rows["CE k=5 [benchmark.temperature=1.0]"].startswith("83.00 ± ") and rows[
        "CE k=5 [benchmark.temperature=1.0]"
    ].endswith("(83.14)")
    assert rows["ME k=5 [benchmark.temperature=0.7]"] == "50.00"  # one run: no interval, no paper number
    assert rows["ME k=5 [benchmark.temperature=0.3]"] == "60.00"
    with (out / "cells.csv").open() as handle:
        me_rows = [r for r in csv.DictReader(handle) if r["strategy"] == "ME"]
    assert sorted((r["settings"], r["n_seeds"]) for r in me_rows) == [
        ("benchmark.temperature=0.3", "1"),
        ("benchmark.temperature=0.7", "1"),
        ("benchmark.temperature=1.0", "3"),
    ]
    assert {p.name for p in out.glob("*.png")} >= {"accuracy.png", "me_minus_ce.png", "speedup.png"}
    assert "\\begin{tabular}" in (out / "tables.tex").read_text()


def test_a_comparison_run_gives_a_cell_per_strategy_paired_by_problem(tmp_path):
    """A default-style run (compare: members, averaging) holds four strategies on the same problems."""
    config = run_config("ensemble=mixture", "compare=[members,averaging]")
    rng = np.random.default_rng(0)
    labels = [SMOL, GEMMA, "averaging", "mixture"]
    for seed in SEEDS:
        folder = tmp_path / f"seed{seed}"
        rows = []
        for label in labels:
            correct = (rng.random(40) < 0.5).astype(float)
            where = folder if label == "mixture" else folder / "compare" / label
            where.mkdir(parents=True, exist_ok=True)
            lines = [json.dumps({"doc_id": i, "filter": "none", "exact_match": c}) for i, c in enumerate(correct)]
            (where / "samples_sciq_gen.jsonl").write_text("\n".join(lines) + "\n")
            score = {"metric": "exact_match,none", "n": 40, "mean": correct.mean(), "low": 0.0, "high": 1.0}
            rows.append(
                {
                    "label": label,
                    "scores": {"sciq_gen": score},
                    "tokens_per_second": 10.0 if label == "mixture" else 5.0,
                }
            )
        record = {
            "config": {**config, "seed": seed, "benchmark": {**config["benchmark"], "tasks": ["sciq_gen"]}},
            "metrics": {"sciq_gen": {"exact_match,none": rows[-1]["scores"]["sciq_gen"]["mean"]}},
            "speed": {"tokens_per_second": 10.0}, "seed": seed, "samples": {"sciq_gen": "samples_sciq_gen.jsonl"},
            "comparison": rows,
        }  # fmt: skip
        write_results(folder, record)
    done = summarize([tmp_path], tmp_path / "out", paper_csv=None, plots=False)
    strategies = sorted((r["strategy"], r["pool"]) for r in done["rows"])
    assert strategies == [
        ("CE (exact)", f"{GEMMA}+{SMOL}"),
        ("ME", f"{GEMMA}+{SMOL}"),
        ("single", GEMMA),
        ("single", SMOL),
    ]
    assert all(r["n_seeds"] == 3 for r in done["rows"])
    (paired,) = done["paired"]
    assert (paired["baseline"], paired["unit"], paired["n"]) == ("CE (exact)", "problems", 40)
    assert paired["speedup"] == pytest.approx(2.0)
    assert [r["best_single"] for r in done["rows"] if r["strategy"] == "ME"] != [""]
