"""Running the study: build the members once, measure c(k), then time every strategy interleaved.

Batch size by batch size: c(k) is measured, every scenario (a group of members and its weights) is timed,
c(k) is measured again. Within a scenario the strategies take turns, in a rotating order, for `repeats`
rounds with seeds 0, 1, ..., so load that drifts while the study runs falls on all of them alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from mixens.bench.catchup import catchup_costs
from mixens.bench.members import (
    SHAPES,
    build_member,
    fixed_length_prompts,
    parameter_count,
    synthetic_tokenizer,
)
from mixens.bench.timing import machine_name, stopwatch
from mixens.ensemble import Ensemble
from mixens.strategies import build_strategy


@dataclass
class StudyConfig:
    size: str = "llama-50m"  # shape of the equal members and of the larger member of the unequal pair
    small_size: str = "llama-20m"  # the smaller member of the unequal pair
    equal_counts: tuple[int, ...] = (2, 3)
    small_weights: tuple[float, ...] = (0.25, 0.5, 0.75)  # weight sweep of the smaller member
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    prompt_tokens: int = 16
    new_tokens: int = 32
    repeats: int = 3
    max_k: int = 16
    catchup_repeats: int = 3
    device: str = "cpu"
    dtype: str = "float32"
    compare_transformers: bool = True


@dataclass
class Run:
    """One timed generation (all repeats summed)."""

    scenario: str
    batch: int
    variant: str  # single, averaging, mixture, hf_generate (+ _greedy)
    members: list[str]
    weights: list[float]
    seconds: float = 0.0
    prefill_seconds: float = 0.0
    steps: int = 0
    prefill_steps: int = 0
    tokens: int = 0
    forward_passes: int = 0
    generated_tokens_fed: int = 0  # per row, summed over members and rows
    catchup_tokens: int = 0
    decode_forwards: list[tuple[int, int]] = field(default_factory=list)  # (member index, k) after prefill

    @property
    def decode_seconds(self) -> float:
        return self.seconds - self.prefill_seconds


class ForwardLog:
    """Records the width (tokens fed per row) of every forward of the members, by member index."""

    def __init__(self, models):
        self.entries: list[tuple[int, int]] = []
        self._handles = [
            model.register_forward_pre_hook(self._hook(i), with_kwargs=True) for i, model in enumerate(models)
        ]

    def _hook(self, index: int):
        def record(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.entries.append((index, int(ids.shape[1])))

        return record

    def decode_forwards(self) -> list[tuple[int, int]]:
        """(member, k) of each forward after that member's first (its prompt prefill)."""
        seen, out = set(), []
        for member, width in self.entries:
            if member in seen:
                out.append((member, width))
            seen.add(member)
        return out

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def _mixens_round(run: Run, ensemble: Ensemble, prompts, config: StudyConfig, seed: int, sampling: dict) -> None:
    log = ForwardLog([m.model for m in ensemble.members])
    try:
        result = ensemble.generate(
            prompts, max_new_tokens=config.new_tokens, seed=seed, batch_size=len(prompts), progress=False, **sampling
        )
    finally:
        log.close()
    stats = result.stats
    run.seconds += stats.wall_seconds
    run.prefill_seconds += stats.prefill_seconds
    run.steps += stats.steps
    run.prefill_steps += stats.prefill_steps
    run.tokens += stats.tokens_generated
    run.forward_passes += stats.forward_passes
    run.generated_tokens_fed += sum(m.generated_tokens for m in stats.members.values())
    run.catchup_tokens += sum(m.catchup_tokens for m in stats.members.values())
    run.decode_forwards += log.decode_forwards()


@torch.inference_mode()
def _transformers_round(run: Run, member, prompts, config: StudyConfig, seed: int, sampling: dict) -> None:
    """transformers' own generate with its KV cache, on the same model, prompts and settings."""
    tok = member.tokenizer
    batch = tok(prompts, return_tensors="pt", padding=True).to(member.device)
    torch.manual_seed(seed)
    options = dict(temperature=1.0, top_k=0, top_p=1.0) if sampling["do_sample"] else {}
    with stopwatch(member.device) as elapsed:
        out = member.model.generate(
            **batch,
            do_sample=sampling["do_sample"],
            max_new_tokens=config.new_tokens,
            pad_token_id=tok.pad_token_id,
            **options,
        )
    generated = out.shape[1] - batch["input_ids"].shape[1]
    run.seconds += elapsed()
    run.steps += generated
    run.tokens += generated * len(prompts)
    run.forward_passes += generated  # one forward per step, the prefill included


def _variants(members, weight_sets, compare_transformers: bool):
    """(variant name, members, their weights, strategy name or None for transformers, sampling)."""
    sample, greedy = {"do_sample": True}, {"do_sample": False}
    anchor = members[-1]  # the largest member: the one a single-model run would use
    out = [("single", [anchor], [1.0], "single", sample)]
    if compare_transformers:
        out += [
            ("hf_generate", [anchor], [1.0], None, sample),
            ("single_greedy", [anchor], [1.0], "single", greedy),
            ("hf_generate_greedy", [anchor], [1.0], None, greedy),
        ]
    out.append(("averaging", members, weight_sets[0], "averaging", sample))
    for weights in weight_sets:
        label = "mixture" if len(weight_sets) == 1 else "mixture@" + "/".join(f"{w:g}" for w in weights)
        out.append((label, members, weights, "mixture", sample))
    return out


def run_scenario(
    name: str, members, weight_sets, prompts, batch: int, config: StudyConfig, compare_transformers: bool, progress
) -> list[Run]:
    batch_prompts = prompts[:batch]
    table = []
    for label, chosen, weights, strategy, sampling in _variants(members, weight_sets, compare_transformers):
        names = [m.name for m in chosen]
        ensemble = (
            None
            if strategy is None
            else Ensemble(chosen, build_strategy(strategy, names), batch_size=batch, weights=weights)
        )
        total = sum(weights)
        run = Run(name, batch, label, names, [w / total for w in weights])
        table.append((run, ensemble, chosen, sampling))
    # Warm-up: a short generation of each, untimed (first calls allocate and pick kernels).
    warm = StudyConfig(**{**asdict(config), "new_tokens": 2})
    for _run, ensemble, chosen, sampling in table:
        if ensemble is None:
            _transformers_round(Run("", 0, "", [], []), chosen[0], batch_prompts, warm, 0, sampling)
        else:
            _mixens_round(Run("", 0, "", [], []), ensemble, batch_prompts, warm, 0, sampling)
    for seed in range(config.repeats):
        shift = seed % len(table)
        for run, ensemble, chosen, sampling in table[shift:] + table[:shift]:
            progress(f"{name} batch={batch} {run.variant} round {seed + 1}/{config.repeats}")
            if ensemble is None:
                _transformers_round(run, chosen[0], batch_prompts, config, seed, sampling)
            else:
                _mixens_round(run, ensemble, batch_prompts, config, seed, sampling)
    return [run for run, *_ in table]


def run_study(config: StudyConfig, progress=print) -> dict:
    device = torch.device(config.device)
    dtype = getattr(torch, config.dtype)
    shapes = {config.size: SHAPES[config.size], config.small_size: SHAPES[config.small_size]}
    tokenizer = synthetic_tokenizer(min(s.vocab for s in shapes.values()))
    count = max(config.equal_counts, default=1)
    progress(f"building {count} x {config.size} and 1 x {config.small_size} on {device} ({config.dtype})")
    equal = [build_member(f"{config.size}#{i}", config.size, tokenizer, device, dtype, seed=i) for i in range(count)]
    small = build_member(f"{config.small_size}#s", config.small_size, tokenizer, device, dtype, seed=100)
    prompts = fixed_length_prompts(tokenizer, max(config.batch_sizes), config.prompt_tokens)

    context = config.prompt_tokens + config.new_tokens // 2  # the mean context length while decoding
    models = {config.size: equal[0].model, config.small_size: small.model}
    half = max(1, (config.catchup_repeats + 1) // 2)

    def measure(batch: int, when: str) -> dict[str, list[float]]:
        out = {}
        for shape_name, model in models.items():
            progress(f"catch-up micro-benchmark ({when}): {shape_name} batch={batch} k=1..{config.max_k}")
            out[shape_name] = catchup_costs(model, device, batch, context, config.max_k, half)
        return out

    catchup: dict[str, dict[int, list[float]]] = {name: {} for name in models}
    runs: list[Run] = []
    for batch in config.batch_sizes:
        # c(k) is measured just before and just after the runs it is compared with, and the two averaged,
        # so load that drifts over the study shifts the ideal and the measurement alike.
        before = measure(batch, "before")
        for n in config.equal_counts:
            runs += run_scenario(
                f"equal-{n}",
                equal[:n],
                [[1.0 / n] * n],
                prompts,
                batch,
                config,
                compare_transformers=config.compare_transformers and n == config.equal_counts[0],
                progress=progress,
            )
        if config.small_weights:
            weight_sets = [[w, 1.0 - w] for w in config.small_weights]
            runs += run_scenario("unequal", [small, equal[0]], weight_sets, prompts, batch, config, False, progress)
        after = measure(batch, "after")
        for name in models:
            catchup[name][batch] = [(a + b) / 2 for a, b in zip(before[name], after[name])]

    return {
        "config": asdict(config),
        "machine": machine_name(device),
        "torch": torch.__version__,
        "shapes": {
            name: {**asdict(shape), "parameters": parameter_count(model)}
            for name, shape, model in (
                (config.size, shapes[config.size], equal[0].model),
                (config.small_size, shapes[config.small_size], small.model),
            )
        },
        "member_shapes": {m.name: config.size for m in equal} | {small.name: config.small_size},
        "catchup_seconds": {s: {str(b): c for b, c in per.items()} for s, per in catchup.items()},
        "runs": [asdict(r) | {"decode_seconds": r.decode_seconds} for r in runs],
    }
