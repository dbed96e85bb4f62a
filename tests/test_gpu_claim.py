"""One GPU per parallel job: the claims by lock file (the GPUs themselves are not needed to test them)."""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import replace

import pytest

from mixens.gpu_claim import claimed_gpu, on_claimed_gpu
from mixens.spec import ModelSpec


def test_jobs_claim_different_gpus_and_a_released_one_is_claimed_again(tmp_path):
    with claimed_gpu(2, tmp_path) as first, claimed_gpu(2, tmp_path) as second:
        assert {first, second} == {0, 1}
        with pytest.raises(TimeoutError, match="no GPU of 2 became free"), claimed_gpu(2, tmp_path, wait=0):
            pass
    with claimed_gpu(2, tmp_path) as again:
        assert again == 0


def _hold(folder, started, results):
    with claimed_gpu(2, folder) as index:
        results.put(index)
        started.wait()  # hold it until the other process has claimed its own
        time.sleep(0.2)


def test_two_processes_get_two_gpus(tmp_path):
    started, results = multiprocessing.Event(), multiprocessing.Queue()
    jobs = [multiprocessing.Process(target=_hold, args=(tmp_path, started, results)) for _ in range(2)]
    for job in jobs:
        job.start()
    claimed = {results.get(timeout=30), results.get(timeout=30)}
    started.set()
    for job in jobs:
        job.join(timeout=30)
    assert claimed == {0, 1}


def test_only_members_on_the_default_gpu_move_to_the_claimed_one():
    specs = [
        ModelSpec("a", "x", device="auto"),
        ModelSpec("b", "y", device="cuda:3"),
        ModelSpec("c", "z", device="cuda"),
    ]
    specs.append(replace(ModelSpec("d", "w"), device_map="auto"))
    assert [s.device for s in on_claimed_gpu(specs, 1)] == ["cuda:1", "cuda:3", "cuda:1", "auto"]
