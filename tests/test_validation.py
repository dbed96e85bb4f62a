"""Bad input fails with one sentence naming the field and the fix, before any weights load."""

from __future__ import annotations

import math

import pytest
from conftest import spec

import mixens
import mixens.ensemble


@pytest.fixture
def no_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the input was validated")

    monkeypatch.setattr(mixens.ensemble, "load_member", refuse)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ((-0.5, 1.0), r"models\[0\]\.weight .* negative"),
        ((math.nan, 1.0), r"models\[0\]\.weight .* nan"),
        ((0.0, 0.0), "all zero"),
    ],
)
def test_bad_weights(tiny_models, no_loading, weights, message):
    models = [spec(tiny_models["bpe_a"], "a", weights[0]), spec(tiny_models["bpe_b"], "b", weights[1])]
    with pytest.raises(mixens.ConfigError, match=message):
        mixens.load_ensemble(models, "mixture")


def test_weight_that_is_not_a_number(tiny_models, no_loading):
    with pytest.raises(mixens.ConfigError, match=r"models\[0\]\.weight must be a number"):
        mixens.load_ensemble([spec(tiny_models["bpe_a"], "a", "heavy")], "mixture")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("./no/such/folder", r"models\[0\]\.path .* does not exist"),
        ("not a hub id!", r"models\[0\]\.path .* hub id"),
        ("someone/not-downloaded-model", r"models\[0\]\.path .* not in the local Hugging Face cache"),
        ("packaged:gpt-17", r"models\[0\]\.path .* packaged:smollm2-135m-instruct"),
    ],
)
def test_unknown_paths(no_loading, path, message):
    with pytest.raises(mixens.ConfigError, match=message):
        mixens.load_ensemble([{"name": "m", "path": path}], "mixture")


def test_folder_without_a_model(tmp_path, no_loading):
    with pytest.raises(mixens.ConfigError, match="without config.json"):
        mixens.load_ensemble([{"name": "m", "path": str(tmp_path)}], "mixture")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("tokenizer", r"has no tokenizer \(tokenizer.json"),
        ("weights", r"has no weights"),
        ("corrupt", r"model.safetensors is not a readable safetensors file"),
    ],
)
def test_a_model_folder_missing_a_part_is_named_before_loading(tiny_models, tmp_path, no_loading, damage, message):
    import shutil

    folder = shutil.copytree(tiny_models["bpe_a"], tmp_path / "model")
    if damage == "tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (folder / name).unlink(missing_ok=True)
    elif damage == "weights":
        for shard in folder.glob("*.safetensors"):
            shard.unlink()
    else:
        (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    with pytest.raises(mixens.ConfigError, match=message):
        mixens.load_ensemble([{"name": "m", "path": str(folder)}], "mixture")


@pytest.mark.parametrize("device", ["cuda:99", "tpu", "mps"])
def test_device_that_is_not_there(tiny_models, no_loading, device):
    import torch

    if device == "mps" and torch.backends.mps.is_available():
        device = "cuda:99"
    with pytest.raises(mixens.ConfigError, match=r"models\[0\]\.device"):
        mixens.load_ensemble([spec(tiny_models["bpe_a"], "a", device=device)], "mixture")


def test_unknown_strategy_lists_the_known_ones(tiny_models, no_loading):
    with pytest.raises(mixens.ConfigError, match="mixture, averaging, averaging_topk_union, single"):
        mixens.load_ensemble([spec(tiny_models["bpe_a"], "a")], "voting")


@pytest.mark.parametrize(
    ("strategy", "kwargs", "message"),
    [
        ("mixture", {"engine": "tgi"}, "engine 'tgi' is unknown"),
        ("router", {"engine": "vllm", "policy": "confidence"}, "engine=vllm use one of single, mixture, averaging"),
        ("mixture", {"engine": "vllm", "vllm": {"kv_cache": 4}}, r"vllm options \['kv_cache'\] are unknown"),
        ("mixture", {"engine": "vllm", "vllm": {"block_size": 0}}, "vllm.block_size must be an integer >= 1"),
    ],
)
def test_engine_choices_a_run_cannot_have(tiny_models, no_loading, strategy, kwargs, message):
    with pytest.raises(mixens.ConfigError, match=message):
        mixens.load_ensemble([spec(tiny_models["bpe_a"], "a"), spec(tiny_models["bpe_b"], "b")], strategy, **kwargs)


def test_a_loaded_model_runs_on_transformers(tiny_models, no_loading):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_models["bpe_a"]
    loaded = {
        "name": "a",
        "model": AutoModelForCausalLM.from_pretrained(path),
        "tokenizer": AutoTokenizer.from_pretrained(path),
    }
    with pytest.raises(mixens.ConfigError, match="runs on engine=transformers"):
        mixens.load_ensemble([loaded], "mixture", engine="vllm")


@pytest.mark.parametrize(
    ("models", "kwargs", "message"),
    [
        ([], {}, "models is empty"),
        ([{"name": "a", "path": "x/y", "colour": "red"}], {}, r"unknown keys \['colour'\]"),
        ([{"name": "a"}], {}, r"models\[0\]\.path is missing"),
        ([{"name": "a", "path": "x/y"}, {"name": "a", "path": "x/z"}], {}, "must be unique"),
        ([{"name": "a", "path": "x/y", "dtype": "int4"}], {}, r"models\[0\]\.dtype"),
        ([{"name": "a", "path": "TINY"}], {"draw": "sometimes"}, "draw 'sometimes'"),
        ([{"name": "a", "path": "TINY"}], {"member": "a"}, r"strategy 'mixture' has no option \['member'\]"),
    ],
)
def test_malformed_requests(tiny_models, no_loading, models, kwargs, message):
    models = [{**m, "path": tiny_models["bpe_a"]} if m.get("path") == "TINY" else m for m in models]
    with pytest.raises(mixens.ConfigError, match=message):
        mixens.load_ensemble(models, "mixture", **kwargs)


def test_single_names_an_existing_member(tiny_models, no_loading):
    with pytest.raises(mixens.ConfigError, match="member 'z' is not one of the models"):
        mixens.load_ensemble([spec(tiny_models["bpe_a"], "a")], "single", member="z")


@pytest.fixture(scope="module")
def tiny_ensemble(tiny_models):
    return mixens.load_ensemble([spec(tiny_models["bpe_a"], "a")], "mixture")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
        ({"max_new_tokens": 4, "temperature": 0.0}, "temperature must be > 0"),
        ({"max_new_tokens": 4, "top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"max_new_tokens": 4, "top_k": -1}, "top_k must be an integer >= 0"),
        ({"max_new_tokens": 4, "top_k": 2.5}, "top_k must be an integer >= 0"),
    ],
)
def test_bad_generation_options(tiny_ensemble, kwargs, message):
    with pytest.raises(mixens.ConfigError, match=message):
        tiny_ensemble.generate(["hi"], **kwargs)


def test_huge_weights_are_normalised_without_overflow():
    from mixens.spec import normalized_weights

    assert normalized_weights([1e308, 1e308, 0.0]) == [0.5, 0.5, 0.0]
    assert normalized_weights([1e-320, 3e-320]) == pytest.approx([0.25, 0.75])
