"""The speed study end to end at a tiny size: files written, figures consistent. No timing is asserted."""

from __future__ import annotations

import json

import pytest
import torch

from mixens.bench.__main__ import main
from mixens.bench.cost_model import cost_at, expected_catchup_cost, ideal_averaging_step, ideal_mixture_step
from mixens.decoding import TIED_AT_THE_EDGE


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert main(["--preset", "tiny", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_files_are_written(study):
    out, _ = study
    assert (out / "speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "results.md").read_text()
    assert "Machine:" in text and "ME/averaging speedup" in text and "k=4" in text


def test_forward_passes_and_catchup_lengths(study):
    _, results = study
    rows = results["analysis"]["rows"]
    variants = {row["variant"] for row in rows}
    assert {"single", "averaging", "mixture", "hf_generate", "mixture@0.3/0.7", "mixture@0.7/0.3"} <= variants
    members = {"equal-2": 2, "equal-3": 3, "unequal": 2}
    for row in rows:
        kind = row["variant"].split("@")[0]
        if kind == "averaging":
            assert row["forward_passes_per_step"] == members[row["scenario"]]
        else:  # single, transformers' generate and mixture all run one model per step
            assert row["forward_passes_per_step"] == 1
        if kind == "mixture":
            # With two or three members drawn at random over 8 steps, some draw follows a miss.
            assert 1.0 <= row["mean_catchup_length"] <= results["study"]["config"]["new_tokens"]
        else:
            assert row["mean_catchup_length"] == 1.0
    mixtures = [row["mean_catchup_length"] for row in rows if row["variant"].startswith("mixture")]
    assert max(mixtures) > 1.0


def test_ratios_follow_from_the_raw_timings(study):
    _, results = study
    runs = {(r["scenario"], r["batch"], r["variant"]): r for r in results["study"]["runs"]}

    def step(run):
        return run["decode_seconds"] / (run["steps"] - run["prefill_steps"])

    ratios = results["analysis"]["ratios"]
    assert len(ratios) == 2 * (2 + 2)  # two batch sizes x (equal-2, equal-3, two weights of the pair)
    for ratio in ratios:
        mixture = runs[(ratio["scenario"], ratio["batch"], ratio["variant"])]
        averaging = runs[(ratio["scenario"], ratio["batch"], "averaging")]
        assert ratio["mixture_vs_averaging_speedup"] == pytest.approx(step(averaging) / step(mixture))
        costs = results["study"]["catchup_seconds"]
        shapes = results["study"]["member_shapes"]
        c = [costs[shapes[name]][str(ratio["batch"])] for name in mixture["members"]]
        ideal = ideal_averaging_step(c) / ideal_mixture_step(c, mixture["weights"])
        assert ratio["ideal_speedup"] == pytest.approx(ideal)
    for run in runs.values():
        assert 0 <= run["prefill_seconds"] <= run["seconds"]
        assert run["tokens"] == run["steps"] * run["batch"]  # nothing ends early: no end-of-sequence ids


def test_a_noisy_falling_cost_curve_never_makes_a_negative_ideal():
    falling = [1.0, 0.9, 0.7, 0.5]  # noise on a tiny model: longer catch-ups measured as cheaper
    assert cost_at(falling, 100) == pytest.approx(0.5)
    assert ideal_mixture_step([falling] * 2, [0.05, 0.95]) > 0


def test_cost_model_limits():
    flat = [1.0] * 16  # a catch-up that costs one step whatever its length (a GPU's ideal)
    assert expected_catchup_cost(flat, 0.3) == pytest.approx(1.0)
    assert ideal_averaging_step([flat] * 3) / ideal_mixture_step([flat] * 3, [1 / 3] * 3) == pytest.approx(3.0)
    linear = [float(k) for k in range(1, 17)]  # a catch-up that costs k steps: no gain at all
    assert expected_catchup_cost(linear, 0.25) == pytest.approx(4.0, rel=1e-4)
    assert ideal_mixture_step([linear] * 2, [0.5, 0.5]) == pytest.approx(ideal_averaging_step([linear] * 2), rel=1e-4)


def test_the_ray_overhead_study_runs_the_same_member_steps_both_ways():
    """A smoke test (seconds): the numbers are read, not judged; the step itself is the same code both ways."""
    from mixens.bench.ray_overhead import Stepper, measure

    threads = torch.get_num_threads()
    local, again = Stepper("tiny", batch=2), Stepper("tiny", batch=2)
    assert local.start(4) == again.start(4) and local.step([[1], [2]]) == again.step([[1], [2]])  # same seed, same ids
    found = measure("tiny", batch=2, steps=3)
    assert torch.get_num_threads() == threads  # this process's threads are left as they were
    assert set(found) >= {"in_process_ms", "ray_actor_ms", "overhead_ms", "empty_call_ms"}
    assert found["overhead_ms"] == found["ray_actor_ms"] - found["in_process_ms"]
    assert min(found["in_process_ms"], found["ray_actor_ms"], found["empty_call_ms"]) > 0


def test_the_ray_pool_study_compares_the_same_generation_both_ways(tiny_models):
    from mixens.bench.ray_overhead import measure_pool

    threads = torch.get_num_threads()
    found = measure_pool([tiny_models["bpe_a"], tiny_models["sp_c"]], "mixture", batch=4, tokens=8)
    assert torch.get_num_threads() == threads
    assert found["same_texts"] and found["same_work"]
    # under mixture the drawn member draws each token in its actor: one id back per token, no logits
    assert found["ids_sent_per_token"] > 0 and found["logit_values_returned_per_token"] == 0
    assert found["token_ids_returned_per_token"] == 1
    found = measure_pool([tiny_models["bpe_a"], tiny_models["sp_c"]], "averaging", batch=4, tokens=8)
    assert found["same_texts"] and found["same_work"] and found["token_ids_returned_per_token"] == 0
    # the study samples with top-k 20: each member sends back its 20 largest logits and the margin for ties
    assert found["logit_values_returned_per_token"] == 2 * (20 + TIED_AT_THE_EDGE)
    assert min(found["ms_per_token_in_process"], found["ms_per_token_ray_actors"]) > 0
