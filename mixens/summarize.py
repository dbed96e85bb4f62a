"""Tables and figures from results files, beside the paper's numbers.

    python -m mixens.summarize outputs/sweeps/paper_qwen outputs/sweeps/paper_qwen_single [--out DIR]

Runs are grouped into cells (mixens.report.cells: everything but the seed). For each cell: the mean
over seeds with its 95% interval; for each ensemble, the gain over its best member alone; for each
ME cell, ME − CE paired by problem, with its interval, a difference test (FDR-controlled over the
summary) and an equivalence test against ±margin (mixens.report.stats). Writes summary.md (the
paper's layout per pool, then every cell and every comparison), tables.tex, cells.csv,
me_vs_ce.csv and the figures.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from mixens.files import write_atomic
from mixens.report.cells import group_cells, load_runs
from mixens.report.stats import DEFAULT_MARGIN
from mixens.report.tables import (
    PAPER_RESULTS,
    cell_rows,
    me_minus_ce,
    paired_rows,
    paper_layout,
    read_paper_results,
    write_csv,
)

READING = """\
How to read this:
- "mean ± h" is the mean over seeds and the half-width of its 95% interval (Student's t over seeds);
  with few seeds the interval is wide, and it says nothing about other problems or models.
- ME − CE is paired: the same problems under the same seeds, each problem's score averaged over the
  seeds (unit "problems"), or the seeds' scores when per-problem samples are missing (unit "seeds").
  Its interval comes from a paired bootstrap.
- p (difference) is a paired permutation test of "ME and CE score the same"; q is that p after
  Benjamini-Hochberg control over every comparison in this summary. "different" means q < 0.05. A
  large p does not show that ME equals CE.
- p (equivalence) is the two one-sided tests (TOST) of "the difference lies within ±margin";
  "equivalent" means p < 0.05: the data show ME within the margin of CE. "undecided": neither.
- speed-up is ME's tokens/s over CE's in the same sweep (mean over the paired seeds); it depends on
  the hardware, batch size and generation lengths of the runs.
"""


def fmt(value, digits: int = 2, sign: bool = False) -> str:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def markdown(layouts: dict, rows: list[dict], paired: list[dict], paper_rows: int, margin: float) -> str:
    out = [
        "## The paper's layout: ours (mean ± 95% half-interval over seeds, %) and the paper's number in parentheses",
        "",
    ]
    if not layouts:
        out.append("No equal-weight ensemble in these runs.")
    for pool, table in layouts.items():
        out += [f"### {pool}", "", table.to_markdown(), ""]
    if paper_rows == 0:
        out.append("No published numbers were read (experiments/paper_results.csv is missing or empty).")
    out += ["", f"## ME minus CE (points), paired; equivalence margin ±{100 * margin:g}", ""]
    if paired:
        out.append(
            "| pool | top-k | weights | settings | task | vs | seeds | unit (n) | ME − CE [95% CI] | p (difference) | q (FDR) | p (equivalence) | verdict | speed-up |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in paired:
            out.append(
                f"| {r['pool']} | {r['top_k']} | {r['weights']} | {r['settings']} | {r['task']} | {r['baseline']} | {r['seeds']} "
                f"| {r['unit']} ({r['n']}) | {fmt(r['me_minus_ce'], sign=True)} [{fmt(r['ci_low'], sign=True)}, {fmt(r['ci_high'], sign=True)}] "
                f"| {fmt(r['p_difference'], 3)} | {fmt(r['q_difference'], 3)} | {fmt(r['p_equivalence'], 3)} | {r['verdict']} "
                f"| {fmt(r['speedup'])}x |"
            )
    else:
        out.append("No cell has both ME and CE runs.")
    out += ["", "## Every cell (%, mean over seeds with its 95% interval)", ""]
    out.append(
        "| pool | strategy | top-k | weights | settings | task | metric | seeds | mean [95% CI] | gain vs best single | tokens/s | paper |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        gain = ""
        if r["best_single"]:
            gain = f"{fmt(r['gain_over_best_single'], sign=True)} ({r['best_single']})"
        out.append(
            f"| {r['pool']} | {r['strategy']} | {r['top_k']} | {r['weights']} | {r['settings']} | {r['task']} | {r['metric']} "
            f"| {r['n_seeds']} | {fmt(r['mean'])} [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}] | {gain} "
            f"| {fmt(r['tokens_per_second'], 1)} | {r['paper'] or '-'} |"
        )
    return "\n".join(out + ["", READING])


def summarize(paths, out_dir: Path, paper_csv: Path | None = PAPER_RESULTS, plots: bool = True,
              margin: float = DEFAULT_MARGIN) -> dict:  # fmt: skip
    """Read the results under `paths`, write the tables (and figures) to `out_dir`; returns what was written."""
    runs, skipped = load_runs(paths)
    if not runs:
        raise SystemExit(f"mixens.summarize: no results.json with metrics under {[str(p) for p in paths]}.")
    cells = group_cells(runs)
    paper = read_paper_results(paper_csv)
    rows = cell_rows(cells, paper)
    paired_cells = me_minus_ce(cells, margin)
    paired = paired_rows(paired_cells, cells)
    layouts = paper_layout(cells, paper)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "cells.csv", rows)
    write_csv(out_dir / "me_vs_ce.csv", paired)
    text = markdown(layouts, rows, paired, len(paper), margin)
    write_atomic(out_dir / "summary.md", text)
    latex = "\n".join(
        table.to_latex(
            caption=f"{pool}: ours (mean $\\pm$ 95\\% half-interval, \\%) and the paper's (in parentheses)",
            label=f"tab:{pool}",
            escape=True,
        )  # fmt: skip
        for pool, table in layouts.items()
    )
    write_atomic(out_dir / "tables.tex", latex)
    figures = []
    if plots:
        from mixens.report.plots import write_figures

        figures = write_figures(cells, paired_cells, out_dir)
    return {"runs": len(runs), "cells": cells, "rows": rows, "paired": paired, "layouts": layouts,
            "markdown": text, "figures": figures, "skipped": skipped, "out_dir": out_dir}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mixens.summarize", description=__doc__.split("\n")[0])
    parser.add_argument("outputs", nargs="+", help="results.json files or folders searched for them")
    parser.add_argument("--out", type=Path, help="where to write the tables and figures (default: <first>/summary)")
    parser.add_argument("--paper", type=Path, default=PAPER_RESULTS, help="CSV of the paper's published numbers")
    parser.add_argument("--margin", type=float, default=100 * DEFAULT_MARGIN, help="equivalence margin, in points")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    first = Path(args.outputs[0])
    out = args.out or ((first if first.is_dir() else first.parent) / "summary")
    done = summarize(args.outputs, out, args.paper, plots=not args.no_plots, margin=args.margin / 100)
    for note in done["skipped"]:
        print(f"skipped {note}", file=sys.stderr)
    print(done["markdown"])
    print(f"{done['runs']} runs in {len(done['cells'])} cells; tables and figures in {out}")


if __name__ == "__main__":
    main()
