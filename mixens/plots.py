"""Figures for the summary: accuracy by strategy and pool, and speed and accuracy against the weight.

Each figure is built from a plain series (returned by `*_series`, so tests can check what is drawn
against the inputs) and then drawn with matplotlib's Agg backend (no display needed).
"""
from __future__ import annotations

import math
from pathlib import Path

from mixens.summarize import LABELS, Cell, CellKey, best_single, pool_label


def _uniform(weights: tuple[float, ...] | None) -> bool:
    return weights is not None and max(weights) - min(weights) < 1e-6


def accuracy_series(cells: dict[CellKey, Cell]) -> dict[tuple[str, str], dict[str, dict[str, tuple[float, float]]]]:
    """{(task, metric): {pool: {bar: (mean %, std %)}}} for equal-weight ensembles and their best member.

    Bars are "<strategy> k=<top_k>" and "best single k=<top_k>" (when every member ran alone).
    """
    series: dict = {}
    for key in sorted(cells, key=lambda k: (k.task, k.metric, k.pool, k.top_k or 0, k.strategy)):
        if len(key.pool) < 2 or not _uniform(key.weights):
            continue
        cell = cells[key]
        bars = series.setdefault((key.task, key.metric), {}).setdefault(pool_label(key.pool), {})
        suffix = f" k={key.top_k}" if key.top_k is not None else ""
        bars[LABELS.get(key.strategy, key.strategy) + suffix] = (cell.mean * 100, _zero_nan(cell.std) * 100)
        best = best_single(cells, key)
        if best is not None:
            alone = cells[CellKey((best[0],), "single", key.top_k, None, key.task, key.metric)]
            bars["best single" + suffix] = (alone.mean * 100, _zero_nan(alone.std) * 100)
    return series


def lambda_series(cells: dict[CellKey, Cell]) -> dict[tuple[str, str, str], dict[str, list[tuple[float, float, float]]]]:
    """{(pool, task, metric): {strategy: [(weight of the pool's first model, accuracy %, tokens/s), ...]}}

    Only for pools run with at least two different weightings; points sorted by weight.
    """
    weightings: dict = {}
    for key in cells:
        if len(key.pool) > 1 and key.weights is not None:
            weightings.setdefault((key.pool, key.task, key.metric), set()).add(key.weights)
    series: dict = {}
    for key, cell in cells.items():
        group = (key.pool, key.task, key.metric)
        if len(weightings.get(group, ())) < 2:
            continue
        label = LABELS.get(key.strategy, key.strategy) + (f" k={key.top_k}" if key.top_k is not None else "")
        points = series.setdefault((pool_label(key.pool), key.task, key.metric), {}).setdefault(label, [])
        points.append((key.weights[0], cell.mean * 100, cell.tokens_per_second))
    for lines in series.values():
        for points in lines.values():
            points.sort()
    return series


def _zero_nan(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy_by_strategy(cells: dict[CellKey, Cell], out_dir: Path) -> Path | None:
    series = accuracy_series(cells)
    if not series:
        return None
    plt = _pyplot()
    panels = sorted(series)
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3.6 * len(panels)), squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        pools = series[panel]
        bar_names = sorted({bar for bars in pools.values() for bar in bars})
        width = 0.8 / max(len(bar_names), 1)
        for i, bar in enumerate(bar_names):
            xs = [p + (i - (len(bar_names) - 1) / 2) * width for p in range(len(pools))]
            means = [pools[pool].get(bar, (math.nan, 0.0))[0] for pool in pools]
            stds = [pools[pool].get(bar, (0.0, 0.0))[1] for pool in pools]
            ax.bar(xs, means, width, yerr=stds, capsize=3, label=bar)
        ax.set_xticks(range(len(pools)), [p.replace("+", "\n+ ") for p in pools], fontsize=8)
        ax.set_ylabel("score (%)")
        ax.set_title(f"{panel[0]} ({panel[1]})")
        ax.legend(fontsize=8, ncols=2)
    fig.tight_layout()
    path = out_dir / "accuracy_by_strategy.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_lambda_tradeoff(cells: dict[CellKey, Cell], out_dir: Path) -> Path | None:
    series = lambda_series(cells)
    if not series:
        return None
    plt = _pyplot()
    panels = sorted(series)
    fig, axes = plt.subplots(len(panels), 2, figsize=(10, 3.6 * len(panels)), squeeze=False)
    for (ax_acc, ax_speed), panel in zip(axes, panels):
        first_model = panel[0].split("+")[0]
        for label, points in sorted(series[panel].items()):
            lams = [p[0] for p in points]
            ax_acc.plot(lams, [p[1] for p in points], marker="o", label=label)
            ax_speed.plot(lams, [p[2] for p in points], marker="o", label=label)
        ax_acc.set_ylabel("score (%)")
        ax_speed.set_ylabel("tokens/s")
        for ax in (ax_acc, ax_speed):
            ax.set_xlabel(f"weight of {first_model}")
            ax.legend(fontsize=8)
        ax_acc.set_title(f"{panel[1]} ({panel[2]})", fontsize=9)
        ax_speed.set_title(panel[0], fontsize=8)
    fig.tight_layout()
    path = out_dir / "lambda_tradeoff.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
