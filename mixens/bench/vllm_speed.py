"""Mixture, averaging and each member alone on vLLM engines: tokens per second on the same prompts, in one process.

    .venv-vllm/bin/python -m mixens.bench.vllm_speed --pool packaged:smollm2-135m-instruct packaged:gemma-3-270m

Each member's engine is started once; every strategy then samples the same prompts (temperature 1, top-k 20,
so that averaging is exact on vLLM) with the same seed, first a short warm-up. Besides wall time it reports the
process's CPU time and the work counted by the decoder (requests, engine calls, tokens re-read), and the two
yardsticks of issue targets: the ideal mixture speed from the members' own speeds (a token of member i costs
what it costs that member alone, 1 / sum_i(lambda_i / v_i)), and the time of n single-member decodes. Mixture
and averaging also run with the members' engines called one at a time, right after, to show what calling them
at once gains.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mixens.bench.ray_overhead import PROMPTS


def timed(ensemble, prompts: list[str], tokens: int, batch: int) -> dict:
    settings = dict(do_sample=True, temperature=1.0, top_k=20, seed=0, batch_size=batch)
    ensemble.generate(prompts[:2], max_new_tokens=4, **settings)  # first-call costs out of the timing
    cpu, wall = time.process_time(), time.perf_counter()
    result = ensemble.generate(prompts, max_new_tokens=tokens, **settings)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stats = result.stats
    return {
        "tokens": stats.tokens_generated,
        "wall_s": wall,
        "tokens_per_s": stats.tokens_generated / wall,
        "driver_cpu_s": cpu,
        "engine_calls": stats.forward_passes,
        "requests": stats.row_passes,
        "catchup_tokens": sum(m.catchup_tokens for m in stats.members.values()),
        "run_tokens_dropped": sum(m.cropped_tokens for m in stats.members.values()),
    }


def measure(paths: list[str], weights: list[float], batch: int, tokens: int, engine: dict) -> dict:
    import mixens
    from mixens import vllm_decoding
    from mixens.ensemble import Ensemble
    from mixens.strategies import build_strategy

    specs = [{"path": p, "device": "cpu", "weight": w} for p, w in zip(paths, weights)]
    pool = mixens.load_ensemble(specs, "mixture", engine="vllm", vllm=engine)
    names = [m.name for m in pool.members]
    prompts = (PROMPTS * batch)[:batch]
    runs = {}
    for name, member in zip(names, pool.members):
        runs[f"single:{name}"] = timed(Ensemble([member], build_strategy("single", [name], {})), prompts, tokens, batch)
    for strategy in ("mixture", "averaging"):
        runs[strategy] = timed(pool.with_strategy(strategy), prompts, tokens, batch)
        vllm_decoding.ENGINES_AT_ONCE = False  # the same, with the members' engines called one at a time
        try:
            runs[f"{strategy}, engines in turn"] = timed(pool.with_strategy(strategy), prompts, tokens, batch)
        finally:
            vllm_decoding.ENGINES_AT_ONCE = True
    alone = [runs[f"single:{name}"] for name in names]
    ideal_mixture = 1 / sum(w / run["tokens_per_s"] for w, run in zip(pool.weights, alone))
    n_singles_s_per_token = sum(1 / run["tokens_per_s"] for run in alone)
    return {
        "pool": paths, "weights": list(pool.weights), "batch": batch, "new_tokens": tokens, "engine": engine,
        "runs": runs,
        "ideal_mixture_tokens_per_s": ideal_mixture,
        "mixture_over_ideal": runs["mixture"]["tokens_per_s"] / ideal_mixture,
        # averaging's time per token against the members' own, added up (n single decodes)
        "averaging_over_n_singles": 1 / runs["averaging"]["tokens_per_s"] / n_singles_s_per_token,
        "engines_at_once_over_in_turn": {
            s: runs[s]["tokens_per_s"] / runs[f"{s}, engines in turn"]["tokens_per_s"] for s in ("mixture", "averaging")
        },
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m mixens.bench.vllm_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", nargs="+", required=True, help="model paths (hub ids, folders, packaged:<name>)")
    parser.add_argument("--weights", type=float, nargs="+", help="one per member (default: equal)")
    parser.add_argument("--batch", type=int, default=32, help="prompts decoded together")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per prompt")
    parser.add_argument("--eager", action="store_true", help="vLLM without CUDA graphs or compilation")
    parser.add_argument("--kv-cache-gib", type=float, default=None, help="KV cache per member (CPU)")
    parser.add_argument("--out", default="vllm_speed.json", help="where the figures are written (vLLM logs to stdout)")
    options = parser.parse_args()
    weights = options.weights or [1.0] * len(options.pool)
    engine = {"enforce_eager": options.eager, "kv_cache_gib": options.kv_cache_gib}
    found = json.dumps(measure(options.pool, weights, options.batch, options.tokens, engine), indent=2)
    Path(options.out).write_text(found + "\n")
    print(found)


if __name__ == "__main__":
    main()
