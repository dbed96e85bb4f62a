"""The frontier experiment end to end on the tiny pair: its table, its plot and the learned router it trains."""

from __future__ import annotations

import csv
import subprocess
import sys

from conftest import HUB_FIXTURE, REPO


def test_frontier_experiment_writes_its_table_and_plot(tiny_models, tmp_path):
    args = [sys.executable, "experiments/router_frontier.py", f"--model=a={tiny_models['bpe_a']}",
            f"--model=b={tiny_models['bpe_b']}", "--problems=2", "--calibration=2", "--batch-size=2", "--answer-chars=60",
            f"--hub-mirror={HUB_FIXTURE}", f"--out={tmp_path}"]  # fmt: skip
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "frontier.csv").open()))
    families = {r["family"] for r in rows}
    assert families == {"single", "mixture", "averaging", "router random", "router confidence", "router learned"}
    cost = {(r["family"], r["config"]): float(r["member_runs_per_token"]) for r in rows}
    assert cost[("single", "a")] == cost[("mixture", "w=0.5")] == 1.0 and cost[("averaging", "w=0.5")] == 2.0
    confidence = [cost[k] for k in sorted(k for k in cost if k[0] == "router confidence")]
    assert (
        confidence == sorted(confidence) and 1.0 <= confidence[0] and confidence[-1] <= 2.0
    )  # higher threshold, more cost
    same = [r for r in rows if r["config"] == "w=0.5" and r["family"] in ("mixture", "router random")]
    assert same[0]["reference_prob"] == same[1]["reference_prob"]  # the random router is the mixture
    assert (tmp_path / "frontier.png").stat().st_size > 10_000
    assert (tmp_path / "frontier.md").read_text().count("\n") == len(rows) + 2
    assert (tmp_path / "router.pt").is_file()
