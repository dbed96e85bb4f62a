"""Token routers: random is the mixture, the cascade's limits, per-row decisions in batches, the learned
router (training, saving, loading), validation, and runs through `python -m mixens`."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import HUB_FIXTURE, REPO, spec

import mixens
from mixens.ensemble import Ensemble
from mixens.errors import ConfigError
from mixens.router_model import TrainedRouter, load_router, save_router, train_classifier
from mixens.strategies import build_strategy
from mixens.teacher_forcing import teacher_force

PROMPTS = ["The capital of France is", "Question: what is 12 + 30?\nAnswer:", "Hi", "def add(a, b):"]
SAMPLED = dict(max_new_tokens=16, do_sample=True, temperature=0.9, seed=5, batch_size=4)
GREEDY = dict(max_new_tokens=16, do_sample=False, seed=0, batch_size=4)
CALIBRATION = [
    ("Question: what is 12 + 30?\nAnswer:", " 42. The capital of Italy is Rome."),
    ("The capital of France is", " Paris. The capital of Italy is Rome."),
    ("def add(a, b):", "\n    return a + b\n\nprint(add(2, 3))"),
    ("In the beginning the model", " reads the prompt, then it writes one token at a time."),
]


@pytest.fixture(scope="module")
def pairs(tiny_models):
    """Two ensembles (shared vocabulary; different tokenizers), loaded once; strategies are swapped in."""
    return {
        "shared": mixens.load_ensemble([spec(tiny_models["bpe_a"], "a", 0.5), spec(tiny_models["bpe_b"], "b", 0.5)]),
        "different": mixens.load_ensemble([spec(tiny_models["bpe_a"], "a", 0.5), spec(tiny_models["sp_c"], "c", 0.5)]),
    }


def with_strategy(ensemble: Ensemble, strategy: str, **options) -> Ensemble:
    return ensemble.with_strategy(strategy, **options)


def runs(result, member: str) -> int:
    return result.stats.members[member].row_passes


@pytest.mark.parametrize("vocab", ["shared", "different"])
@pytest.mark.parametrize("draw", ["batch", "sequence"])
def test_random_router_equals_mixture_for_the_same_seed(pairs, vocab, draw):
    ensemble = pairs[vocab]
    mixture = with_strategy(ensemble, "mixture", draw=draw).generate(PROMPTS, **SAMPLED)
    random = with_strategy(ensemble, "router", policy="random", draw=draw).generate(PROMPTS, **SAMPLED)
    other_seed = with_strategy(ensemble, "router", policy="random", draw=draw).generate(
        PROMPTS, **{**SAMPLED, "seed": 6}
    )
    assert random.texts == mixture.texts
    assert random.stats.as_dict()["members"] == mixture.stats.as_dict()["members"]
    assert other_seed.texts != random.texts


@pytest.mark.parametrize("vocab", ["shared", "different"])
def test_confidence_threshold_zero_is_the_designated_member_alone(pairs, vocab):
    ensemble = pairs[vocab]
    other = ensemble.members[1].name
    alone = with_strategy(ensemble, "single", member=other).generate(PROMPTS, **SAMPLED)
    cascade = with_strategy(ensemble, "router", policy="confidence", designated=other, threshold=0.0)
    got = cascade.generate(PROMPTS, **SAMPLED)
    assert got.texts == alone.texts
    assert runs(got, "a") == 0  # the other member never ran
    assert got.stats.as_dict()["member_runs_per_token"] == 1.0


@pytest.mark.parametrize("vocab", ["shared", "different"])
def test_confidence_threshold_one_always_hands_over(pairs, vocab):
    ensemble = pairs[vocab]
    second = ensemble.members[1].name
    cascade = with_strategy(ensemble, "router", policy="confidence", threshold=1.0, handover=second)
    got = cascade.generate(PROMPTS, **SAMPLED)
    alone = with_strategy(ensemble, "single", member=second).generate(PROMPTS, **SAMPLED)
    assert got.texts == alone.texts  # every token written by the handover member
    assert runs(got, "a") == runs(got, second) == got.stats.tokens_generated  # both ran at every step
    assert got.stats.as_dict()["member_runs_per_token"] == 2.0


def test_confidence_handing_over_to_the_average_is_averaging(pairs):
    ensemble = pairs["different"]
    averaging = with_strategy(ensemble, "averaging").generate(PROMPTS, **GREEDY)
    cascade = with_strategy(ensemble, "router", policy="confidence", threshold=1.0, handover="average")
    assert cascade.generate(PROMPTS, **GREEDY).texts == averaging.texts


@pytest.mark.parametrize("vocab", ["shared", "different"])
@pytest.mark.parametrize("criterion,threshold", [("top_prob", 0.6), ("entropy", 1.0)])
def test_per_row_decisions_in_a_batch_equal_one_row_at_a_time(pairs, vocab, criterion, threshold):
    """Rows hand over at different steps, so members run for some rows only and catch up lazily."""
    cascade = with_strategy(pairs[vocab], "router", policy="confidence", threshold=threshold, criterion=criterion)
    batched = cascade.generate(PROMPTS, **GREEDY)
    singly = [cascade.generate([p], **GREEDY).texts[0] for p in PROMPTS]
    assert batched.texts == singly
    second = pairs[vocab].members[1].name
    assert 0 < runs(batched, second) < batched.stats.tokens_generated  # handed over sometimes, not always
    assert batched.stats.members[second].forward_passes < batched.stats.steps + 1


def test_learned_classifier_routes_synthetic_steps(tmp_path):
    """The better member is a linear function of the features: held-out decisions > 90% right."""
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(1200, 18, generator=gen)
    direction = torch.randn(18, generator=gen)
    labels = (features @ direction + 0.1 * torch.randn(1200, generator=gen) > 0).long()
    classifier = train_classifier(features[:1000], labels[:1000], 2, seed=0)
    held_out = classifier.member_probs(features[1000:]).argmax(dim=1)
    assert (held_out == labels[1000:]).float().mean() > 0.9
    # a control: the same classifier does no better than chance on shuffled labels
    shuffled = labels[1000:][torch.randperm(200, generator=gen)]
    assert (held_out == shuffled).float().mean() < 0.65

    mlp = train_classifier(features[:1000], labels[:1000], 2, hidden_units=16, seed=0)
    assert (mlp.member_probs(features[1000:]).argmax(dim=1) == labels[1000:]).float().mean() > 0.9

    path = save_router(tmp_path / "r.pt", TrainedRouter(mlp, ["a", "b"], "a", {"note": 1}))
    loaded = load_router(path)
    assert torch.equal(loaded.classifier.member_probs(features), mlp.member_probs(features))
    assert (loaded.members, loaded.designated, loaded.info) == (["a", "b"], "a", {"note": 1})


@pytest.fixture(scope="module")
def trained_router(pairs, tmp_path_factory):
    """Trained through the command on the tiny shared-vocabulary pair."""
    from mixens.train_router import main

    folder = tmp_path_factory.mktemp("router")
    data = folder / "calibration.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "reference": r}) + "\n" for p, r in CALIBRATION))
    models = [f"--model={m.name}={m.spec.path}" for m in pairs["shared"].members]
    info = main([*models, f"--data={data}", "--device=cpu", "--epochs=200", f"--out={folder / 'router.pt'}"])
    assert info["train_steps"] > 0 and info["held_out_steps"] > 0
    return folder / "router.pt"


def test_learned_router_runs_reads_hidden_states_and_keeps_its_decisions(pairs, trained_router):
    ensemble = pairs["shared"]
    learned = with_strategy(ensemble, "router", policy="learned", router_path=str(trained_router))
    assert learned.strategy.wants_hidden(0) and not learned.strategy.wants_hidden(1)
    first = learned.generate(PROMPTS, **GREEDY)
    reloaded = with_strategy(ensemble, "router", policy="learned", router_path=str(trained_router))
    assert reloaded.generate(PROMPTS, **GREEDY).texts == first.texts
    never = with_strategy(ensemble, "router", policy="learned", router_path=str(trained_router), threshold=0.0)
    always = with_strategy(ensemble, "router", policy="learned", router_path=str(trained_router), threshold=1.0)
    assert (
        never.generate(PROMPTS, **GREEDY).texts == with_strategy(ensemble, "single").generate(PROMPTS, **GREEDY).texts
    )
    assert always.generate(PROMPTS, **GREEDY).stats.as_dict()["member_runs_per_token"] == 2.0


def test_a_router_file_is_refused_for_other_or_reordered_members(trained_router):
    for names in (["b", "a"], ["a", "z"]):
        with pytest.raises(ConfigError, match=r"trained for the members \['a', 'b'\] in that order"):
            build_strategy("router", names, {"policy": "learned", "router_path": str(trained_router)})


def test_learned_router_refuses_a_member_of_another_size(pairs, trained_router):
    config = copy.deepcopy(pairs["shared"].members[0].model.config)
    config.hidden_size = 32
    other_size = SimpleNamespace(name="a", weight=0.5, model=SimpleNamespace(config=config))
    router = build_strategy("router", ["a", "b"], {"policy": "learned", "router_path": str(trained_router)})
    router.check_members(pairs["shared"].members, (0.5, 0.5))  # the members it was trained on pass
    with pytest.raises(ConfigError, match="hidden size 64 .* has 32"):
        router.check_members([other_size, pairs["shared"].members[1]], (0.5, 0.5))


def test_teacher_forcing_counts_members_per_token(pairs):
    ensemble = pairs["shared"]
    prompts, refs = zip(*CALIBRATION)
    single = teacher_force(with_strategy(ensemble, "single"), prompts, refs, batch_size=4).summary()
    averaging = teacher_force(with_strategy(ensemble, "averaging"), prompts, refs, batch_size=4).summary()
    assert single["member_runs_per_token"] == 1.0 and averaging["member_runs_per_token"] == 2.0
    assert single["tokens"] == averaging["tokens"] > 20
    assert 0 < single["reference_prob"] < 1 and 0 <= averaging["greedy_accuracy"] <= 1


@pytest.mark.parametrize(
    "options,message",
    [
        ({"policy": "oracle"}, "policy 'oracle' is unknown"),
        ({"policy": "learned", "router_path": "/no/such/router.pt"}, "does not exist"),
        ({"policy": "learned"}, "router_path is empty"),
        ({"designated": "z"}, "designated 'z' is not a selected model"),
        ({"threshold": 1.5}, "threshold 1.5 is out of range"),
        ({"threshold": -0.1, "criterion": "entropy"}, "out of range for criterion entropy"),
        ({"handover": "a"}, "another member than the designated"),
        ({"criterion": "margin"}, "criterion 'margin' is unknown"),
    ],
)
def test_bad_router_settings_are_one_clear_error_before_loading(tiny_models, options, message):
    with pytest.raises(ConfigError, match=message):
        mixens.load_ensemble([spec(tiny_models["bpe_a"], "a"), spec(tiny_models["bpe_b"], "b")], "router", **options)


def test_routers_run_through_the_cli_on_an_lm_eval_task(tiny_models, trained_router, tmp_path):
    added = [
        f"+models.{n}={{name:{n},path:'{tiny_models[p]}',weight:1.0}}" for n, p in (("a", "bpe_a"), ("b", "bpe_b"))
    ]
    args = [sys.executable, "-m", "mixens", "-m", "models=[]", *added, "device=cpu", "batch_size=2"]
    args += [
        "ensemble=router",
        "ensemble.options.policy=random,confidence,learned",
        f"ensemble.options.router_path={trained_router}",
    ]
    args += ["benchmark=gsm8k_paper", "benchmark.limit=2", "benchmark.max_gen_toks=6", f"hydra.sweep.dir={tmp_path}"]
    env = {**os.environ, "MIXENS_HUB_MIRROR": str(HUB_FIXTURE)}
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/results.json"))]
    assert sorted(r["config"]["ensemble"]["options"]["policy"] for r in records) == ["confidence", "learned", "random"]
    for record in records:
        assert "exact_match,extract" in record["metrics"]["gsm8k_paper"]
        assert record["speed"]["tokens_generated"] > 0 and record["speed"]["member_runs_per_token"] >= 1.0


def test_a_relative_router_path_works_with_a_data_mirror_set(tiny_models, trained_router, tmp_path):
    """The README's learned-router example, run from the user's folder with relative paths."""
    (tmp_path / "routers").mkdir()
    shutil.copyfile(trained_router, tmp_path / "routers" / "pair.pt")
    added = [
        f"+models.{n}={{name:{n},path:'{tiny_models[p]}',weight:1.0}}" for n, p in (("a", "bpe_a"), ("b", "bpe_b"))
    ]
    args = [sys.executable, "-m", "mixens", "models=[]", *added, "device=cpu", "ensemble=router_learned",
            "ensemble.options.router_path=routers/pair.pt", "benchmark=gsm8k_paper", "benchmark.limit=1",
            "benchmark.max_gen_toks=3", f"data.hub_mirror={HUB_FIXTURE}", "logger=none", f"hydra.run.dir={tmp_path}/run"]  # fmt: skip
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["config"]["ensemble"]["options"]["policy"] == "learned" and record["speed"]["tokens_generated"] > 0
    wrong = [a.replace("routers/pair.pt", "routers/other.pt") for a in args]
    missing = subprocess.run(wrong, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert missing.returncode == 2 and "routers/other.pt' does not exist" in missing.stderr
    assert "Loading weights" not in missing.stderr
