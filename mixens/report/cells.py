"""The summary's data model: results files read into runs, runs grouped into cells.

A cell is everything about a run except its seed: the pool and its weights, the strategy and its
own options, the sampling top-k, the task and metric, and every other setting that changes what a
run computes (temperature, few-shot count, limit, dtypes, ...). Runs that differ in any of these are
separate cells; runs of one cell differ only by seed. Settings that change where or how fast a run
goes but not what it measures (device, batch size, threads, where the data is read, logging) are not
part of a cell.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from mixens.report.stats import mean_interval
from mixens.strategies import STRATEGIES

# What the tables call each strategy; the paper's CE is the top-k union average.
LABELS = {"averaging_topk_union": "CE", "averaging": "CE (exact)", "mixture": "ME", "single": "single"}
CE_STRATEGIES = ("averaging_topk_union", "averaging")
# Numbers lm-eval reports next to scores that are not scores.
NOT_SCORES = ("sample_len", "samples")
# Config keys that are part of a cell through its other fields, or that do not change results.
NOT_SETTINGS = (
    "seed", "models", "ensemble", "benchmark.tasks", "benchmark.top_k", "benchmark.name", "benchmark.log_samples",
    "device", "batch_size", "threads", "compare", "data", "hydra", "logger", "skip_existing",
)  # fmt: skip
MODEL_NOT_SETTINGS = ("name", "weight", "device", "licence")


@dataclass(frozen=True)
class CellKey:
    pool: tuple[str, ...]  # model names, sorted
    strategy: str
    top_k: int | None
    weights: tuple[float, ...] | None  # normalised, in pool order; None for a single model
    task: str
    metric: str
    options: tuple[tuple[str, str], ...] = ()  # the strategy's own options
    settings: tuple[tuple[str, str], ...] = ()  # every other setting that changes results, "key" -> JSON value

    def label(self) -> str:
        return LABELS.get(self.strategy, self.strategy) + (f" k={self.top_k}" if self.top_k is not None else "")


@dataclass
class Run:
    key: CellKey
    seed: int
    value: float
    tokens_per_second: float | None
    path: str
    samples: dict[str, Path] = field(default_factory=dict)  # leaf task -> its samples file
    first_model: str = ""  # the model the run's config lists first: the paper's λ is its weight


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
    def interval(self) -> tuple[float, float]:
        """The 95% interval of the mean over seeds (Student's t)."""
        return mean_interval(self.values)[1:]

    @property
    def tokens_per_second(self) -> float:
        rates = [r.tokens_per_second for r in self.runs if r.tokens_per_second is not None]
        return statistics.fmean(rates) if rates else math.nan

    @property
    def by_seed(self) -> dict[int, Run]:
        return {r.seed: r for r in self.runs}


def pool_label(pool: tuple[str, ...]) -> str:
    return "+".join(pool)


# ---------------------------------------------------------------------------------------------
# Reading results files


def find_results(paths: list[str | Path]) -> list[Path]:
    found = []
    for path in map(Path, paths):
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(p for p in path.rglob("results.json") if "compare" not in p.parent.parts))
        else:
            raise FileNotFoundError(f"{path} is neither a results file nor a folder.")
    return found


def pool_of(config: dict) -> tuple[tuple[str, ...], tuple[float, ...] | None]:
    """The models a run used, sorted by name, with their normalised weights (None for one model)."""
    models = config.get("models") or {}
    entries = [(m.get("name") or key, float(m.get("weight", 1.0))) for key, m in models.items()]
    ensemble = config.get("ensemble") or {}
    if ensemble.get("strategy") == "single":
        return (recorded_options(ensemble).get("member") or entries[0][0],), None
    entries.sort()
    total = sum(w for _, w in entries) or 1.0
    return tuple(n for n, _ in entries), tuple(round(w / total, 6) for _, w in entries)


def recorded_options(ensemble: dict) -> dict:
    """A recorded run's strategy options that differ from the strategy's defaults. Reads `options`, or
    in results files written before options had their own key, the strategy's keys beside `strategy`."""
    defaults = STRATEGIES[ensemble["strategy"]].option_defaults() if ensemble.get("strategy") in STRATEGIES else {}
    given = ensemble["options"] if "options" in ensemble else {k: ensemble[k] for k in defaults if k in ensemble}
    return {k: v for k, v in (given or {}).items() if k not in defaults or v != defaults[k]}


def _flat(prefix: str, value) -> dict[str, str]:
    if isinstance(value, dict):
        out = {}
        for key, inner in value.items():
            out.update(_flat(f"{prefix}.{key}" if prefix else str(key), inner))
        return out
    return {prefix: json.dumps(value, sort_keys=True)}


def settings_of(config: dict, pool: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """The config values beyond the cell's named fields that change results, flattened to key -> JSON."""
    flat = {
        k: v for k, v in _flat("", config).items() if not any(k == n or k.startswith(n + ".") for n in NOT_SETTINGS)
    }
    for key, model in (config.get("models") or {}).items():
        name = model.get("name") or key
        if name in pool:
            flat.update({f"models.{name}.{k}": json.dumps(v) for k, v in model.items() if k not in MODEL_NOT_SETTINGS})
    return tuple(sorted(flat.items()))


def runs_of(record: dict, path: str = "") -> list[Run]:
    """One run per (task, score) a results record holds, for the tasks its benchmark named; a run with
    `compare` also holds the strategies it ran beside its own, on the same problems and seed."""
    config, folder = record["config"], Path(path).parent
    seed = int(record.get("seed", config.get("seed", 0)))
    samples = {task: folder / name for task, name in (record.get("samples") or {}).items()}
    speed = (record.get("speed") or {}).get("tokens_per_second")
    runs = _runs(config, record.get("metrics") or {}, speed, samples, record, seed, path)
    for row in (record.get("comparison") or [])[:-1]:  # the last row is the run's own strategy
        label = row["label"]
        strategy = {"strategy": label} if label in STRATEGIES else {"strategy": "single", "member": label}
        compared = {**config, "ensemble": {"strategy": strategy.pop("strategy"), "options": strategy}}
        metrics = {task: {score["metric"]: score["mean"]} for task, score in row["scores"].items()}
        files = {f.stem.removeprefix("samples_"): f for f in (folder / "compare" / label).glob("samples_*.jsonl")}
        runs += _runs(compared, metrics, row.get("tokens_per_second"), files, record, seed, path)
    return runs


def _runs(config: dict, metrics: dict, rate, sample_files: dict, record: dict, seed: int, path: str) -> list[Run]:
    pool, weights = pool_of(config)
    bench = config.get("benchmark") or {}
    ensemble = config["ensemble"]
    options = tuple(sorted((k, json.dumps(v)) for k, v in recorded_options(ensemble).items() if k != "member"))
    settings = settings_of(config, pool)
    first = next((m.get("name") or k for k, m in (config.get("models") or {}).items()), "")
    groups = record.get("group_subtasks") or {}
    # A group task (mmlu_paper) also reports each subtask; the table keeps the names the run asked for.
    tasks = [t for t in bench.get("tasks") or metrics if t in metrics]
    runs = []
    for task in tasks:
        samples = {leaf: sample_files[leaf] for leaf in _leaves(task, groups, sample_files) if leaf in sample_files}
        for metric, value in sorted(metrics[task].items()):
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not numeric or "stderr" in metric or metric.split(",")[0] in NOT_SCORES:
                continue
            key = CellKey(pool, ensemble["strategy"], bench.get("top_k"), weights, task, metric, options, settings)
            runs.append(Run(key, seed, float(value), rate, path, samples, first))
    return runs


def _leaves(task: str, groups: dict, sample_files: dict) -> list[str]:
    """The tasks whose problems a task's score averages: itself, or a group's subtasks (recursively)."""
    if task in sample_files or task not in groups and not any(t.startswith(task + "_") for t in sample_files):
        return [task]
    below = groups.get(task) or [t for t in sample_files if t.startswith(task + "_")]
    return [leaf for sub in below for leaf in _leaves(sub, groups, sample_files)]


def load_runs(paths: list[str | Path]) -> tuple[list[Run], list[str]]:
    """Every run under the paths, and a note for each file that could not be read."""
    runs, skipped = [], []
    for path in find_results(paths):
        try:
            record = json.loads(path.read_text())
            runs.extend(runs_of(record, str(path)))
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
            skipped.append(f"{path}: {type(err).__name__}: {err}")
    return runs, skipped


def group_cells(runs: list[Run]) -> dict[CellKey, Cell]:
    cells: dict[CellKey, Cell] = {}
    for run in runs:
        cells.setdefault(run.key, Cell(run.key)).runs.append(run)
    for cell in cells.values():
        cell.runs.sort(key=lambda r: r.seed)
    return cells


def varying_settings(cells) -> list[str]:
    """The setting keys whose values differ between cells: what a table must name to tell cells apart."""
    per_cell = [dict(key.settings) for key in cells]
    names = {name for settings in per_cell for name in settings if not name.startswith("models.")}
    return sorted(name for name in names if len({settings.get(name) for settings in per_cell}) > 1)


def problem_scores(run: Run) -> dict[tuple[str, int], float] | None:
    """{(leaf task, doc_id): score} of the run's metric, from its samples files; None when they are missing."""
    if not run.samples:
        return None
    metric, _, filter_name = run.key.metric.partition(",")
    scores = {}
    for leaf, file in run.samples.items():
        if not file.is_file():
            return None
        with file.open() as handle:
            for line in handle:
                row = json.loads(line)
                if row.get("filter", "none") == (filter_name or "none") and metric in row:
                    scores[(leaf, int(row["doc_id"]))] = float(row[metric])
    return scores or None
