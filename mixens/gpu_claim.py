"""One GPU per job when a sweep runs jobs side by side (hydra/launcher=joblib): each job claims a GPU that no
other job of this machine holds, by a lock file per GPU, for as long as it runs. Without it every worker would
put its members on cuda:0."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


@contextlib.contextmanager
def claimed_gpu(count: int, folder: Path | None = None, wait: float = 3600.0) -> Iterator[int]:
    """The index of a GPU this process holds until the block ends; waits (polling) while all `count` are held."""
    folder = Path(folder or Path(tempfile.gettempdir()) / f"mixens-gpus-{os.getuid()}")
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait
    while True:
        for index in range(count):
            handle = open(folder / f"cuda{index}.lock", "w")  # noqa: SIM115  held open as the lock itself
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield index
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no GPU of {count} became free in {wait:.0f} s")
        time.sleep(1.0)


def on_claimed_gpu(specs: list, index: int) -> list:
    """The members that would go to the default GPU ('auto' or 'cuda'), on GPU `index` instead."""
    return [dataclasses.replace(s, device=f"cuda:{index}") if s.device in ("auto", "cuda") and
            s.device_map is None and s.ray_actor is None else s for s in specs]  # fmt: skip


@contextlib.contextmanager
def one_gpu_per_parallel_job(specs: list, in_parallel_worker: bool) -> Iterator[list]:
    """`specs` placed on a GPU of their own when this job runs beside others and there are several GPUs."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not in_parallel_worker or count < 2 or not any(s.device in ("auto", "cuda") for s in specs):
        yield specs
        return
    with claimed_gpu(count) as index:
        log.info("this job runs on cuda:%d (one GPU per parallel job)", index)
        yield on_claimed_gpu(specs, index)
