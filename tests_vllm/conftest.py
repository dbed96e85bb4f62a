"""The vLLM engine's tests run in .venv-vllm (make test-vllm): the offline set-up and the tiny-model builders of
tests/, with models vLLM's CPU attention can run (head_dim 32), and one engine per model for the whole session."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1] / "tests"


def load_tests_module(name: str):
    """A module of tests/ (the offline environment, tiny models, statistical helpers), loaded by path: both
    test folders have a conftest.py, so it cannot be imported by name."""
    spec = importlib.util.spec_from_file_location(f"mixens_tests_{name}", TESTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


shared = load_tests_module("conftest")  # sets the offline environment before anything else is imported
spec, HUB_FIXTURE, REPO = shared.spec, shared.HUB_FIXTURE, shared.REPO
# Small engines: a few MiB of KV cache each, no CUDA graphs or compilation (starts in ~20 s on a CPU).
ENGINE = {"enforce_eager": True, "kv_cache_gib": 0.25, "max_model_len": 512}


@pytest.fixture(scope="session")
def vllm_models(tmp_path_factory) -> dict[str, str]:
    """bpe_a and bpe_b share a byte-level BPE tokenizer, sp_c has a SentencePiece-style one."""
    root = tmp_path_factory.mktemp("vllm-models")
    bpe, sp = shared._byte_level_bpe(), shared._sentencepiece_style()
    return {
        "bpe_a": str(shared.build_tiny_model(root / "bpe_a", bpe, seed=1, head_dim=32)),
        "bpe_b": str(shared.build_tiny_model(root / "bpe_b", bpe, seed=2, head_dim=32)),
        "sp_c": str(shared.build_tiny_model(root / "sp_c", sp, seed=3, head_dim=32)),
    }


@pytest.fixture(scope="session")
def engines(vllm_models):
    """One loaded vLLM member per tiny model, shared by every test that builds ensembles from them."""
    from mixens.vllm_engine import VllmOptions, load_vllm_member

    options = VllmOptions.from_mapping(ENGINE)
    return {
        name: load_vllm_member(shared_spec(path, name), i, options, members_in_engine=3)
        for i, (name, path) in enumerate(vllm_models.items())
    }


def shared_spec(path: str, name: str):
    from mixens.spec import ModelSpec

    return ModelSpec.from_mapping(spec(path, name), 0)
