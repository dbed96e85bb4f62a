"""The public entry point: load members once, then generate with any strategy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from mixens.decoding import GenerationStats, decode_batch
from mixens.members import Member, load_member
from mixens.sampling import Sampling
from mixens.spec import ConfigError, GenerationOptions, ModelSpec, normalized_weights, validate_ensemble_request
from mixens.strategies import Strategy, make_strategy
from mixens.strategies.router import router_options
from mixens.vocab import build_alignment


@dataclass
class GenerationResult:
    texts: list[str]
    stats: GenerationStats


class Ensemble:
    """Members, the vocabulary they are mixed in, and a strategy."""

    def __init__(self, members: list[Member], strategy: Strategy, batch_size: int = 8, vocab=None):
        self.members = members
        self.strategy = strategy
        strategy.check_members(members)
        self.batch_size = batch_size
        self.vocab = vocab or build_alignment([m.tokenizer for m in members], [set(m.eos_ids) for m in members])

    def with_strategy(self, strategy: str, **options) -> Ensemble:
        """The same loaded members and vocabulary alignment under another strategy (nothing is reloaded)."""
        try:
            chosen = make_strategy(strategy, len(self.members), **options)
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"strategy '{strategy}' with options {options}: {err}") from None
        return Ensemble(self.members, chosen, self.batch_size, self.vocab)

    @property
    def shared_vocabulary(self) -> bool:
        return self.vocab.shared

    def generate(
        self,
        prompts: str | Sequence[str],
        *,
        max_new_tokens: int,
        do_sample: bool = True,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        until: Sequence[str] | Sequence[Sequence[str]] = (),
        seed: int = 0,
        batch_size: int | None = None,
        progress: bool | None = None,
    ) -> GenerationResult:
        """Texts generated after each prompt (cut before the first stop string), with statistics.

        `until` is one list of stop strings for every prompt or one list per prompt. Prompts are decoded in
        batches of `batch_size`, in the order given; the same seed and batching give the same texts.
        """
        GenerationOptions(max_new_tokens, do_sample, temperature, top_k, top_p, seed)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)  # a string is one prompt, not its characters
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
        stops = _per_prompt_stops(until, len(prompts))
        sampling = Sampling(do_sample, temperature, top_k, top_p)
        size = batch_size or self.batch_size
        starts = range(0, len(prompts), size)
        show = progress if progress is not None else len(starts) > 1
        texts: list[str] = []
        stats = GenerationStats()
        for batch_index, start in enumerate(tqdm(starts, desc="generating", unit="batch", disable=not show)):
            batch_texts, batch_stats = decode_batch(
                self.members,
                self.vocab,
                self.strategy,
                prompts[start : start + size],
                stops[start : start + size],
                sampling,
                max_new_tokens,
                seed,
                batch_index,
            )
            texts.extend(batch_texts)
            stats.add(batch_stats)
        return GenerationResult(texts, stats)


def _per_prompt_stops(until, count: int) -> list[tuple[str, ...]]:
    if isinstance(until, str):
        return [(until,)] * count
    until = list(until)
    if until and all(not isinstance(u, str) for u in until):
        if len(until) != count:
            raise ConfigError(f"until has {len(until)} lists of stop strings for {count} prompts; give one per prompt.")
        return [tuple(u) for u in until]
    return [tuple(until)] * count


def load_ensemble(
    models: Sequence[Mapping | ModelSpec],
    strategy: str = "mixture",
    *,
    batch_size: int = 8,
    member: str | None = None,
    **strategy_options,
) -> Ensemble:
    """Validate everything, then load the members and build the ensemble.

    `member` names the model `single` runs (default: the first); other keyword options go to the
    strategy (`draw` for mixture, `union_top_k` for averaging_topk_union; for router `policy`,
    `designated`, `threshold`, `criterion`, `handover`, `router_path`, `draw`: see strategies/router.py).
    """
    specs = [ModelSpec.from_mapping(raw, i) for i, raw in enumerate(models)]
    validate_ensemble_request(specs, strategy)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
    names = [s.name for s in specs]
    if strategy == "single":
        if member is not None and member not in names:
            raise ConfigError(f"member '{member}' is not one of the models {names}; name one of them.")
        # Only the chosen member is loaded: the reference point costs one model.
        specs = [specs[names.index(member) if member else 0]]
    elif member is not None:
        raise ConfigError(f"member='{member}' only applies to strategy 'single', not '{strategy}'.")
    if strategy == "router":  # members by name, the router file read: mistakes show before loading
        strategy_options = router_options(names, **strategy_options)
    try:
        chosen = make_strategy(strategy, len(specs), **strategy_options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"strategy options for '{strategy}': {err}") from None
    weights = normalized_weights(specs)
    members = [load_member(spec, w, i) for i, (spec, w) in enumerate(zip(specs, weights))]
    return Ensemble(members, chosen, batch_size=batch_size)
