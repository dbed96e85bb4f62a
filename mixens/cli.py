"""The Hydra app behind `python -m mixens`: validate, load tasks, load models, evaluate, write results."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import json
import logging
import multiprocessing
import shutil
import sys
import time
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mixens.config import RunPlan, check_config_files, generation_overrides, register_schema, validate_run
from mixens.errors import ConfigError, OutputError
from mixens.faults import Interrupted, console_when_log_file_fails, stop_on_signals, stop_when_orphaned

log = logging.getLogger("mixens")
CONF_DIR = str(Path(__file__).resolve().parent / "conf")  # inside the package, so an installed wheel has it

register_schema()


def task_manager_for(tasks: list[str]):
    """The project's tasks only (fast), or lm-eval's whole index when a stock task is asked for."""
    from lm_eval.tasks import TaskManager

    from mixens.tasks import TASKS_DIR

    local = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    if all(t in local.all_tasks for t in tasks):
        return local
    manager = TaskManager(include_path=str(TASKS_DIR))
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        hints = {t: difflib.get_close_matches(t, manager.all_tasks, n=3) for t in unknown}
        raise ConfigError(
            f"benchmark.tasks has tasks lm-eval does not know: {unknown}; close names: {hints} "
            "(list all with `lm-eval ls tasks`)."
        )
    return manager


def check_datasets(tasks: list[str], manager, mirror) -> None:
    """Load every task's dataset before any model, so a missing dataset costs seconds, not a model load."""
    from lm_eval.tasks import get_task_dict

    from mixens.offline_data import unreachable_dataset_error

    for task in tasks:
        try:
            get_task_dict([task], manager)
        except Exception as err:  # datasets raises many kinds: connection, offline mode, not found
            raise unreachable_dataset_error(task, err, mirror) from err


class _SamplingAlreadyOn(logging.Filter):
    """lm-eval warns "Ensure 'do_sample=True'" for every generation override, also when it is on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Ensure 'do_sample=True'" not in record.getMessage()


SAMPLING_ALREADY_ON = _SamplingAlreadyOn()


def evaluate(cfg: DictConfig, out_dir: Path, plan: RunPlan) -> dict:
    """Evaluate a validated run (`plan` = validate_run(cfg)) and write its results.

    With `compare`, the listed strategies run first on the same loaded members and problems."""
    import lm_eval
    import lm_eval.evaluator
    from lm_eval.loggers import EvaluationTracker

    from mixens.comparison import compared_ensembles
    from mixens.ensemble import load_validated
    from mixens.harness import EnsembleLM
    from mixens.offline_data import reading_from, resolve_hub_mirror
    from mixens.results_files import git_commit

    # lm-eval records `git describe` of the working directory, which during evaluation is the data
    # mirror (git prints "fatal: not a git repository"); mixens' own commit is what identifies the code.
    lm_eval.evaluator.get_git_commit_hash = git_commit
    mirror = resolve_hub_mirror(cfg.data.hub_mirror)
    bench = cfg.benchmark
    lm_eval_log = logging.getLogger("lm_eval.evaluator")  # one process runs every job of a sweep
    if bench.do_sample:
        lm_eval_log.addFilter(SAMPLING_ALREADY_ON)
    else:
        lm_eval_log.removeFilter(SAMPLING_ALREADY_ON)
    tasks = list(bench.tasks)
    started = time.time()
    with reading_from(mirror):
        manager = task_manager_for(tasks)
        check_datasets(tasks, manager, mirror)
    # batch_size=auto is found by the lm-eval model below, on the loaded members
    first_batch = 1 if cfg.batch_size == "auto" else cfg.batch_size
    ensemble = load_validated(plan.specs, plan.strategy, first_batch, engine=plan.engine, vllm=plan.vllm)
    evaluations, batch_size = [], cfg.batch_size
    for label, each in compared_ensembles(ensemble, list(cfg.compare)):
        if cfg.compare:
            print(f"mixens: evaluating {label}", file=sys.stderr)
        journal = open_journal(cfg, out_dir, label)
        lm = EnsembleLM(
            ensemble=each, batch_size=batch_size, seed=cfg.seed, journal=journal, record_tokens=bench.log_tokens
        )
        batch_size = lm.batch_size  # 'auto' is searched once, for the first evaluation
        lm_eval_files = EvaluationTracker(output_path=str(out_dir / LM_EVAL_FOLDER))
        with reading_from(mirror), contextlib.closing(journal):
            results = lm_eval.simple_evaluate(
                model=lm,
                tasks=tasks,
                task_manager=manager,
                limit=bench.limit,
                num_fewshot=bench.num_fewshot,
                gen_kwargs=generation_overrides(bench) or None,
                apply_chat_template=bench.apply_chat_template,
                log_samples=bench.log_samples or bool(cfg.compare),  # the comparison's intervals need them
                random_seed=cfg.seed,
                numpy_random_seed=cfg.seed,
                torch_random_seed=cfg.seed,
                fewshot_random_seed=cfg.seed,
                bootstrap_iters=bench.bootstrap_iters,
                evaluation_tracker=lm_eval_files,
            )
        save_lm_eval_files(lm_eval_files, lm.output_name, results)
        evaluations.append((label, results, lm))
    record = record_run(cfg, out_dir, evaluations, time.time() - started)
    if "samples_error" not in record:  # everything the journal kept is in the run's files now
        shutil.rmtree(out_dir / JOURNAL_FOLDER, ignore_errors=True)
    return record


JOURNAL_FOLDER = "journal"
LM_EVAL_FOLDER = "lm_eval"  # lm-eval's own results and samples files, as its CLI writes them


def save_lm_eval_files(tracker, name: str, results: dict) -> None:
    """lm-eval's results_<date>.json and samples_<task>_<date>.jsonl under lm_eval/<name>/, for the tools that
    read lm-eval's output (its own CLI's steps; copies, since lm-eval rewrites what it saves)."""
    config = tracker.general_config_tracker
    config.model_name, config.model_name_sanitized = name, name
    results = copy.deepcopy(results)
    samples = results.pop("samples", None)
    tracker.save_results_aggregated(results=results, samples=samples)
    for task in results.get("configs", {}) if samples else ():
        tracker.save_results_samples(task_name=task, samples=samples[task])


def open_journal(cfg: DictConfig, out_dir: Path, label: str):
    """The journal of one evaluation of the job: batches finished by an earlier attempt in this folder
    are taken from it, so a job rerun after a crash or a kill redoes only the rest."""
    from mixens.config import result_defining
    from mixens.journal import RequestJournal

    identity = {"label": label, **result_defining(OmegaConf.to_container(cfg, resolve=True))}
    journal = RequestJournal(out_dir / JOURNAL_FOLDER / f"{label}.sqlite", identity)
    if finished := journal.finished_batches():
        print(f"mixens: resuming {label}: {finished} finished batches come from {journal.path}", file=sys.stderr)
    return journal


def record_run(cfg: DictConfig, out_dir: Path, evaluations: list, seconds: float) -> dict:
    """results.json for the run's own strategy (the last evaluation), with the comparison rows if any.

    A disk that fails (full, read-only) costs what cannot be written and nothing else: without room
    for the per-problem outputs the metrics are still written; without room for those, they are
    printed, and the error says where the writing failed."""
    from mixens.comparison import comparison_rows
    from mixens.members import describe
    from mixens.results_files import (
        git_commit,
        metrics_by_task,
        versions,
        write_results,
        write_samples,
        write_token_records,
    )

    _, results, lm = evaluations[-1]
    resumed = lm.journal.resumed if lm.journal is not None else 0
    record = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "metrics": metrics_by_task(results),
        "speed": lm.speed_stats.as_dict(),
        # what lm-eval's own table reads: scores with standard errors, versions, n-shot, groups
        "lm_eval": {key: results[key] for key in LM_EVAL_TABLE_KEYS if key in results},
        "resumed_requests": resumed,  # taken from an earlier attempt's journal
        "versions": versions(),
        "seed": cfg.seed,
        "git_commit": git_commit(),
        "members": [describe(m, w) for m, w in zip(lm.ensemble.members, lm.ensemble.weights)],
        "samples": {},
        "group_subtasks": results.get("group_subtasks"),  # which samples files a group's score averages
        "n_samples": results.get("n-samples"),
        "seconds": seconds,
    }
    if cfg.compare:
        tasks = list(cfg.benchmark.tasks)
        record["comparison"] = comparison_rows(
            [(label, r, m.speed_stats.as_dict()) for label, r, m in evaluations], tasks
        )
    try:
        for label, compared, compared_lm in evaluations[:-1]:
            write_samples(out_dir / "compare" / label, compared.get("samples") or {})
            write_token_records(out_dir / "compare" / label, compared_lm.token_records)
        record["samples"] = write_samples(out_dir, results.get("samples") or {})
        record["tokens"] = write_token_records(out_dir, lm.token_records)
    except OSError as err:
        record["samples_error"] = f"{type(err).__name__}: {err}"
        print(f"mixens: the per-problem outputs could not be written ({err}); the metrics are kept.", file=sys.stderr)
    try:
        record["path"] = str(write_results(out_dir, record))
    except OSError as err:
        print(console_table(record), file=sys.stderr)
        raise OutputError(f"results could not be written to {out_dir} ({err}); the metrics are printed above.") from err
    return record


LM_EVAL_TABLE_KEYS = ("results", "groups", "group_subtasks", "versions", "n-shot", "higher_is_better")


def console_table(record: dict) -> str:
    """The comparison table for a comparison; else lm-eval's own table (groups apart) and the speed line."""
    from lm_eval.utils import make_table

    from mixens.comparison import comparison_table
    from mixens.results_files import speed_line

    if record.get("comparison"):
        return comparison_table(record["comparison"])
    scores = record["lm_eval"]
    tables = [make_table(scores), *([make_table(scores, "groups")] if scores.get("groups") else [])]
    return "\n".join(part for part in [*tables, speed_line(record["speed"])] if part)


def main() -> None:
    """`python -m mixens` / `mixens`: the Hydra app, after a check that every config file it may read is YAML."""
    check_config_files(sys.argv[1:], CONF_DIR)
    hydra_app()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def hydra_app(cfg: DictConfig) -> dict:

    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    sweep_dir = Path(hydra_cfg.sweep.dir) if hydra_cfg.mode.name == "MULTIRUN" else None
    stop_on_signals()
    stop_when_orphaned()
    console_when_log_file_fails()
    try:
        record = run_job(cfg, out_dir, sweep_dir)
    except BaseException as err:
        # The job's folder says why it failed; the other jobs of a sweep keep their results and go on.
        write_failure(out_dir, cfg, err)
        if isinstance(err, Interrupted):  # told to stop: the whole sweep stops, this job reruns with skip_existing
            print(
                f"mixens: {err}; {out_dir / 'failed.json'} says so, and skip_existing=true reruns the job.",
                file=sys.stderr,
            )
            sys.exit(128 + err.signum)
        if isinstance(err, OutputError):
            print(f"mixens: {err}", file=sys.stderr)
            sys.exit(1)
        if isinstance(err, ConfigError):
            print(f"mixens: {err}", file=sys.stderr)  # one clear sentence, not a traceback
            if sweep_dir is None:
                sys.exit(2)
        raise
    (out_dir / "failed.json").unlink(missing_ok=True)  # from an earlier attempt of this job
    print(console_table(record))
    print(f"results: {record['path']}")
    return record


def run_job(cfg: DictConfig, out_dir: Path, sweep_dir: Path | None) -> dict:
    """One run: skipped when its results exist (skip_existing), else evaluated inside its tracker run."""
    from mixens.results_files import find_existing

    config = OmegaConf.to_container(cfg, resolve=True)
    group = None if sweep_dir is None else sweep_group(sweep_dir)
    if cfg.skip_existing:
        found = find_existing(sweep_dir or out_dir, config)
        if found is not None:
            record = {**json.loads(found.read_text()), "path": str(found)}
            if cfg.logger.name == "none" or record.get("logged"):
                print(f"mixens: skipping, this config already has results: {found}")
                return record
            # The job was stopped between writing its results and logging them: log them, run nothing.
            print(f"mixens: {found} never reached the {cfg.logger.name} run; logging it now, without running the job")
            with tracker(cfg, config, found.parent, group) as logger:
                log_and_mark(logger, record, found.parent)
            return record
    plan = validate_run(cfg)  # before a tracker run is opened for a config that cannot run
    if cfg.threads is not None:
        import torch

        torch.set_num_threads(cfg.threads)
    from mixens.gpu_claim import one_gpu_per_parallel_job

    in_parallel_worker = multiprocessing.parent_process() is not None  # a joblib worker of a sweep
    with (
        tracker(cfg, config, out_dir, group) as logger,
        one_gpu_per_parallel_job(plan.specs, in_parallel_worker) as specs,
    ):
        try:
            record = evaluate(cfg, out_dir, dataclasses.replace(plan, specs=specs))
        except BaseException as err:
            # Said before the tracker's run is finished: a stop or a hang there must not lose why the job
            # ended (the caller writes it again, with the whole traceback, once everything is closed).
            write_failure(out_dir, cfg, err)
            raise
        if logger is not None:
            log_and_mark(logger, record, out_dir)
    return record


def log_and_mark(logger, record: dict, folder: Path) -> None:
    """Log the record to the tracker run, then say so in results.json: skip_existing trusts only a job
    whose results reached its tracker."""
    from mixens.results_files import write_results

    record["logged"] = logger.log_record(record, folder)
    record["path"] = str(write_results(folder, {k: v for k, v in record.items() if k != "path"}))


def tracker(cfg: DictConfig, config: dict, out_dir: Path, group: str | None):
    if cfg.logger.name == "none":
        return contextlib.nullcontext()
    if cfg.logger.name != "wandb":
        raise ConfigError(f"logger '{cfg.logger.name}' is unknown; choose logger=wandb or logger=none.")
    from mixens.wandb_run import wandb_run

    return wandb_run(cfg.logger, config, out_dir, group, out_dir.name, cfg.ensemble.strategy)


def sweep_group(sweep_dir: Path) -> str:
    """The sweep's name in the tracker: its folder below outputs/sweeps/ (e.g. 2026-11-22/14-03-51)."""
    parts = sweep_dir.parts
    below = parts[len(parts) - parts[::-1].index("sweeps") :] if "sweeps" in parts else ()
    return "/".join(below) or sweep_dir.name


def write_failure(out_dir: Path, cfg: DictConfig, err: BaseException) -> None:
    from mixens.files import write_atomic

    if isinstance(err, SystemExit) and not err.code:
        return
    failure = {
        "error": f"{type(err).__name__}: {err}",
        "interrupted": isinstance(err, Interrupted),
        "traceback": traceback.format_exception(err),
        "config": OmegaConf.to_container(cfg, resolve=False),
    }
    try:
        write_atomic(out_dir / "failed.json", json.dumps(failure, indent=2, default=str) + "\n")
    except OSError as disk:  # the disk that failed the job may refuse this file too: say so, keep the error
        print(f"mixens: {out_dir / 'failed.json'} could not be written ({disk}).", file=sys.stderr)


if __name__ == "__main__":
    main()
