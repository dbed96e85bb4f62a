"""The Hydra app behind `python -m mixens`: validate, load tasks, load models, evaluate, write results."""
from __future__ import annotations

import difflib
import logging
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mixens.config import generation_overrides, register_schema, validate_run
from mixens.spec import ConfigError

log = logging.getLogger("mixens")
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")

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


def evaluate(cfg: DictConfig, out_dir: Path) -> dict:
    from mixens.offline_data import reading_from, resolve_hub_mirror

    specs = validate_run(cfg)
    mirror = resolve_hub_mirror(cfg.data.hub_mirror)
    bench = cfg.benchmark
    tasks = list(bench.tasks)
    started = time.time()
    with reading_from(mirror):
        import lm_eval

        from mixens.ensemble import load_ensemble
        from mixens.harness import EnsembleLM

        manager = task_manager_for(tasks)
        check_datasets(tasks, manager, mirror)
        options = {"draw": cfg.ensemble.draw} if cfg.ensemble.strategy == "mixture" else {}
        if cfg.ensemble.strategy == "averaging_topk_union" and cfg.ensemble.union_top_k is not None:
            options["union_top_k"] = cfg.ensemble.union_top_k
        if cfg.ensemble.strategy == "single":
            options["member"] = cfg.ensemble.member
        ensemble = load_ensemble(specs, cfg.ensemble.strategy, batch_size=cfg.batch_size, **options)
        lm = EnsembleLM(ensemble=ensemble, batch_size=cfg.batch_size, seed=cfg.seed)
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=tasks,
            task_manager=manager,
            limit=bench.limit,
            num_fewshot=bench.num_fewshot,
            gen_kwargs=generation_overrides(bench) or None,
            apply_chat_template=bench.apply_chat_template,
            log_samples=bench.log_samples,
            random_seed=cfg.seed,
            numpy_random_seed=cfg.seed,
            torch_random_seed=cfg.seed,
            fewshot_random_seed=cfg.seed,
            bootstrap_iters=0,
        )
    return record_run(cfg, out_dir, results, lm, time.time() - started)


def record_run(cfg: DictConfig, out_dir: Path, results: dict, lm, seconds: float) -> dict:
    from mixens.members import describe
    from mixens.tracking import git_commit, metrics_by_task, versions, write_results, write_samples

    samples = write_samples(out_dir, results.get("samples") or {})
    record = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "metrics": metrics_by_task(results),
        "speed": lm.speed_stats.as_dict(),
        "versions": versions(),
        "seed": cfg.seed,
        "git_commit": git_commit(),
        "members": [describe(m) for m in lm.ensemble.members],
        "samples": samples,
        "n_samples": results.get("n-samples"),
        "seconds": seconds,
    }
    record["path"] = str(write_results(out_dir, record))
    return record


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> dict:
    from mixens.tracking import results_table

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        record = evaluate(cfg, out_dir)
    except ConfigError as err:
        # One clear sentence, not a traceback; a multirun goes on to its next job.
        print(f"mixens: {err}", file=sys.stderr)
        if HydraConfig.get().mode.name == "RUN":
            sys.exit(2)
        raise
    print(results_table(record["metrics"], record["speed"]))
    print(f"results: {record['path']}")
    return record


if __name__ == "__main__":
    main()
