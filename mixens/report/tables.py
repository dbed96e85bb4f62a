"""The summary's tables: the paper's layout with its numbers beside ours, every cell, ME against CE."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from mixens.files import atomic_path
from mixens.report.cells import CE_STRATEGIES, Cell, CellKey, pool_label, problem_scores, varying_settings
from mixens.report.stats import DEFAULT_MARGIN, Comparison, compare_paired, control_false_discoveries

PAPER_RESULTS = Path(__file__).resolve().parents[2] / "experiments" / "paper_results.csv"
PAPER_TASKS = {"gsm8k_paper": "GSM8K", "mmlu_paper": "MMLU", "bbh_paper": "BBH", "arc_paper": "ARC"}


# ---------------------------------------------------------------------------------------------
# The paper's published numbers


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


# The paper's sampling protocol: a cell run otherwise gets no published number beside it.
PAPER_PROTOCOL = {
    "benchmark.do_sample": ("true",),
    "benchmark.temperature": ("1.0", "1"),
    "benchmark.top_p": ("1.0", "1", "null"),
}


def paper_value(paper: dict[tuple, dict], key: CellKey) -> str:
    """The published number for a cell run as the paper ran it: equal weights and its sampling protocol.
    A row may omit the metric; single-model rows state no top-k (so they match a single run at any top-k)."""
    if key.weights is not None and max(key.weights) - min(key.weights) > 1e-6:
        return ""
    settings = dict(key.settings)
    if any(name in settings and settings[name] not in allowed for name, allowed in PAPER_PROTOCOL.items()):
        return ""
    for top_k in (key.top_k, None) if key.strategy == "single" else (key.top_k,):
        base = (pool_label(key.pool), key.strategy, top_k, key.task)
        row = paper.get((*base, key.metric)) or paper.get((*base, ""))
        if row:
            return row["value"]
    return ""


# ---------------------------------------------------------------------------------------------
# Cells


def best_single(cells: dict[CellKey, Cell], key: CellKey) -> tuple[str, float] | None:
    """The best member of an ensemble cell run alone (same task, top-k and settings); None unless all ran."""
    scores = {}
    for member in key.pool:
        alone = cells.get(single_key(key, member))
        if alone is None:
            return None
        scores[member] = alone.mean
    name = max(scores, key=scores.get)
    return name, scores[name]


def single_key(key: CellKey, member: str) -> CellKey:
    settings = tuple(s for s in key.settings if not s[0].startswith("models.") or s[0].startswith(f"models.{member}."))
    return replace(key, pool=(member,), strategy="single", weights=None, options=(), settings=settings)


def sort_key(key: CellKey) -> tuple:
    order = ["single", "averaging_topk_union", "averaging", "mixture"]
    rank = order.index(key.strategy) if key.strategy in order else len(order)
    return (len(key.pool) == 1, key.pool, key.task, key.metric, key.settings, key.top_k or 0, key.weights or (), rank)


def weights_text(key: CellKey) -> str:
    return "/".join(f"{w:g}" for w in key.weights) if key.weights else ""


def settings_text(key: CellKey, varying: list[str]) -> str:
    values = dict(key.settings)
    return "; ".join(f"{name}={values.get(name, 'null')}" for name in varying)


def cell_rows(cells: dict[CellKey, Cell], paper: dict[tuple, dict]) -> list[dict]:
    varying = varying_settings(cells)
    rows = []
    for key in sorted(cells, key=sort_key):
        cell = cells[key]
        best = best_single(cells, key) if len(key.pool) > 1 else None
        low, high = cell.interval
        rows.append(
            {
                "pool": pool_label(key.pool),
                "strategy": key.label().split(" k=")[0],
                "top_k": key.top_k if key.top_k is not None else "",
                "weights": weights_text(key),
                "settings": settings_text(key, varying),
                "task": key.task,
                "metric": key.metric,
                "n_seeds": len(cell.runs),
                "mean": 100 * cell.mean,
                "ci_low": 100 * low,
                "ci_high": 100 * high,
                "std": 100 * cell.std,
                "best_single": best[0] if best else "",
                "gain_over_best_single": 100 * (cell.mean - best[1]) if best else math.nan,
                "tokens_per_second": cell.tokens_per_second,
                "paper": paper_value(paper, key),
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------
# ME against CE


@dataclass
class Paired:
    key: CellKey  # the ME cell
    baseline: str  # the CE strategy it is compared with
    seeds: list[int]
    comparison: Comparison
    speedup: float  # ME tokens/s over CE tokens/s, means over the paired seeds


def me_minus_ce(cells: dict[CellKey, Cell], margin: float = DEFAULT_MARGIN) -> list[Paired]:
    """Every ME cell against each CE cell that differs from it only in strategy, FDR-controlled together."""
    rows = []
    for key, cell in sorted(cells.items(), key=lambda kv: sort_key(kv[0])):
        if key.strategy != "mixture":
            continue
        for baseline in CE_STRATEGIES:
            ce = next((c for k, c in cells.items() if k.strategy == baseline and _same_but_strategy(k, key)), None)
            if ce is None:
                continue
            seeds = sorted(set(cell.by_seed) & set(ce.by_seed))
            if not seeds:
                continue
            me_runs, ce_runs = [cell.by_seed[s] for s in seeds], [ce.by_seed[s] for s in seeds]
            comparison = _compare(me_runs, ce_runs, margin)
            rates = [(m.tokens_per_second, c.tokens_per_second) for m, c in zip(me_runs, ce_runs)]
            rates = [(m, c) for m, c in rates if m and c]
            speedup = np.mean([m for m, _ in rates]) / np.mean([c for _, c in rates]) if rates else math.nan
            rows.append(Paired(key, baseline, seeds, comparison, float(speedup)))
    control_false_discoveries([p.comparison for p in rows])
    return rows


def _same_but_strategy(a: CellKey, b: CellKey) -> bool:
    return replace(a, strategy=b.strategy, options=b.options) == b


def _compare(me_runs, ce_runs, margin: float) -> Comparison:
    """Per problem when every paired run kept its samples (each problem averaged over the seeds), else per seed."""
    me_scores = [problem_scores(r) for r in me_runs]
    ce_scores = [problem_scores(r) for r in ce_runs]
    if all(s is not None for s in me_scores + ce_scores):
        problems = sorted(set.intersection(*(set(s) for s in me_scores + ce_scores)))
        if problems:
            me = np.mean([[s[p] for p in problems] for s in me_scores], axis=0)
            ce = np.mean([[s[p] for p in problems] for s in ce_scores], axis=0)
            return compare_paired(me, ce, "problems", margin)
    return compare_paired([r.value for r in me_runs], [r.value for r in ce_runs], "seeds", margin)


def paired_rows(paired: list[Paired], cells: dict[CellKey, Cell]) -> list[dict]:
    varying = varying_settings(cells)
    rows = []
    for p in paired:
        c = p.comparison
        verdict = "equivalent" if c.equivalent else ("different" if c.different else "undecided")
        rows.append(
            {
                "pool": pool_label(p.key.pool),
                "top_k": p.key.top_k if p.key.top_k is not None else "",
                "weights": weights_text(p.key),
                "settings": settings_text(p.key, varying),
                "task": p.key.task,
                "metric": p.key.metric,
                "baseline": "CE" if p.baseline == "averaging_topk_union" else "CE (exact)",
                "seeds": len(p.seeds),
                "unit": c.unit,
                "n": c.n,
                "me_minus_ce": 100 * c.difference,
                "ci_low": 100 * c.low,
                "ci_high": 100 * c.high,
                "p_difference": c.p_difference,
                "q_difference": c.q_difference,
                "p_equivalence": c.p_equivalence,
                "margin": 100 * c.margin,
                "verdict": verdict,
                "speedup": p.speedup,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------
# The paper's layout


def paper_layout(cells: dict[CellKey, Cell], paper: dict[tuple, dict]) -> dict[str, pd.DataFrame]:
    """One table per equal-weight pool: its members alone, then CE and ME at each top-k (rows), by task
    (columns); each entry "ours mean ± half-interval (paper)", in percent."""
    varying = varying_settings(cells)
    long = []
    for key in sorted(cells, key=sort_key):
        if len(key.pool) < 2 or max(key.weights) - min(key.weights) > 1e-6:
            continue
        suffix = f" [{settings_text(key, varying)}]" if varying else ""
        alone = [cells.get(single_key(key, member)) for member in key.pool]
        entries = [(f"{c.key.pool[0]} ({c.key.label()}){suffix}", c.key, c) for c in alone if c is not None]
        entries.append((key.label() + suffix, key, cells[key]))
        for row, entry_key, cell in entries:
            long.append({"pool": pool_label(key.pool), "row": row, "task": PAPER_TASKS.get(key.task, key.task),
                         "metric": key.metric, "order": _layout_order(entry_key), "text": _entry(cell, paper)})  # fmt: skip
    if not long:
        return {}
    frame = pd.DataFrame(long).drop_duplicates(["pool", "row", "task", "metric"])
    tables = {}
    for pool, part in frame.groupby("pool", sort=False):
        part = part[part["metric"] == part["metric"].iloc[0]] if part["task"].duplicated().any() else part
        order = list(dict.fromkeys(part.sort_values("order", kind="stable")["row"]))
        table = part.pivot_table(index="row", columns="task", values="text", aggfunc="first")
        columns = [t for t in PAPER_TASKS.values() if t in table.columns] + [
            t for t in table.columns if t not in PAPER_TASKS.values()
        ]
        tables[pool] = table.reindex(index=order, columns=columns).fillna("-")
    return tables


def _layout_order(key: CellKey) -> tuple:
    """The paper's row order: members alone, then CE and ME at each top-k."""
    return (len(key.pool) > 1, key.top_k or 0, sort_key(key)[-1])


def _entry(cell: Cell, paper: dict[tuple, dict]) -> str:
    low, high = cell.interval
    ours = f"{100 * cell.mean:.2f}"
    if not math.isnan(low):
        ours += f" ± {100 * (high - low) / 2:.2f}"
    published = paper_value(paper, cell.key)
    return f"{ours} ({published})" if published else ours


def write_csv(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        if not rows:
            return
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
