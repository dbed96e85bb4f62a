"""The three users of the decoding loop (generation, teacher forcing, router training) give exactly what
they gave when tests/data/decoding_record.json was recorded: texts, counted work, per-token probabilities,
router training steps. A change to the loop's shape must not change what it computes.

Record again (only when a change of results is intended, and say why in the commit):
    MIXENS_RECORD_DECODING=1 python -m pytest tests/test_decoding_record.py
"""

from __future__ import annotations

import json
import os

import pytest
from conftest import REPO, spec

import mixens
from mixens.teacher_forcing import teacher_force
from mixens.train_router import collect_steps, train_router

RECORD = REPO / "tests" / "data" / "decoding_record.json"
PROMPTS = ["The capital of France is", "Question: what is 12 + 30?\nAnswer:", "Hi", "def add(a, b):"]
CALIBRATION = [
    ("Question: what is 12 + 30?\nAnswer:", " 42. The capital of Italy is Rome."),
    ("The capital of France is", " Paris. The capital of Italy is Rome."),
    ("def add(a, b):", "\n    return a + b\n\nprint(add(2, 3))"),
    ("In the beginning the model", " reads the prompt, then it writes one token at a time."),
]
STRATEGIES = {
    "mixture": ("mixture", {}),
    "mixture_per_sequence": ("mixture", {"draw": "sequence"}),
    "averaging": ("averaging", {}),
    "averaging_topk_union": ("averaging_topk_union", {}),
    "router_confidence": ("router", {"policy": "confidence", "threshold": 0.4}),
}
SAMPLED = dict(max_new_tokens=12, do_sample=True, temperature=0.9, top_k=5, seed=5, batch_size=2, until=["\n\n"])
GREEDY = dict(max_new_tokens=12, do_sample=False, seed=0, batch_size=3)


def counted(stats) -> dict:
    speed = stats.as_dict()
    return {k: speed[k] for k in ("sequences", "steps", "tokens_generated", "forward_passes", "member_runs_per_token")}


def current_outputs(tiny_models) -> dict:
    pools = {
        "shared": [spec(tiny_models["bpe_a"], "a", 0.6), spec(tiny_models["bpe_b"], "b", 0.4)],
        "different": [spec(tiny_models["bpe_a"], "a", 0.5), spec(tiny_models["sp_c"], "c", 0.5)],
    }
    out: dict = {}
    for pool, models in pools.items():
        base = mixens.load_ensemble(models, "averaging", batch_size=2)
        for label, (strategy, options) in STRATEGIES.items():
            ensemble = base.with_strategy(strategy, **options)
            sampled = ensemble.generate(PROMPTS, **SAMPLED)
            greedy = ensemble.generate(PROMPTS, **GREEDY)
            out[f"generate/{pool}/{label}"] = {
                "sampled": sampled.texts,
                "sampled_work": counted(sampled.stats),
                "greedy": greedy.texts,
                "greedy_work": counted(greedy.stats),
            }
        prompts, references = zip(*CALIBRATION)
        for label in ("mixture", "averaging"):
            scores = teacher_force(base.with_strategy(label), prompts, references, batch_size=3, seed=2)
            out[f"teacher_forcing/{pool}/{label}"] = {
                "reference_probs": scores.reference_probs,
                "greedy_hits": scores.greedy_hits,
                "work": counted(scores.stats),
            }
    shared = mixens.load_ensemble(pools["shared"], "averaging", batch_size=3)
    features, labels, documents = collect_steps(shared, 1, CALIBRATION, batch_size=3, seed=0)
    router = train_router(shared, CALIBRATION, designated=1, epochs=50, batch_size=3, seed=0)
    out["router_training"] = {
        "feature_shape": list(features.shape),
        "feature_sums": features.double().sum(dim=0).tolist(),
        "labels": labels.tolist(),
        "documents": documents.tolist(),
        "info": router.info,
    }
    return out


def assert_same(now, then, where: str = "") -> None:
    if isinstance(then, dict):
        assert sorted(now) == sorted(then), where
        for key in then:
            assert_same(now[key], then[key], f"{where}/{key}")
    elif isinstance(then, list):
        assert len(now) == len(then), where
        for i, (a, b) in enumerate(zip(now, then)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(then, float):
        # float32 sums are ordered differently by different CPUs' kernels (AVX2, AVX-512): the last digits move
        assert now == pytest.approx(then, rel=1e-4, abs=1e-7), where
    else:
        assert now == then, where


def test_decoding_users_give_what_they_gave_when_recorded(tiny_models):
    now = json.loads(json.dumps(current_outputs(tiny_models)))  # tuples as lists, as in the file
    if os.environ.get("MIXENS_RECORD_DECODING") == "1":
        RECORD.write_text(json.dumps(now, indent=1) + "\n")
    recorded = json.loads(RECORD.read_text())
    assert_same(now, recorded)
    # The record is not trivial: strategies and pools differ from each other.
    assert recorded["generate/shared/mixture"]["sampled"] != recorded["generate/shared/averaging"]["sampled"]
    assert len(set(recorded["router_training"]["labels"])) == 2
