"""What a member costs per decoding step when it runs as a Ray actor instead of in the decoding process.

Two measurements, each both ways on one machine, one torch thread per process:

    python -m mixens.bench.ray_overhead --size llama-20m --batch 4 --steps 64
    python -m mixens.bench.ray_overhead --pool packaged:smollm2-135m-instruct packaged:gemma-3-270m

The first is one member of a given shape (random weights, mixens.bench.members) decoding greedily with a
key/value cache, token ids in and out of the actor: the floor of any actor design, with an empty actor
call beside it. The second is a whole ensemble (mixens.ray_members: catch-up spans in; tokens drawn in the
actors, or the largest logits, out) against
the same members in process: the same seed and prompts, so the texts and the counted work must agree, and
what differs is time and what crossed to and from the actors.
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


PROMPTS = [
    "Question: A farmer has 12 cows and buys 7 more. How many cows does he have?\nAnswer:",
    "Write one sentence about the sea.",
    "Question: What is the capital of France?\nAnswer:",
    "def fibonacci(n):",
]


def measure_pool(paths: list[str], strategy: str, batch: int, tokens: int, threads: int = 1, top_k: int = 20) -> dict:
    """The same sampled generation with the members in process and in Ray actors: time, work, traffic."""
    import ray

    import mixens

    prompts = PROMPTS * max(1, batch // len(PROMPTS))
    settings = dict(max_new_tokens=tokens, do_sample=True, temperature=1.0, top_k=top_k, seed=0, batch_size=batch)
    runs = {}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # as many as each actor gets, for this measurement only
    ray.init(num_cpus=len(paths) + 1, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        for where in ("in_process", "ray_actors"):
            actor = {"ray_actor": {"num_cpus": 1}} if where == "ray_actors" else {}
            ensemble = mixens.load_ensemble([{"path": p, "device": "cpu", **actor} for p in paths], strategy)
            ensemble.generate(prompts[:1], **{**settings, "max_new_tokens": 2})  # first-call costs out of the timing
            traffic = [m.traffic for m in ensemble.members if where == "ray_actors"]
            warm_up = received(traffic)
            cpu, wall = time.process_time(), time.perf_counter()
            result = ensemble.generate(prompts, **settings)
            runs[where] = {"texts": result.texts, "members": result.stats.members,
                           "wall_s": time.perf_counter() - wall, "driver_cpu_s": time.process_time() - cpu,
                           "tokens": result.stats.tokens_generated,
                           "received": {k: v - warm_up[k] for k, v in received(traffic).items()}}  # fmt: skip
            del ensemble  # its actors free their CPUs for the next run
    finally:
        torch.set_num_threads(before)
        ray.shutdown()
    here, there = runs["in_process"], runs["ray_actors"]
    members = there["members"]
    return {
        "pool": paths, "strategy": strategy, "batch": batch, "new_tokens": tokens, "threads": threads, "top_k": top_k,
        "same_texts": here["texts"] == there["texts"],
        "same_work": here["members"] == members,
        "forward_passes": {name: s.forward_passes for name, s in members.items()},
        "ms_per_token_in_process": 1000 * here["wall_s"] / here["tokens"],
        "ms_per_token_ray_actors": 1000 * there["wall_s"] / there["tokens"],
        "driver_cpu_s": {"in_process": here["driver_cpu_s"], "ray_actors": there["driver_cpu_s"]},
        "ids_sent_per_token": sum(s.prompt_tokens + s.generated_tokens for s in members.values()) / there["tokens"],
        "logit_values_returned_per_token": there["received"]["logits"] / there["tokens"],
        "token_ids_returned_per_token": there["received"]["tokens"] / there["tokens"],
    }  # fmt: skip


def received(traffic: list) -> dict[str, int]:
    """What came back from the actors so far (mixens.ray_members.Traffic): logits, and tokens drawn there."""
    return {"logits": sum(t.logits_received for t in traffic), "tokens": sum(t.tokens_received for t in traffic)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m mixens.bench.ray_overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="llama-20m", choices=sorted(SHAPES))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, in process and in the actor")
    parser.add_argument("--pool", nargs="+", help="model paths: measure this ensemble instead of one random member")
    parser.add_argument("--strategy", default="mixture", help="with --pool: the strategy")
    parser.add_argument("--tokens", type=int, default=64, help="with --pool: new tokens per prompt")
    parser.add_argument("--top-k", type=int, default=20, help="with --pool: the sampling top-k (0: off)")
    options = parser.parse_args()
    if options.pool:
        found = measure_pool(
            options.pool, options.strategy, options.batch, options.tokens, options.threads, options.top_k
        )
    else:
        found = measure(options.size, options.batch, options.steps, options.threads)
    print(json.dumps(found, indent=2))


if __name__ == "__main__":
    main()
