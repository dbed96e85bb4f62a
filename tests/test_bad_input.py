"""Every mistake a user can type into `python -m mixens` ends the run before any model loads, in one sentence
that names the field, with no traceback. (The Python API's side: tests/test_validation.py, with a loader spy.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HUB_FIXTURE


def broken_copy(tiny_models: dict, root: Path, damage: str) -> str:
    """A copy of a tiny model folder with one part missing or damaged."""
    folder = root / f"model-{damage}"
    if not folder.exists():
        shutil.copytree(tiny_models["bpe_a"], folder)
        if damage == "no-tokenizer":
            for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
                (folder / name).unlink(missing_ok=True)
        elif damage == "corrupt-weights":
            (weights,) = folder.glob("*.safetensors")
            weights.write_bytes(b"\x00\x01garbage")
    return str(folder)


def bad_yaml_folder(root: Path) -> str:
    folder = root / "conf" / "models"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mine.yaml").write_text("name: mine\npath: [unclosed\nweight: 1\n")
    return str(folder.parent)


# (case id, overrides given a dict of fixture paths, a word the one sentence must contain)
CASES = [
    ("negative weight", lambda p: ["models.a.weight=-1"], "weight"),
    ("weights all zero", lambda p: ["models.a.weight=0", "models.b.weight=0"], "weight"),
    ("weight not a number", lambda p: ["models.a.weight=heavy"], "weight"),
    ("unknown dtype", lambda p: ["+models.a.dtype=float99"], "dtype"),
    ("missing device", lambda p: ["device=cuda:7"], "device"),
    ("unknown device map", lambda p: ["+models.a.device_map=everywhere"], "device_map"),
    ("unknown Ray actor option", lambda p: ["+models.a.ray_actor={num_gpu:1}"], "ray_actor"),
    ("missing model folder", lambda p: ["models.a.path=./no/such/model"], "no/such/model"),
    ("folder without a tokenizer", lambda p: [f"models.a.path={p['no-tokenizer']}"], "tokenizer"),
    ("corrupt weights", lambda p: [f"models.a.path={p['corrupt-weights']}"], "safetensors"),
    ("unknown strategy", lambda p: ["ensemble.strategy=voting"], "voting"),
    ("unknown engine", lambda p: ["engine=tgi"], "engine 'tgi'"),
    ("a strategy vLLM cannot run", lambda p: ["engine=vllm", "ensemble=router"], "engine=vllm use one of"),
    ("vLLM not in this environment", lambda p: ["engine=vllm"], "make vllm-setup"),
    ("bad vLLM option", lambda p: ["engine=vllm", "vllm.kv_cache_gib=-1"], "vllm.kv_cache_gib"),
    (
        "greedy averaging on vLLM",
        lambda p: ["engine=vllm", "ensemble=averaging", "benchmark.do_sample=false"],
        "top_k > 0",
    ),
    ("option the strategy lacks", lambda p: ["+ensemble.options.threshold=0.3"], "threshold"),
    ("router threshold out of range", lambda p: ["ensemble=router", "ensemble.options.threshold=1.5"], "threshold"),
    ("missing router file", lambda p: ["ensemble=router_learned", "ensemble.options.router_path=nope.pt"], "nope.pt"),
    ("single names no member", lambda p: ["ensemble=single", "ensemble.options.member=zed"], "zed"),
    ("negative seed", lambda p: ["seed=-1"], "seed"),
    ("seed not a number", lambda p: ["seed=many"], "seed"),
    ("zero batch size", lambda p: ["batch_size=0"], "batch_size"),
    ("batch size not a number", lambda p: ["batch_size=many"], "batch_size"),
    ("zero threads", lambda p: ["threads=0"], "threads"),
    ("negative few-shot count", lambda p: ["benchmark.num_fewshot=-1"], "num_fewshot"),
    ("fractional limit above one", lambda p: ["benchmark.limit=1.5"], "limit"),
    ("no new tokens", lambda p: ["benchmark.max_gen_toks=0"], "max_gen_toks"),
    ("negative bootstrap count", lambda p: ["benchmark.bootstrap_iters=-1"], "bootstrap_iters"),
    ("negative temperature", lambda p: ["benchmark.temperature=-1"], "temperature"),
    ("sampling at temperature zero", lambda p: ["benchmark.do_sample=true", "benchmark.temperature=0"], "temperature"),
    ("top_p zero", lambda p: ["benchmark.top_p=0"], "top_p"),
    ("fractional top_k", lambda p: ["benchmark.top_k=2.5"], "top_k"),
    ("unknown task", lambda p: ["benchmark.tasks=[gsm8k_papr]"], "gsm8k_paper"),
    ("no tasks", lambda p: ["benchmark.tasks=[]"], "benchmark.tasks"),
    ("unknown benchmark file", lambda p: ["benchmark=gsm9k"], "gsm9k"),
    ("unknown compared strategy", lambda p: ["compare=[voting]"], "voting"),
    ("unknown logger", lambda p: ["logger.name=tensorboard"], "tensorboard"),
    ("unknown wandb mode", lambda p: ["logger=wandb", "logger.mode=sometimes"], "logger.mode"),
    ("no models", lambda p: ["~models.a", "~models.b"], "models"),
    ("malformed YAML", lambda p: ["--config-dir", p["bad-yaml"]], "line 3, column 7"),
]


@pytest.fixture(scope="module")
def paths(tiny_models, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad-input")
    found = {damage: broken_copy(tiny_models, root, damage) for damage in ("no-tokenizer", "corrupt-weights")}
    return {**found, "bad-yaml": bad_yaml_folder(root)}


@pytest.mark.parametrize("case, overrides, word", CASES, ids=[c[0] for c in CASES])
def test_a_mistake_is_one_sentence_before_any_model_loads(tiny_models, paths, tmp_path, case, overrides, word):
    pair = [f"+models.{n}={{name:{n},path:'{tiny_models[p]}',weight:1.0}}" for n, p in (("a", "bpe_a"), ("b", "bpe_b"))]
    args = [sys.executable, "-m", "mixens", "models=[]", *pair, "device=cpu", "benchmark=gsm8k_paper",
            "benchmark.limit=2", "logger=none", f"hydra.run.dir={tmp_path}/run", *overrides(paths)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"MIXENS_HUB_MIRROR": str(HUB_FIXTURE)}
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    said = done.stderr + done.stdout
    assert done.returncode != 0, said[-2000:]
    assert "Traceback" not in said, said[-3000:]
    assert "[mixens.members]" not in said  # the loader logs each member it loads: none was
    last = done.stderr.strip().splitlines()[-1]
    if last.startswith("Set the environment variable HYDRA_FULL_ERROR"):  # Hydra's own compact error
        assert word in done.stderr, said[-2000:]
    else:
        assert last.startswith("mixens: ") and word in last, said[-2000:]
