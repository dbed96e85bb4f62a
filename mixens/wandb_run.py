"""A run's record in Weights & Biases: resolved config, metrics per task, speed and a samples table.

Offline by default (`logger.mode=offline`, or WANDB_MODE): the run is written under the job's output folder
(`<job>/wandb/offline-run-*`) and can be uploaded later with `wandb sync`. Hydra's multirun runs its jobs in
one process, and wandb hands back the previous run to a second `init` unless it was finished, so every run
is finished when its job ends, also when the job fails.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from mixens.errors import ConfigError

MODES = ("offline", "online", "disabled")
SAMPLE_COLUMNS = ["task", "doc_id", "prompt", "output", "extracted", "target", "correct"]


def sample_row(task: str, row: dict) -> list:
    """One lm-eval sample as a table row. Generation tasks give the text and the extracted answer;
    likelihood tasks give the index of the best-scoring choice for both."""
    arguments = row.get("arguments") or [[""]]
    prompt = arguments[0][0] if arguments and arguments[0] else ""
    resps, filtered = row.get("resps") or [], row.get("filtered_resps") or []
    if resps and resps[0] and isinstance(resps[0][0], str):
        output, extracted = resps[0][0], filtered[0] if filtered else None
    else:  # multiple choice: one (log-likelihood, is_greedy) per choice
        scores = [float(r[0]) for r in filtered] if filtered else []
        output = extracted = max(range(len(scores)), key=scores.__getitem__) if scores else None
    metrics = row.get("metrics") or []
    correct = row.get(metrics[0]) if metrics else None
    return [task, row.get("doc_id"), prompt, str(output), str(extracted), str(row.get("target")), _number(correct)]


def flat(prefix: str, values: dict) -> dict:
    """{prefix/key/...: number} from nested dicts, numbers only (wandb charts plot scalars)."""
    out = {}
    for key, value in values.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            out.update(flat(name, value))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
    return out


class WandbRun:
    def __init__(self, run):
        self.run = run

    def log_record(self, record: dict, folder: Path) -> dict:
        """Metrics per task, speed statistics and every sample of the run; returns where they went."""
        import wandb

        scalars = {}
        for task, metrics in record["metrics"].items():
            scalars.update(flat(task, metrics))
        scalars.update(flat("speed", record.get("speed") or {}))
        table = wandb.Table(columns=SAMPLE_COLUMNS)
        for task, name in (record.get("samples") or {}).items():
            with open(folder / name) as handle:
                for line in handle:
                    table.add_data(*sample_row(task, json.loads(line)))
        self.run.log({**scalars, "samples": table})
        self.run.summary.update(scalars)
        self.run.summary["results_path"] = record.get("path")
        return {"wandb": {"project": self.run.project, "id": self.run.id, "folder": self.run.dir}}


@contextlib.contextmanager
def wandb_run(logger, config: dict, folder: Path, group: str | None, name: str, job_type: str):
    """A started wandb run for one job, finished on the way out (marked failed if the job raised)."""
    if logger.mode not in MODES:
        raise ConfigError(f"logger.mode '{logger.mode}' is unknown; choose one of {', '.join(MODES)}.")
    import wandb

    folder.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=logger.project,
        entity=logger.get("entity"),
        group=logger.group or group,
        job_type=job_type,
        name=name,
        tags=list(logger.get("tags") or []),
        config=config,
        dir=str(folder),
        mode=logger.mode,
        reinit="finish_previous",
        settings=wandb.Settings(quiet=True),  # the run's folder and errors, not a banner per job
    )
    failed = True
    try:
        yield WandbRun(run)
        failed = False
    finally:
        run.finish(exit_code=1 if failed else 0)


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
