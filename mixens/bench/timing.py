"""Wall-clock timing that waits for the accelerator, so a GPU's queued work is counted where it runs."""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def stopwatch(device: torch.device):
    """`with stopwatch(dev) as elapsed: ...` then `elapsed()` is the seconds the block took."""
    synchronize(device)
    started = time.perf_counter()
    box = {}
    yield lambda: box["seconds"]
    synchronize(device)
    box["seconds"] = time.perf_counter() - started


def machine_name(device: torch.device) -> str:
    """What the figures were taken on, in words."""
    import platform

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} torch threads"
