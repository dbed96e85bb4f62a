"""The summary's figures: ME − CE with intervals, accuracy with intervals, ME's speed-up, and λ.

Each figure is drawn from a plain series (returned by `*_series`, so tests can check what is drawn
against the inputs) with matplotlib's Agg backend. Axes are fitted to the data, not started at 0: the
differences the paper is about are fractions of a point. A summary whose scores do not vary at all
(a smoke run) gets a figure that says so instead of empty axes.
"""

from __future__ import annotations

import math
from pathlib import Path

from mixens.files import atomic_path
from mixens.report.cells import Cell, CellKey, pool_label
from mixens.report.tables import Paired, single_key, sort_key


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _uniform(weights) -> bool:
    return weights is not None and max(weights) - min(weights) < 1e-6


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def not_a_measurement(cells: dict[CellKey, Cell]) -> str | None:
    """Why the scores cannot be plotted as a measurement (every score the same), or None."""
    values = {round(v, 12) for cell in cells.values() for v in cell.values}
    if len(values) == 1:
        return f"not a measurement: every score is {100 * values.pop():.1f}% (a smoke run?)"
    return None


def _notice(text: str):
    fig, ax = _pyplot().subplots(figsize=(6, 1.6))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11)
    return fig


def _fit_x(ax, lows: list[float], highs: list[float], include: float | None = None) -> None:
    """x limits around the data (and `include`, e.g. 0), with a margin, however small the spread."""
    points = [v for v in lows + highs if not math.isnan(v)] + ([include] if include is not None else [])
    low, high = min(points), max(points)
    pad = max((high - low) * 0.08, 0.5)
    ax.set_xlim(low - pad, high + pad)


# ---------------------------------------------------------------------------------------------
# ME − CE


def comparison_label(p: Paired) -> str:
    vs = "CE" if p.baseline == "averaging_topk_union" else "CE exact"
    label = f"{pool_label(p.key.pool)} · {p.key.task} · k={p.key.top_k} · vs {vs}"
    if not _uniform(p.key.weights):
        label += " · w=" + "/".join(f"{w:g}" for w in p.key.weights)
    return label


def difference_series(paired: list[Paired]) -> list[tuple[str, float, float, float, float]]:
    """[(label, difference, low, high, margin)] in points, one per ME/CE comparison."""
    return [
        (comparison_label(p), 100 * p.comparison.difference, 100 * p.comparison.low, 100 * p.comparison.high,
         100 * p.comparison.margin)
        for p in paired
    ]  # fmt: skip


def _one_row_per_label(labels: list[str]):
    """A figure with one horizontal row per label, top to bottom: (fig, ax, the rows' y values)."""
    fig, ax = _pyplot().subplots(figsize=(8, 1.2 + 0.4 * len(labels)))
    ys = list(range(len(labels)))[::-1]
    ax.set_yticks(ys, labels, fontsize=8)
    return fig, ax, ys


def differences_figure(paired: list[Paired]):
    series = difference_series(paired)
    if not series:
        return None
    fig, ax, ys = _one_row_per_label([s[0] for s in series])
    margin = series[0][4]
    ax.axvspan(-margin, margin, color="tab:green", alpha=0.12, label=f"equivalence margin ±{margin:g} pt")
    ax.axvline(0, color="black", linewidth=0.8)
    for y, (_, diff, low, high, _) in zip(ys, series):
        ax.errorbar(diff, y, xerr=[[diff - low], [high - diff]], fmt="o", color="tab:blue", capsize=3)
    ax.set_xlabel(f"ME − CE (accuracy points) with its 95% interval; shaded: the equivalence margin ±{margin:g}")
    _fit_x(ax, [s[2] for s in series] + [-margin], [s[3] for s in series] + [margin], 0.0)
    return fig


# ---------------------------------------------------------------------------------------------
# Accuracy


def accuracy_series(cells: dict[CellKey, Cell]) -> dict[tuple[str, str], list[tuple[str, float, float, float]]]:
    """{(task, metric): [(label, mean %, low %, high %)]}: each equal-weight ensemble and its members alone."""
    series: dict = {}
    for key in sorted(cells, key=sort_key):
        if len(key.pool) < 2 or not _uniform(key.weights):
            continue
        points = series.setdefault((key.task, key.metric), [])
        alone = [cells.get(single_key(key, member)) for member in key.pool]
        entries = [(f"{c.key.pool[0]} · {c.key.label()}", c) for c in alone if c is not None]
        entries.append((f"{pool_label(key.pool)} · {key.label()}", cells[key]))
        for label, cell in entries:
            if label not in [p[0] for p in points]:
                low, high = cell.interval
                points.append((label, 100 * cell.mean, 100 * low, 100 * high))
    return series


def accuracy_figure(cells: dict[CellKey, Cell]):
    reason = not_a_measurement(cells)
    if reason:
        return _notice(reason)
    series = accuracy_series(cells)
    if not series:
        return None
    plt = _pyplot()
    panels = sorted(series)
    heights = [1.0 + 0.35 * len(series[p]) for p in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, sum(heights) + 0.5), squeeze=False,
                             gridspec_kw={"height_ratios": heights})  # fmt: skip
    for ax, panel in zip(axes[:, 0], panels):
        points = series[panel]
        ys = list(range(len(points)))[::-1]
        for y, (label, mean, low, high) in zip(ys, points):
            color = "tab:orange" if " ME" in label else "tab:blue" if " CE" in label else "tab:gray"
            err = [[mean - low], [high - mean]] if not math.isnan(low) else None
            ax.errorbar(mean, y, xerr=err, fmt="o", color=color, capsize=3)
        ax.set_yticks(ys, [p[0] for p in points], fontsize=8)
        ax.set_title(f"{panel[0]} ({panel[1]}): mean over seeds, 95% interval", fontsize=9)
        ax.set_xlabel("score (%)")
        _fit_x(ax, [p[2] if not math.isnan(p[2]) else p[1] for p in points],
             [p[3] if not math.isnan(p[3]) else p[1] for p in points])  # fmt: skip
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Speed


def speedup_series(paired: list[Paired]) -> list[tuple[str, float]]:
    """[(comparison, ME tokens/s over CE tokens/s)] from the same sweep's runs."""
    return [(comparison_label(p), p.speedup) for p in paired if not math.isnan(p.speedup)]


def speedup_figure(paired: list[Paired]):
    series = speedup_series(paired)
    if not series:
        return None
    fig, ax, ys = _one_row_per_label([s[0] for s in series])
    ax.barh(ys, [s[1] for s in series], color="tab:orange", height=0.6)
    ax.axvline(1.0, color="black", linewidth=0.8)
    for y, (_, ratio) in zip(ys, series):
        ax.text(ratio, y, f" {ratio:.2f}x", va="center", fontsize=8)
    ax.set_xlabel("ME tokens/s ÷ CE tokens/s (same sweep, mean over paired seeds)")
    ax.set_xlim(0, max(s[1] for s in series) * 1.2)
    return fig


# ---------------------------------------------------------------------------------------------
# λ


def lambda_series(
    cells: dict[CellKey, Cell],
) -> dict[tuple[str, str, str, str], dict[str, list[tuple[float, float, float]]]]:
    """{(pool, λ model, task, metric): {strategy: [(λ, accuracy %, tokens/s), ...]}}, λ = the weight of the
    model the runs list first (the paper's convention); only pools run with two or more weightings."""
    weightings: dict = {}
    for key in cells:
        if len(key.pool) > 1 and key.weights is not None:
            weightings.setdefault((key.pool, key.task, key.metric), set()).add(key.weights)
    series: dict = {}
    for key, cell in cells.items():
        if len(weightings.get((key.pool, key.task, key.metric), ())) < 2:
            continue
        first = cell.runs[0].first_model if cell.runs[0].first_model in key.pool else key.pool[0]
        lam = key.weights[key.pool.index(first)]
        group = (pool_label(key.pool), first, key.task, key.metric)
        series.setdefault(group, {}).setdefault(key.label(), []).append((lam, 100 * cell.mean, cell.tokens_per_second))
    for lines in series.values():
        for points in lines.values():
            points.sort()
    return series


def lambda_figure(cells: dict[CellKey, Cell]):
    series = lambda_series(cells)
    if not series:
        return None
    plt = _pyplot()
    panels = sorted(series)
    fig, axes = plt.subplots(len(panels), 2, figsize=(10, 3.6 * len(panels)), squeeze=False)
    for (ax_acc, ax_speed), panel in zip(axes, panels):
        for label, points in sorted(series[panel].items()):
            lams = [p[0] for p in points]
            ax_acc.plot(lams, [p[1] for p in points], marker="o", label=label)
            ax_speed.plot(lams, [p[2] for p in points], marker="o", label=label)
        ax_acc.set_ylabel("score (%)")
        ax_speed.set_ylabel("tokens/s")
        for ax in (ax_acc, ax_speed):
            ax.set_xlabel(f"λ = weight of {panel[1]}")
            ax.legend(fontsize=8)
        ax_acc.set_title(f"{panel[2]} ({panel[3]})", fontsize=9)
        ax_speed.set_title(panel[0], fontsize=8)
    fig.tight_layout()
    return fig


def write_figures(cells: dict[CellKey, Cell], paired: list[Paired], out_dir: Path) -> list[Path]:
    """Every figure the summary has data for, as PNG files in `out_dir`."""
    figures = {
        "accuracy.png": accuracy_figure(cells),
        "me_minus_ce.png": differences_figure(paired),
        "speedup.png": speedup_figure(paired),
        "lambda_tradeoff.png": lambda_figure(cells),
    }
    return [_save(fig, out_dir / name) for name, fig in figures.items() if fig is not None]
