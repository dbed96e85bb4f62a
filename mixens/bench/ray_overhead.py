"""What a member costs per decoding step when it runs as a Ray actor instead of in the decoding process.

The design for members on other nodes: the drawn member samples where it runs, so a step sends token ids
and gets token ids back. This measures exactly that step both ways on one machine, one member of a given
shape (random weights, mixens.bench.members), a batch of rows decoding greedily with a key/value cache:

    python -m mixens.bench.ray_overhead --size llama-20m --batch 4 --steps 64

It prints milliseconds per step in process, through a Ray actor, and for an empty actor call (the floor).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mixens.bench.members import SHAPES, random_model


class Stepper:
    """One member decoding a batch greedily, one token per call, with its cache kept between calls."""

    def __init__(self, size: str, batch: int, threads: int | None = None, seed: int = 0):
        if threads is not None:  # in an actor's own process
            torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.model = random_model(SHAPES[size], torch.device("cpu"), torch.float32, seed)
        self.batch, self.cache, self.seed = batch, None, seed

    def start(self, prompt_tokens: int) -> list[int]:
        self.cache = None
        prompts = torch.Generator().manual_seed(self.seed)
        ids = torch.randint(1, self.model.config.vocab_size, (self.batch, prompt_tokens), generator=prompts)
        return self.step(ids.tolist())

    def step(self, ids: list[list[int]]) -> list[int]:
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor(ids), past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return out.logits[:, -1].argmax(-1).tolist()

    def nothing(self) -> None:
        return None


def per_step_ms(step, tokens: list[int], steps: int) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        tokens = step([[t] for t in tokens])
    return 1000 * (time.perf_counter() - started) / steps


def measure(size: str, batch: int, steps: int, threads: int = 1, prompt_tokens: int = 16) -> dict:
    """ms per step in process, through a Ray actor on this machine, and an empty actor call."""
    import ray

    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # as many as the actor gets, for this measurement only
    try:
        local = Stepper(size, batch)
        in_process = per_step_ms(local.step, local.start(prompt_tokens), steps)
    finally:
        torch.set_num_threads(before)
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1)(Stepper).remote(size, batch, threads)
        first = ray.get(remote.start.remote(prompt_tokens))
        as_actor = per_step_ms(lambda ids: ray.get(remote.step.remote(ids)), first, steps)
        started = time.perf_counter()
        for _ in range(steps):
            ray.get(remote.nothing.remote())
        empty_call = 1000 * (time.perf_counter() - started) / steps
    finally:
        ray.shutdown()
    return {"size": size, "batch": batch, "steps": steps, "threads": threads, "in_process_ms": in_process, "ray_actor_ms": as_actor,
            "overhead_ms": as_actor - in_process, "empty_call_ms": empty_call}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m mixens.bench.ray_overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="llama-20m", choices=sorted(SHAPES))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, in process and in the actor")
    options = parser.parse_args()
    print(json.dumps(measure(options.size, options.batch, options.steps, options.threads), indent=2))


if __name__ == "__main__":
    main()
