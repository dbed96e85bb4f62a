"""What a member of an ensemble is, as the user writes it, and its validation.

Everything here runs before any weights are loaded, so a typo costs a second, not a model load.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from mixens.errors import ConfigError
from mixens.hub import HUB_ID, in_hub_cache

IN_MEMORY = "<in memory>"  # the path of a member given as a loaded model and tokenizer
DTYPES = ("auto", "float32", "float16", "bfloat16", "float64")  # float64: exact numerical checks


@dataclass(frozen=True)
class ModelSpec:
    """One member: where its weights come from and how much it counts."""

    name: str
    path: str
    weight: float = 1.0
    dtype: str = "auto"
    device: str = "auto"
    # A member larger than one device: transformers' device_map ("auto", "balanced", "sequential" or
    # {module: device}), placing its layers across the visible GPUs (and CPU); replaces `device`.
    device_map: str | dict | None = None
    # A member in a Ray actor of its own, on whichever node Ray places it (mixens.ray_members): Ray's actor
    # resources, e.g. {num_gpus: 1} or {num_gpus: 1, resources: {node_b: 1}}; None: in this process.
    ray_actor: dict | None = None
    revision: str | None = None
    # False: raw prompts; True: the tokenizer's own chat template; a string: that Jinja template.
    chat_template: bool | str = False
    trust_remote_code: bool = False

    @classmethod
    def from_mapping(cls, raw: Mapping, index: int) -> ModelSpec:
        where = f"models[{index}]"
        if isinstance(raw, ModelSpec):
            return raw
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where} must be a mapping like {{name, path, weight}}, got {type(raw).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{where} has unknown keys {unknown}; the allowed keys are {sorted(known)}.")
        for key in ("path",):
            if not raw.get(key):
                raise ConfigError(f"{where}.{key} is missing: give a hub id, a local folder or 'packaged:<name>'.")
        values = dict(raw)
        values.setdefault("name", str(values["path"]).rstrip("/").split("/")[-1])
        try:
            values["weight"] = float(values.get("weight", 1.0))
        except (TypeError, ValueError):
            raise ConfigError(f"{where}.weight must be a number, got {raw.get('weight')!r}.") from None
        return cls(**values)


def normalized_weights(weights: Sequence[float], names: Sequence[str] | None = None) -> list[float]:
    """Weights scaled to sum to one; rejects negative, NaN and all-zero weights."""
    names = list(names) if names is not None else [str(i) for i in range(len(weights))]
    for i, (weight, name) in enumerate(zip(weights, names)):
        if math.isnan(weight) or math.isinf(weight):
            raise ConfigError(f"models[{i}].weight ({name}) is {weight}; give a finite number >= 0.")
        if weight < 0:
            raise ConfigError(f"models[{i}].weight ({name}) is negative ({weight}); weights must be >= 0.")
    largest = max(weights)
    if largest <= 0:
        raise ConfigError("models[*].weight are all zero; give at least one member a positive weight.")
    scaled = [w / largest for w in weights]  # first to at most 1, so that the sum cannot overflow
    return [w / sum(scaled) for w in scaled]


def validate_device(device: str, field_name: str, here: bool = True) -> None:
    """A device name, and (`here`) one this machine has; a member in a Ray actor resolves it on its node."""
    import torch

    if device in ("auto", "cpu", "cpu:0"):  # torch names the one CPU device both ways
        return
    kind, _, index = device.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count()
        wanted = int(index) if index.isdigit() else 0
        if index and not index.isdigit():
            raise ConfigError(f"{field_name} '{device}' is not a device; use 'cpu', 'cuda' or 'cuda:N'.")
        if here and wanted >= count:
            seen = f"{count} CUDA device(s)" if count else "no CUDA device"
            raise ConfigError(f"{field_name} is '{device}' but this machine has {seen}; use 'cpu' or 'auto'.")
        return
    if kind == "mps":
        if here and not torch.backends.mps.is_available():
            raise ConfigError(f"{field_name} is 'mps' but MPS is not available here; use 'cpu' or 'auto'.")
        return
    raise ConfigError(f"{field_name} '{device}' is not a device; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.")


RAY_ACTOR_OPTIONS = ("num_cpus", "num_gpus", "memory", "resources")


def validate_ray_actor(spec: ModelSpec, index: int) -> None:
    """Ray's own actor options, checked before Ray starts: amounts are numbers >= 0, resources a mapping."""
    where = f"models[{index}].ray_actor"
    options = spec.ray_actor
    if not isinstance(options, Mapping):
        raise ConfigError(f"{where} must be a mapping of Ray actor options such as {{num_gpus: 1}}, got {options!r}.")
    if unknown := sorted(set(options) - set(RAY_ACTOR_OPTIONS)):
        raise ConfigError(f"{where} has unknown keys {unknown}; the allowed keys are {list(RAY_ACTOR_OPTIONS)}.")
    amounts = {k: v for k, v in options.items() if k != "resources"}
    resources = options.get("resources") or {}
    if not isinstance(resources, Mapping):
        raise ConfigError(f"{where}.resources must be a mapping like {{node_b: 1}}, got {resources!r}.")
    amounts.update({f"resources.{k}": v for k, v in resources.items()})
    for key, value in amounts.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ConfigError(f"{where}.{key} must be a number >= 0, got {value!r}.")


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def validate_device_map(spec: ModelSpec, index: int) -> None:
    where = f"models[{index}].device_map"
    if isinstance(spec.device_map, str) and spec.device_map not in DEVICE_MAPS:
        raise ConfigError(f"{where} '{spec.device_map}' is unknown; use one of {', '.join(DEVICE_MAPS)} or a mapping.")
    if not isinstance(spec.device_map, (str, dict)):
        raise ConfigError(f"{where} must be a name or a {{module: device}} mapping, got {spec.device_map!r}.")
    if spec.device != "auto":
        raise ConfigError(f"models[{index}] sets both device and device_map; device_map places the model, drop device.")


def validate_path(spec: ModelSpec, index: int) -> None:
    """A path must be a packaged model, an existing folder, or something shaped like a hub id."""
    from mixens import packaged

    where = f"models[{index}].path"
    path = spec.path
    if path == IN_MEMORY:  # given as a model and tokenizer already loaded
        return
    if packaged.is_packaged(path):
        name = packaged.packaged_name(path)
        if name not in packaged.PACKAGED_MODELS:
            raise ConfigError(
                f"{where} '{path}' is not a packaged model; known: "
                + ", ".join(packaged.PACKAGED_PREFIX + n for n in packaged.PACKAGED_MODELS)
                + "."
            )
        return
    local = Path(os.path.expanduser(path))
    if local.is_dir():
        check_model_folder(local, f"{where} '{path}'")
        return
    if path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise ConfigError(f"{where} '{path}' does not exist; give an existing model folder.")
    if not HUB_ID.match(path):
        raise ConfigError(
            f"{where} '{path}' is neither an existing folder nor a hub id like 'org/model'; fix the path."
        )
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not in_hub_cache(path, spec.revision):
        raise ConfigError(
            f"{where} '{path}' is not in the local Hugging Face cache and HF_HUB_OFFLINE=1; "
            "download it first (hf download) or give a local folder."
        )
    # Online, the hub is probed when the member loads (check_hub_reachable), not here: validation reads
    # no network.


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")


def check_model_folder(folder: Path, where: str) -> None:
    """A saved model folder: its config, a tokenizer, and weights whose headers read (no weights loaded)."""
    if not (folder / "config.json").exists():
        raise ConfigError(f"{where} is a folder without config.json; point it at a saved model folder.")
    if not any((folder / name).exists() for name in TOKENIZER_FILES):
        raise ConfigError(
            f"{where} has no tokenizer ({', '.join(TOKENIZER_FILES)}); save one beside the model "
            "(tokenizer.save_pretrained(folder))."
        )
    shards = sorted(folder.glob("*.safetensors"))
    if not shards and not any(folder.glob("*.bin")):
        raise ConfigError(f"{where} has no weights (*.safetensors or *.bin); save the model there (save_pretrained).")
    from safetensors import safe_open

    for shard in shards:
        try:
            with safe_open(str(shard), framework="pt") as weights:
                weights.keys()
        except Exception as err:  # safetensors raises its own error types for a bad header
            raise ConfigError(
                f"{where}: {shard.name} is not a readable safetensors file ({err}); save or download it again."
            ) from None


def validate_members(specs: Sequence[ModelSpec]) -> None:
    """All checks of the members that need no weights: names, weights, dtypes, devices, paths."""
    if not specs:
        raise ConfigError("models is empty; give at least one model.")
    names = [spec.name for spec in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"models[*].name must be unique; {dupes} appear more than once.")
    normalized_weights([s.weight for s in specs], names)
    for i, spec in enumerate(specs):
        if spec.dtype not in DTYPES:
            raise ConfigError(f"models[{i}].dtype '{spec.dtype}' is unknown; choose one of {', '.join(DTYPES)}.")
        validate_device(spec.device, f"models[{i}].device", here=spec.ray_actor is None)
        if spec.ray_actor is not None:
            validate_ray_actor(spec, i)
        if spec.device_map is not None:
            validate_device_map(spec, i)
        validate_path(spec, i)
