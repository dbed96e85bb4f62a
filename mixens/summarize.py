"""Tables from results files: runs grouped into cells, aggregated over seeds, beside the paper's numbers.

    python -m mixens.summarize outputs/sweeps/paper_qwen outputs/sweeps/paper_qwen_single [--out DIR]

A cell is one (pool, strategy, top-k, weights, task, metric); its runs differ only by seed. For every
ensemble cell the summary gives the mean and standard deviation over seeds, the gain over the best of
its members run alone (same task and top-k), and ME minus CE with a t-test paired by seed. Scores are
shown in percent, as the paper prints them. Writes summary.md, cells.csv, me_vs_ce.csv and the plots.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

PAPER_RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "paper_results.csv"

# What the tables call each strategy; the paper's CE is the top-k union average.
LABELS = {"averaging_topk_union": "CE", "averaging": "CE (exact)", "mixture": "ME", "single": "single"}
CE_STRATEGIES = ("averaging_topk_union", "averaging")
# Numbers lm-eval reports next to scores that are not scores.
NOT_SCORES = ("sample_len", "samples")


@dataclass(frozen=True)
class CellKey:
    pool: tuple[str, ...]  # model names, sorted
    strategy: str
    top_k: int | None
    weights: tuple[float, ...] | None  # normalised, in pool order; None for a single model
    task: str
    metric: str


@dataclass
class Run:
    key: CellKey
    seed: int
    value: float
    tokens_per_second: float | None
    path: str


@dataclass
class Cell:
    key: CellKey
    runs: list[Run] = field(default_factory=list)

    @property
    def values(self) -> list[float]:
        return [r.value for r in self.runs]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.runs) > 1 else math.nan

    @property
    def tokens_per_second(self) -> float:
        rates = [r.tokens_per_second for r in self.runs if r.tokens_per_second is not None]
        return statistics.fmean(rates) if rates else math.nan

    @property
    def by_seed(self) -> dict[int, float]:
        return {r.seed: r.value for r in self.runs}


# ---------------------------------------------------------------------------------------------
# Reading results files


def find_results(paths: list[str | Path]) -> list[Path]:
    found = []
    for path in map(Path, paths):
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(path.rglob("results.json")))
        else:
            raise FileNotFoundError(f"{path} is neither a results file nor a folder.")
    return found


def pool_of(config: dict) -> tuple[tuple[str, ...], tuple[float, ...] | None]:
    """The models a run used, sorted by name, with their normalised weights (None for one model)."""
    models = config.get("models") or {}
    entries = [(m.get("name") or key, float(m.get("weight", 1.0))) for key, m in models.items()]
    ensemble = config.get("ensemble") or {}
    if ensemble.get("strategy") == "single":
        return (ensemble.get("member") or entries[0][0],), None
    entries.sort()
    total = sum(w for _, w in entries) or 1.0
    return tuple(n for n, _ in entries), tuple(round(w / total, 6) for _, w in entries)


def runs_of(record: dict, path: str = "") -> list[Run]:
    """One run per (task, score) a results record holds, for the tasks its benchmark named."""
    config = record["config"]
    pool, weights = pool_of(config)
    bench = config.get("benchmark") or {}
    strategy = config["ensemble"]["strategy"]
    top_k = bench.get("top_k")
    rate = (record.get("speed") or {}).get("tokens_per_second")
    metrics = record.get("metrics") or {}
    # A group task (mmlu_paper) also reports each subtask; the table keeps the names the run asked for.
    tasks = [t for t in bench.get("tasks") or metrics if t in metrics]
    runs = []
    for task in tasks:
        for metric, value in sorted(metrics[task].items()):
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not numeric or "stderr" in metric or metric.split(",")[0] in NOT_SCORES:
                continue
            key = CellKey(pool, strategy, top_k, weights, task, metric)
            runs.append(Run(key, int(record.get("seed", config.get("seed", 0))), float(value), rate, path))
    return runs


def load_runs(paths: list[str | Path]) -> tuple[list[Run], list[str]]:
    """Every run under the paths, and a note for each file that could not be read."""
    runs, skipped = [], []
    for path in find_results(paths):
        try:
            record = json.loads(path.read_text())
            runs.extend(runs_of(record, str(path)))
        except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
            skipped.append(f"{path}: {type(err).__name__}: {err}")
    return runs, skipped


def group_cells(runs: list[Run]) -> dict[CellKey, Cell]:
    cells: dict[CellKey, Cell] = {}
    for run in runs:
        cells.setdefault(run.key, Cell(run.key)).runs.append(run)
    for cell in cells.values():
        cell.runs.sort(key=lambda r: r.seed)
    return cells


# ---------------------------------------------------------------------------------------------
# Comparisons


def best_single(cells: dict[CellKey, Cell], key: CellKey) -> tuple[str, float] | None:
    """The best member of an ensemble cell run alone on the same task and top-k; None unless all ran."""
    scores = {}
    for member in key.pool:
        alone = cells.get(CellKey((member,), "single", key.top_k, None, key.task, key.metric))
        if alone is None:
            return None
        scores[member] = alone.mean
    name = max(scores, key=scores.get)
    return name, scores[name]


@dataclass
class Paired:
    key: CellKey  # the ME cell
    baseline: str  # the CE strategy it is compared with
    seeds: list[int]
    mean_diff: float
    p_value: float  # nan when there are fewer than two pairs or the differences do not vary


def me_minus_ce(cells: dict[CellKey, Cell]) -> list[Paired]:
    from scipy.stats import ttest_rel

    rows = []
    for key, cell in sorted(cells.items(), key=lambda kv: sort_key(kv[0])):
        if key.strategy != "mixture":
            continue
        for baseline in CE_STRATEGIES:
            ce = cells.get(CellKey(key.pool, baseline, key.top_k, key.weights, key.task, key.metric))
            if ce is None:
                continue
            me_by_seed, ce_by_seed = cell.by_seed, ce.by_seed
            seeds = sorted(set(me_by_seed) & set(ce_by_seed))
            if not seeds:
                continue
            me = [me_by_seed[s] for s in seeds]
            base = [ce_by_seed[s] for s in seeds]
            diff = statistics.fmean(m - c for m, c in zip(me, base))
            p = math.nan
            if len(seeds) >= 2 and len({m - c for m, c in zip(me, base)}) > 1:
                p = float(ttest_rel(me, base).pvalue)
            rows.append(Paired(key, baseline, seeds, diff, p))
    return rows


# ---------------------------------------------------------------------------------------------
# The paper's published numbers


def pool_label(pool: tuple[str, ...]) -> str:
    return "+".join(pool)


def read_paper_results(path: Path | None) -> dict[tuple, dict]:
    """{(pool label, strategy, top_k, task, metric): row} from the CSV of published numbers ('#' lines are notes)."""
    if path is None or not Path(path).exists():
        return {}
    lines = [line for line in Path(path).read_text().splitlines() if line.strip() and not line.startswith("#")]
    table = {}
    for row in csv.DictReader(lines):
        if not row.get("value"):
            continue
        pool = pool_label(tuple(sorted(p.strip() for p in row["pool"].split("+"))))
        top_k = int(row["top_k"]) if row.get("top_k") else None
        table[(pool, row["strategy"], top_k, row["task"], row.get("metric") or "")] = row
    return table


def paper_value(paper: dict[tuple, dict], key: CellKey) -> str:
    """The published number for a cell; the paper's tables use equal weights, a row may omit the metric,
    and single-model rows state no top-k (so they match a single run at any top-k)."""
    if key.weights is not None and max(key.weights) - min(key.weights) > 1e-6:
        return ""
    for top_k in (key.top_k, None) if key.strategy == "single" else (key.top_k,):
        base = (pool_label(key.pool), key.strategy, top_k, key.task)
        row = paper.get((*base, key.metric)) or paper.get((*base, ""))
        if row:
            return row["value"]
    return ""


# ---------------------------------------------------------------------------------------------
# Tables


def sort_key(key: CellKey) -> tuple:
    order = list(LABELS).index(key.strategy) if key.strategy in LABELS else len(LABELS)
    return (len(key.pool) == 1, key.pool, key.task, key.metric, key.top_k or 0, key.weights or (), order)


def pct(value: float) -> float:
    return value * 100.0


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def cell_rows(cells: dict[CellKey, Cell], paper: dict[tuple, dict]) -> list[dict]:
    rows = []
    for key in sorted(cells, key=sort_key):
        cell = cells[key]
        best = best_single(cells, key) if len(key.pool) > 1 else None
        rows.append(
            {
                "pool": pool_label(key.pool),
                "strategy": LABELS.get(key.strategy, key.strategy),
                "top_k": key.top_k if key.top_k is not None else "",
                "weights": "/".join(f"{w:g}" for w in key.weights) if key.weights else "",
                "task": key.task,
                "metric": key.metric,
                "n_seeds": len(cell.runs),
                "mean": pct(cell.mean),
                "std": pct(cell.std),
                "best_single": best[0] if best else "",
                "gain_over_best_single": pct(cell.mean - best[1]) if best else math.nan,
                "tokens_per_second": cell.tokens_per_second,
                "paper": paper_value(paper, key),
            }
        )
    return rows


def paired_rows(paired: list[Paired]) -> list[dict]:
    return [
        {
            "pool": pool_label(p.key.pool),
            "top_k": p.key.top_k if p.key.top_k is not None else "",
            "weights": "/".join(f"{w:g}" for w in p.key.weights) if p.key.weights else "",
            "task": p.key.task,
            "metric": p.key.metric,
            "baseline": LABELS.get(p.baseline, p.baseline),
            "n_pairs": len(p.seeds),
            "me_minus_ce": pct(p.mean_diff),
            "p_value": p.p_value,
        }
        for p in paired
    ]


def write_csv(path: Path, rows: list[dict], header: list[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})


CELL_HEADER = [
    "pool", "strategy", "top_k", "weights", "task", "metric", "n_seeds", "mean", "std",
    "best_single", "gain_over_best_single", "tokens_per_second", "paper",
]
PAIRED_HEADER = ["pool", "top_k", "weights", "task", "metric", "baseline", "n_pairs", "me_minus_ce", "p_value"]


def markdown(rows: list[dict], paired: list[dict], paper_rows: int) -> str:
    out = ["## Accuracy (%), mean ± std over seeds", ""]
    out.append("| pool | strategy | top-k | weights | task | metric | seeds | mean ± std | gain vs best single | tokens/s | paper |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        gain = fmt(r["gain_over_best_single"])
        if r["best_single"]:
            gain = f"{'+' if r['gain_over_best_single'] >= 0 else ''}{gain} ({r['best_single']})"
        elif r["strategy"] == "single":
            gain = ""
        out.append(
            f"| {r['pool']} | {r['strategy']} | {r['top_k']} | {r['weights']} | {r['task']} | {r['metric']} "
            f"| {r['n_seeds']} | {fmt(r['mean'])} ± {fmt(r['std'])} | {gain} | {fmt(r['tokens_per_second'], 1)} "
            f"| {r['paper'] or '-'} |"
        )
    out += ["", "## ME minus CE (percentage points), paired by seed", ""]
    if paired:
        out.append("| pool | top-k | weights | task | metric | vs | pairs | ME − CE | p (paired t) |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for r in paired:
            out.append(
                f"| {r['pool']} | {r['top_k']} | {r['weights']} | {r['task']} | {r['metric']} | {r['baseline']} "
                f"| {r['n_pairs']} | {r['me_minus_ce']:+.2f} | {fmt(r['p_value'], 3)} |"
            )
    else:
        out.append("No cell has both ME and CE runs.")
    out.append("")
    if paper_rows == 0:
        out.append("The paper's published numbers are not in experiments/paper_results.csv yet: the 'paper' column is empty.")
    return "\n".join(out) + "\n"


def summarize(paths: list[str | Path], out_dir: Path, paper_csv: Path | None = PAPER_RESULTS, plots: bool = True) -> dict:
    """Read the results under `paths`, write the tables (and plots) to `out_dir`; returns what was written."""
    runs, skipped = load_runs(paths)
    if not runs:
        raise SystemExit(f"mixens.summarize: no results.json with metrics under {[str(p) for p in paths]}.")
    cells = group_cells(runs)
    paper = read_paper_results(paper_csv)
    rows = cell_rows(cells, paper)
    paired = paired_rows(me_minus_ce(cells))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "cells.csv", rows, CELL_HEADER)
    write_csv(out_dir / "me_vs_ce.csv", paired, PAIRED_HEADER)
    text = markdown(rows, paired, len(paper))
    (out_dir / "summary.md").write_text(text)
    figures = []
    if plots:
        from mixens.plots import plot_accuracy_by_strategy, plot_lambda_tradeoff

        figures = [p for p in (plot_accuracy_by_strategy(cells, out_dir), plot_lambda_tradeoff(cells, out_dir)) if p]
    return {"runs": len(runs), "cells": cells, "rows": rows, "paired": paired, "markdown": text,
            "figures": figures, "skipped": skipped, "out_dir": out_dir}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mixens.summarize", description=__doc__.split("\n")[0])
    parser.add_argument("outputs", nargs="+", help="results.json files or folders searched for them")
    parser.add_argument("--out", type=Path, help="where to write the tables and plots (default: <first>/summary)")
    parser.add_argument("--paper", type=Path, default=PAPER_RESULTS, help="CSV of the paper's published numbers")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    first = Path(args.outputs[0])
    out = args.out or ((first if first.is_dir() else first.parent) / "summary")
    done = summarize(args.outputs, out, args.paper, plots=not args.no_plots)
    for note in done["skipped"]:
        print(f"skipped {note}", file=sys.stderr)
    print(done["markdown"])
    print(f"{done['runs']} runs in {len(done['cells'])} cells; tables and plots in {out}")


if __name__ == "__main__":
    main()
