"""Results of a run on disk: results.json, per-sample outputs, and the table printed at the end.

Every file is written whole or not at all (mixens.files), so a crash never leaves a half-written file.
"""

from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path

from mixens.files import write_atomic

PACKAGES = ("mixens", "torch", "transformers", "tokenizers", "lm-eval", "datasets", "hydra-core", "omegaconf", "wandb")


def versions() -> dict[str, str | None]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def git_commit(folder: Path | None = None) -> str | None:
    """The commit of the mixens checkout (with '+dirty' for local changes), if it is one."""
    folder = folder or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=folder, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def metrics_by_task(lm_eval_results: dict) -> dict[str, dict[str, float]]:
    """lm-eval's results (and group results) as {task: {metric,filter: value}}, numbers only."""
    table = {}
    for section in ("results", "groups"):
        for task, values in (lm_eval_results.get(section) or {}).items():
            numbers = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            numbers = {k: v for k, v in numbers.items() if k not in ("samples",)}
            table.setdefault(task, {}).update(numbers)
    return table


def write_samples(folder: Path, samples: dict[str, list]) -> dict[str, str]:
    """One JSON-lines file per task; returns the file names written."""
    written = {}
    for task, rows in samples.items():
        name = f"samples_{task}.jsonl"
        write_atomic(folder / name, "".join(json.dumps(row, default=str) + "\n" for row in rows))
        written[task] = name
    return written


def write_token_records(folder: Path, records: dict[str, dict[int, list[dict]]]) -> dict[str, str]:
    """tokens_<task>.jsonl: per document, the tokens of each of its generations (mixens.token_record)."""
    written = {}
    for task, by_doc in records.items():
        name = f"tokens_{task}.jsonl"
        rows = ({"doc_id": doc_id, "generations": generations} for doc_id, generations in sorted(by_doc.items()))
        write_atomic(folder / name, "".join(json.dumps(row) + "\n" for row in rows))
        written[task] = name
    return written


def write_results(folder: Path, record: dict) -> Path:
    path = folder / "results.json"
    write_atomic(path, json.dumps(record, indent=2, default=str) + "\n")
    return path


def find_existing(folder: Path, config: dict) -> Path | None:
    """A results.json in `folder` or its job folders written by a run of the same config."""
    from mixens.config import result_defining

    wanted = result_defining(config)
    for path in sorted([folder / "results.json", *folder.glob("*/results.json")]):
        if not path.is_file():
            continue
        try:
            found = json.loads(path.read_text())["config"]
        except (OSError, ValueError, KeyError):
            continue  # not a complete mixens results file
        if result_defining(found) == wanted:
            return path
    return None


def speed_line(speed: dict) -> str:
    """How much was generated and how fast, under the scores."""
    if not speed.get("tokens_generated"):
        return ""
    rate = speed.get("tokens_per_second") or 0.0
    return (
        f"generated {speed['tokens_generated']} tokens in {speed['wall_seconds']:.1f} s "
        f"({rate:.1f} tokens/s), {speed['forward_passes_per_step']:.2f} forward passes per step"
    )
