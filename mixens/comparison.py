"""Several strategies on the same loaded members and the same problems, side by side.

A run with `compare: [members, averaging]` evaluates each member alone and the averaging ensemble
before the run's own strategy, reusing the loaded models, and prints one table: accuracy with a 95%
interval over the problems, generated tokens per second overall and while decoding (after the
prompts are read), each with its speed-up over averaging (the exact conventional ensemble), and
member forward passes per generated token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

from mixens.errors import ConfigError
from mixens.strategies import STRATEGIES, Strategy, build_strategy

MEMBERS = "members"  # each member alone (strategy single)
REFERENCE = "averaging"


def check_compare(entries: list[str], strategy: Strategy, names: list[str]) -> None:
    """Every entry builds with its default options for these members, and the run's own strategy runs
    them all (compared runs share its loaded models)."""
    for entry in entries:
        if entry == MEMBERS:
            continue
        try:
            build_strategy(entry, names)
        except ConfigError as err:
            raise ConfigError(
                f"compare has '{entry}': {err} Its entries are '{MEMBERS}' (each model alone) or strategies "
                f"that run with their default options, one of {list(STRATEGIES)}."
            ) from None
    if entries and strategy.members_used() is not None:
        raise ConfigError(
            f"compare needs a strategy that loads every model; with ensemble={strategy.name} use compare=[] ."
        )


def compared_ensembles(ensemble, entries: list[str]) -> list[tuple[str, object]]:
    """(label, ensemble) for each entry, then the run's own ensemble; all share the loaded members."""
    runs = []
    for entry in entries:
        if entry == MEMBERS:
            runs += [(m.name, ensemble.with_strategy("single", member=m.name)) for m in ensemble.members]
        elif entry != ensemble.strategy.name:
            runs.append((entry, ensemble.with_strategy(entry)))
    return runs + [(ensemble.strategy.name, ensemble)]


@dataclass
class Score:
    """A task's headline metric over its problems: the mean and a 95% interval."""

    metric: str
    n: int
    mean: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{100 * self.mean:5.1f} [{100 * self.low:4.1f}, {100 * self.high:4.1f}]"


def interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% interval: Wilson's for right/wrong scores, Student's t for anything else."""
    n = len(values)
    mean = sum(values) / n
    if all(v in (0.0, 1.0) for v in values):
        ci = stats.binomtest(int(sum(values)), n).proportion_ci(0.95, method="wilson")
        return mean, ci.low, ci.high
    if n < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.975, n - 1) * stats.tstd(values) / math.sqrt(n)
    return mean, mean - half, mean + half


def task_scores(results: dict, tasks: list[str]) -> dict[str, Score]:
    """Each requested task's first metric, from lm-eval's per-problem samples (a group pools its tasks')."""
    scores = {}
    for task in tasks:
        leaves = _leaf_tasks(results, task)
        first = next(k for k in results["results"][leaves[0]] if "," in k and "_stderr" not in k)
        metric, filter_name = first.split(",", 1)
        values = [
            float(row[metric])
            for leaf in leaves
            for row in results["samples"][leaf]
            if row.get("filter", "none") == filter_name
        ]
        scores[task] = Score(first, len(values), *interval(values))
    return scores


def _leaf_tasks(results: dict, task: str) -> list[str]:
    below = (results.get("group_subtasks") or {}).get(task) or []
    if not below:
        return [task]
    return [leaf for sub in below for leaf in _leaf_tasks(results, sub)]


def comparison_rows(evaluations: list[tuple[str, dict, dict]], tasks: list[str]) -> list[dict]:
    """One row per evaluated strategy: (label, lm-eval results, speed) -> scores and speed."""
    rows = []
    for label, results, speed in evaluations:
        scores = task_scores(results, tasks)
        rows.append(
            {
                "label": label,
                "scores": {t: vars(s) for t, s in scores.items()},
                "tokens_per_second": speed.get("tokens_per_second"),
                "decode_tokens_per_second": _rate(speed.get("tokens_generated"), speed.get("decode_seconds")),
                "member_runs_per_token": speed.get("member_runs_per_token"),
                "tokens_generated": speed.get("tokens_generated"),
                "wall_seconds": speed.get("wall_seconds"),
                "prefill_seconds": speed.get("prefill_seconds"),
            }
        )
    reference = next((r for r in rows if r["label"] == REFERENCE), None)
    for row in rows:
        for rate, speedup in (("tokens_per_second", "speedup_over_averaging"),
                              ("decode_tokens_per_second", "decode_speedup_over_averaging")):  # fmt: skip
            row[speedup] = _rate(row[rate], reference[rate]) if reference else None
    return rows


def _rate(amount, seconds):
    return amount / seconds if amount and seconds else None


def comparison_table(rows: list[dict]) -> str:
    """The rows as a plain-text table, accuracy in percent with its 95% interval."""
    tasks = list(rows[0]["scores"]) if rows else []
    header = [f"{'strategy':<24}"] + [f"{t + ' % [95% CI]':>24}" for t in tasks]
    header += [f"{'tokens/s':>9}", f"{'x avg':>6}", f"{'decode tokens/s':>16}", f"{'x avg':>6}"]
    header += [f"{'passes/token':>13}"]
    lines = [" ".join(header), "-" * len(" ".join(header))]
    for row in rows:
        cells = [f"{row['label']:<24}"] + [f"{str(Score(**row['scores'][t])):>24}" for t in tasks]
        cells += [_number(row["tokens_per_second"], 9, 1), _number(row["speedup_over_averaging"], 6, 2)]
        cells += [_number(row["decode_tokens_per_second"], 16, 1), _number(row["decode_speedup_over_averaging"], 6, 2)]
        cells.append(_number(row["member_runs_per_token"], 13, 2))
        lines.append(" ".join(cells))
    n = {t: rows[0]["scores"][t]["n"] for t in tasks}
    lines.append(
        f"problems per task: {n}. tokens/s: generated tokens per second, reading the prompts included; "
        "decode: after the prompts are read; x avg: over averaging; passes/token: member forward passes "
        "per generated token."
    )
    return "\n".join(lines)


def _number(value, width: int, digits: int) -> str:
    return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"
