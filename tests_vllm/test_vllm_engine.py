"""engine=vllm: one member gives vLLM's own text; mixture and averaging sample from the distribution averaging
samples from on transformers (two-sample chi-square tests, fixed seeds); the same seed gives the same texts;
stops hold across members' runs; lm-eval runs through it from the Hydra app and from model_args."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections import Counter

import pytest
from conftest import ENGINE, HUB_FIXTURE, REPO, load_tests_module, spec

import mixens
from mixens import vllm_decoding
from mixens.ensemble import Ensemble
from mixens.errors import ConfigError
from mixens.strategies import build_strategy
from mixens.vllm_engine import CPU_BINDING, engine_cores

two_sample_chi_square = load_tests_module("test_equivalence").two_sample_chi_square
PROMPTS = ["The capital of France is", "Question: what is 12 + 30?\nAnswer:"]
DRAWS_PER_PROMPT = 3_000
WEIGHTS = (0.35, 0.65)
PAIRS = {"shared": ("bpe_a", "bpe_b"), "different": ("bpe_a", "sp_c")}
TOP5 = dict(temperature=0.7, top_k=5)


def on_vllm(engines, names, strategy: str, weights=None, **options) -> Ensemble:
    members = [engines[n] for n in names]
    return Ensemble(members, build_strategy(strategy, list(names), options), batch_size=8, weights=weights)


def first_two_tokens(ensemble, seed: int, **sampling) -> Counter:
    prompts = [p for p in PROMPTS for _ in range(DRAWS_PER_PROMPT)]
    result = ensemble.generate(prompts, max_new_tokens=2, seed=seed, batch_size=len(prompts), **sampling)
    return Counter(zip(prompts, result.texts))


@pytest.fixture(scope="module")
def reference(vllm_models):
    """transformers' averaging over the same pairs and settings: the distribution to match."""
    memo = {}

    def get(pair: str, setting: str) -> Counter:
        if (pair, setting) not in memo:
            a, b = PAIRS[pair]
            members = [spec(vllm_models[a], a, WEIGHTS[0]), spec(vllm_models[b], b, WEIGHTS[1])]
            sampling = TOP5 if setting == "top5" else {}
            memo[(pair, setting)] = first_two_tokens(mixens.load_ensemble(members, "averaging"), seed=5, **sampling)
        return memo[(pair, setting)]

    return get


@pytest.mark.parametrize("pair", PAIRS)
def test_mixture_on_vllm_samples_what_averaging_on_transformers_samples(engines, reference, pair):
    # draw=sequence: every row its own schedule, so the rows are independent draws
    mixture = on_vllm(engines, PAIRS[pair], "mixture", WEIGHTS, draw="sequence")
    assert two_sample_chi_square(first_two_tokens(mixture, seed=11, **TOP5), reference(pair, "top5")) > 1e-3
    assert two_sample_chi_square(first_two_tokens(mixture, seed=12), reference(pair, "plain")) > 1e-3


@pytest.mark.parametrize("pair", PAIRS)
def test_averaging_on_vllm_samples_what_averaging_on_transformers_samples(engines, reference, pair):
    averaging = on_vllm(engines, PAIRS[pair], "averaging", WEIGHTS)
    assert two_sample_chi_square(first_two_tokens(averaging, seed=13, **TOP5), reference(pair, "top5")) > 1e-3


def test_control_one_member_alone_is_told_apart(engines, reference):
    """The test above can fail: the second member alone is not the ensemble."""
    alone = on_vllm(engines, ["bpe_b"], "single")
    assert two_sample_chi_square(first_two_tokens(alone, seed=14, **TOP5), reference("shared", "top5")) < 1e-6


def test_one_member_greedy_is_vllms_own_greedy(engines):
    from vllm import SamplingParams

    member = engines["bpe_a"]
    ours = on_vllm(engines, ["bpe_a"], "single").generate(PROMPTS, max_new_tokens=24, do_sample=False).texts
    theirs = member.model.engine.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=24), use_tqdm=False)
    assert ours == [out.outputs[0].text for out in theirs]
    assert all(ours)


@pytest.mark.parametrize("strategy", ["mixture", "averaging"])
def test_the_same_seed_gives_the_same_texts(engines, strategy):
    ensemble = on_vllm(engines, PAIRS["different"], strategy)
    runs = [ensemble.generate(PROMPTS * 4, max_new_tokens=12, seed=seed, **TOP5).texts for seed in (3, 3, 4)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


@pytest.mark.parametrize("strategy", ["mixture", "averaging"])
def test_the_members_engines_are_called_at_once_and_write_what_calls_in_turn_write(engines, monkeypatch, strategy):
    ensemble = on_vllm(engines, PAIRS["shared"], strategy, **({"draw": "sequence"} if strategy == "mixture" else {}))
    calls = []  # (start, end) of each engine call
    generate = vllm_decoding._generate

    def timed(*request):
        start = time.perf_counter()
        outputs = generate(*request)
        calls.append((start, time.perf_counter()))
        return outputs

    monkeypatch.setattr(vllm_decoding, "_generate", timed)
    settings = dict(max_new_tokens=12, seed=3, **TOP5)
    at_once = ensemble.generate(PROMPTS * 4, **settings).texts
    assert any(a[0] < b[1] and b[0] < a[1] for a, b in itertools.combinations(calls, 2))  # some calls overlapped

    monkeypatch.setattr(vllm_decoding, "ENGINES_AT_ONCE", False)
    calls.clear()
    assert ensemble.generate(PROMPTS * 4, **settings).texts == at_once
    assert not any(a[0] < b[1] and b[0] < a[1] for a, b in itertools.combinations(calls, 2))


def test_each_members_engine_gets_its_own_share_of_the_cores(engines):
    assert engine_cores(0, 2, {1, 0}) == [0] and engine_cores(1, 2, {0, 1}) == [1]
    assert [engine_cores(i, 3, range(8)) for i in range(3)] == [[0, 1], [2, 3], [4, 5]]
    assert [engine_cores(i, 3, [4, 5]) for i in range(3)] == [[4], [5], [4]]  # fewer cores than members
    assert CPU_BINDING not in os.environ  # set only while each engine started (conftest's engines)


def test_a_stop_string_ends_the_text_whichever_member_wrote_it(engines):
    ensemble = on_vllm(engines, PAIRS["different"], "mixture")
    prompts = PROMPTS * 8
    free = ensemble.generate(prompts, max_new_tokens=24, seed=8).texts
    stopped = ensemble.generate(prompts, max_new_tokens=24, seed=8, until=["e"]).texts
    assert sum("e" in text for text in free) >= 4  # the stop would have been written
    assert not any("e" in text for text in stopped)
    # Cut where the stop was written, not ended early: the texts without it run on. (Not compared text for text:
    # vLLM's numerics depend on the batch, and rows that stop leave the batch.)
    assert sum(map(len, stopped)) < 0.8 * sum(map(len, free))
    assert max(len(text) for text in stopped) > 20


def test_strategies_vllm_cannot_run_exactly_are_refused_before_loading(vllm_models):
    members = [spec(vllm_models["bpe_a"], "a"), spec(vllm_models["bpe_b"], "b")]
    with pytest.raises(ConfigError, match="engine=vllm use one of single, mixture, averaging"):
        mixens.load_ensemble(members, "router", engine="vllm", policy="confidence")


def test_greedy_averaging_is_refused(engines):
    with pytest.raises(ConfigError, match="top_k > 0"):
        on_vllm(engines, PAIRS["shared"], "averaging").generate(PROMPTS, max_new_tokens=2, do_sample=False)


def run_app(vllm_models, tmp_path, *overrides: str, engine: str = "vllm") -> subprocess.CompletedProcess:
    added = [f"+models.{n}={{name:{n},path:'{vllm_models[n]}',weight:1.0}}" for n in ("bpe_a", "sp_c")]
    options = [f"vllm.{key}={value}" for key, value in ENGINE.items()]
    args = [sys.executable, "-m", "mixens", "models=[]", *added, "device=cpu", f"engine={engine}", *options,
            f"data.hub_mirror={HUB_FIXTURE}", "logger=none", f"hydra.run.dir={tmp_path}/{engine}", *overrides]  # fmt: skip
    return subprocess.run(args, cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=600)


class Request:
    """What lm-eval's loglikelihood methods read of a request."""

    def __init__(self, *args):
        self.args = args


LIKELIHOOD_REQUESTS = [
    ("Question: what is 12 + 30?\nAnswer:", " 42"),
    ("Question: what is 12 + 30?\nAnswer:", " forty two"),
    ("The capital of France is", " Paris, of course."),
    ("", "Hi"),  # no context: scored after the member's prefix token, as on transformers
]


@pytest.mark.parametrize(("strategy", "names"), [("single", ["sp_c"]), ("mixture", PAIRS["shared"]), ("averaging", PAIRS["different"])])  # fmt: skip
def test_likelihood_on_vllm_is_the_likelihood_on_transformers(vllm_models, engines, strategy, names):
    from mixens.harness import EnsembleLM

    weights = list(WEIGHTS[: len(names)])
    members = [spec(vllm_models[n], n, w) for n, w in zip(names, weights)]
    here = EnsembleLM(ensemble=mixens.load_ensemble(members, strategy))
    there = EnsembleLM(ensemble=on_vllm(engines, names, strategy, weights))
    requests = [Request(*pair) for pair in LIKELIHOOD_REQUESTS]
    expected, got = here.loglikelihood(requests, disable_tqdm=True), there.loglikelihood(requests, disable_tqdm=True)
    assert [logp for logp, _ in got] == pytest.approx([logp for logp, _ in expected], abs=1e-4)
    assert [greedy for _, greedy in got] == [greedy for _, greedy in expected]
    rolling = [Request(" ".join(PROMPTS * 20))]
    got_rolling = there.loglikelihood_rolling(rolling, disable_tqdm=True)
    assert got_rolling == pytest.approx(here.loglikelihood_rolling(rolling, disable_tqdm=True), abs=1e-3)


def test_a_likelihood_task_through_the_hydra_app_on_vllm_scores_as_on_transformers(vllm_models, tmp_path):
    task = ("benchmark.name=e2e", "benchmark.tasks=[arc_challenge]", "benchmark.limit=6", "ensemble=averaging")
    metrics = {}
    for engine in ("transformers", "vllm"):
        done = run_app(vllm_models, tmp_path, *task, engine=engine)
        assert done.returncode == 0, done.stderr[-4000:]
        metrics[engine] = json.loads((tmp_path / engine / "results.json").read_text())["metrics"]["arc_challenge"]
    assert metrics["vllm"] == pytest.approx(metrics["transformers"], abs=1e-9)


def test_lm_eval_task_through_the_hydra_app_on_vllm(vllm_models, tmp_path):
    done = run_app(vllm_models, tmp_path, "ensemble=mixture", "benchmark.name=e2e", "benchmark.tasks=[gsm8k]",
                   "benchmark.limit=3", "benchmark.max_gen_toks=16")  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert "starting a vLLM engine" in done.stderr + done.stdout
    results = json.loads((tmp_path / "vllm" / "results.json").read_text())
    assert results["config"]["engine"] == "vllm"
    score = results["metrics"]["gsm8k"]["exact_match,strict-match"]
    assert 0.0 <= score <= 1.0
    assert results["speed"]["tokens_generated"] > 0


def test_lm_eval_model_args_choose_the_engine(vllm_models, engines):
    from lm_eval.api.instance import Instance

    from mixens.harness import EnsembleLM

    lm = EnsembleLM.create_from_arg_string(
        f"models={vllm_models['bpe_a']},names=bpe_a,strategy=single,engine=vllm,"
        + ",".join(f"vllm_{key}={value}" for key, value in ENGINE.items())
    )
    assert lm.ensemble.engine == "vllm"
    requests = [Instance("generate_until", {}, (p, {"max_gen_toks": 10, "do_sample": False}), i) for i, p in enumerate(PROMPTS)]  # fmt: skip
    expected = on_vllm(engines, ["bpe_a"], "single").generate(PROMPTS, max_new_tokens=10, do_sample=False).texts
    assert lm.generate_until(requests, disable_tqdm=True) == expected
