"""The public entry point: load members once, then generate with any strategy."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from mixens.chat import check_messages
from mixens.decoding import SAMPLING_STREAM, Decoder, GenerationStats, stream_seed
from mixens.errors import ConfigError
from mixens.faults import raise_if_stopped
from mixens.members import Member, hub_access, in_memory_member, in_memory_spec, load_member
from mixens.sampling import Sampling, check_decoding_budget, pick, uniforms
from mixens.spec import ModelSpec, normalized_weights, validate_members
from mixens.strategies import Strategy, build_strategy
from mixens.token_record import TokenRecord, TokenRecorder
from mixens.vllm_engine import VllmOptions, check_engine, check_strategy, load_vllm_member
from mixens.vocab import build_alignment

log = logging.getLogger(__name__)


@dataclass
class GenerationResult:
    texts: list[str]
    stats: GenerationStats
    tokens: list[TokenRecord] | None = None  # with generate(..., return_tokens=True): one per prompt


class Ensemble:
    """Loaded members, the vocabulary they are mixed in, their weights and a strategy. A value: the
    `with_*` methods return ensembles that share the loaded models and the vocabulary alignment."""

    def __init__(
        self,
        members: list[Member],
        strategy: Strategy,
        batch_size: int = 8,
        vocab=None,
        weights: Sequence[float] | None = None,
    ):
        self.members = members
        self.strategy = strategy
        self.batch_size = batch_size
        # lambda, summing to one (default: the members' spec weights)
        if weights is not None and len(weights) != len(members):
            raise ConfigError(f"{len(weights)} weights for {len(members)} members; give one per member.")
        raw = [m.spec.weight for m in members] if weights is None else list(weights)
        self.weights = tuple(normalized_weights(raw, [m.name for m in members]))
        strategy.check_members(members, self.weights)
        engines = sorted({m.engine_name for m in members})
        if len(engines) > 1:
            raise ConfigError(f"members run on engines {engines}; an ensemble runs all its members on one engine.")
        self.engine = engines[0]
        if self.engine == "vllm":
            check_strategy(strategy.name)
        self.vocab = vocab or build_alignment([m.tokenizer for m in members], [set(m.eos_ids) for m in members])

    def with_strategy(self, strategy: str | Strategy, **options) -> Ensemble:
        """The same loaded members under another strategy: a built one, or a name and its options
        (members named as in the ensemble)."""
        if not isinstance(strategy, Strategy):
            strategy = build_strategy(strategy, [m.name for m in self.members], options)
        elif options:
            raise ConfigError(f"options {sorted(options)} go with a strategy name, not a built strategy.")
        return Ensemble(self.members, strategy, self.batch_size, self.vocab, self.weights)

    def with_weights(self, weights: Sequence[float]) -> Ensemble:
        """The same loaded members under other weights (normalised to sum to one)."""
        return Ensemble(self.members, self.strategy, self.batch_size, self.vocab, weights)

    def with_batch_size(self, batch_size: int) -> Ensemble:
        return Ensemble(self.members, self.strategy, batch_size, self.vocab, self.weights)

    def with_chat_templates(self) -> Ensemble:
        """The same models, every member that reads prompts as written now wrapping them in its tokenizer's
        own chat template."""
        members = [
            dataclasses.replace(m, spec=dataclasses.replace(m.spec, chat_template=True))
            if m.spec.chat_template is False
            else m
            for m in self.members
        ]
        return Ensemble(members, self.strategy, self.batch_size, self.vocab, self.weights)

    @property
    def shared_vocabulary(self) -> bool:
        return self.vocab.shared

    def generate(
        self,
        prompts: str | Sequence[str] | Sequence[dict] | Sequence[Sequence[dict]],
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
        return_tokens: bool = False,
    ) -> GenerationResult:
        """Texts generated after each prompt (cut before the first stop string), with statistics.

        A prompt is a string or a chat: a list of {"role", "content"} messages, rendered by each member with its
        own chat template (a string, or one chat, is one prompt). `until` is one list of stop strings for every
        prompt or one list per prompt. Prompts are decoded in batches of `batch_size`, in the order given; the
        same seed and batching give the same texts. `return_tokens`: also each prompt's tokens with their
        log-probabilities and the members they came from (mixens.token_record.TokenRecord).
        """
        sampling = Sampling(do_sample, temperature, top_k, top_p)
        check_decoding_budget(max_new_tokens, seed)
        prompts = _prompt_list(prompts)
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
        stops = _per_prompt_stops(until, len(prompts))
        size = batch_size or self.batch_size
        starts = range(0, len(prompts), size)
        show = progress if progress is not None else len(starts) > 1
        texts: list[str] = []
        tokens: list[TokenRecord] | None = [] if return_tokens else None
        stats = GenerationStats()
        bar = tqdm(total=len(prompts), desc="generating", unit="prompt", disable=not show)
        for batch_index, start in enumerate(starts):
            chunk = slice(start, start + size)
            recorder = TokenRecorder(self, len(prompts[chunk])) if return_tokens else None
            batch_texts, batch_stats = self.decode(
                prompts[chunk], stops[chunk], sampling, max_new_tokens, seed, batch_index, recorder, bar.update
            )
            texts.extend(batch_texts)
            if recorder is not None:
                tokens.extend(recorder.records)
            stats.add(batch_stats)
        bar.close()
        return GenerationResult(texts, stats, tokens)

    def decode(
        self,
        prompts: list[str],
        until: list[tuple[str, ...]],
        sampling: Sampling,
        max_new_tokens: int,
        seed: int,
        batch_index: int = 0,
        recorder: TokenRecorder | None = None,
        finished: Callable[[int], object] | None = None,
    ) -> tuple[list[str], GenerationStats]:
        """One prepared batch, generated as it is given (no checks, no batching): for callers that did both.
        `finished(n)` is told as rows finish (a progress bar's update), so progress shows within a batch."""
        if self.engine == "vllm":
            if recorder is not None:
                raise ConfigError("token records (return_tokens, record_tokens) are kept on engine=transformers only.")
            from mixens import vllm_decoding

            return vllm_decoding.decode(self, prompts, until, sampling, max_new_tokens, seed, batch_index, finished)
        # A token record reads the whole step: every member's distribution and the combined one.
        members_draw = recorder is None and self.strategy.one_member_per_row
        top = self.strategy.logits_needed(sampling) if recorder is None else None
        decoder = Decoder(
            self, prompts, until, sampling, seed, batch_index, max_new_tokens, top_logits=top, members_draw=members_draw
        )
        rng = torch.Generator(device=decoder.home).manual_seed(stream_seed(seed, SAMPLING_STREAM, batch_index))
        told = 0
        for _ in range(max_new_tokens):
            raise_if_stopped()
            if members_draw:
                picked = decoder.step_drawn(uniforms(len(prompts), rng, decoder.home) if sampling.do_sample else None)
            else:
                step = decoder.step()
                picked = pick(step.dist, sampling, rng)
                if recorder is not None:
                    recorder.add(step, picked)
            decoder.append(picked.tolist())
            if finished is not None and (now := decoder.finished_rows()) > told:
                finished(now - told)
                told = now
            if decoder.done:
                break
        if finished is not None and told < len(prompts):  # rows that ran to max_new_tokens
            finished(len(prompts) - told)
        return decoder.texts(), decoder.stats


def _prompt_list(prompts) -> list[str | list[dict]]:
    """One string or one chat is one prompt (not its characters, not its messages)."""
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if prompts and all(isinstance(p, dict) for p in prompts):
        return [check_messages(prompts)]
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            check_messages(prompt, f"prompt {i}")
    return prompts


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
    strategy: str | Strategy = "mixture",
    *,
    batch_size: int = 8,
    engine: str = "transformers",
    vllm: Mapping | None = None,
    **strategy_options,
) -> Ensemble:
    """Validate everything, then load the members and build the ensemble.

    A model is a mapping (name, path, weight, dtype, device, ...: mixens.spec.ModelSpec) or a model already in
    memory: {"name", "model", "tokenizer"} with optional "weight" and "chat_template".
    `strategy` is a name with its options as keywords (members by name: `member` for single, `draw` for
    mixture, `union_top_k` for averaging_topk_union, the router's in strategies/router.py), or a strategy
    already built by `mixens.strategies.build_strategy`.
    `engine`: "transformers" (default) or "vllm" (mixens.vllm_engine; its own environment), with `vllm` the
    engine options (mixens.vllm_engine.VllmOptions).
    """
    given = {i: (raw["model"], raw["tokenizer"]) for i, raw in enumerate(models) if _in_memory(raw)}
    specs = [in_memory_spec(raw, i) if i in given else ModelSpec.from_mapping(raw, i) for i, raw in enumerate(models)]
    validate_members(specs)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    if not isinstance(strategy, Strategy):
        strategy = build_strategy(strategy, [s.name for s in specs], strategy_options)
    elif strategy_options:
        raise ConfigError(f"options {sorted(strategy_options)} go with a strategy name, not a built strategy.")
    options = VllmOptions.from_mapping(vllm)
    check_engine(engine, strategy.name, specs, bool(given))
    return load_validated(specs, strategy, batch_size, given, engine, options)


def load_validated(
    specs: Sequence[ModelSpec],
    strategy: Strategy,
    batch_size: int = 8,
    given: Mapping[int, tuple] | None = None,
    engine: str = "transformers",
    vllm: VllmOptions | None = None,
) -> Ensemble:
    """Load members that were already validated (load_ensemble, or a run's plan) under a built strategy;
    `given` holds the (model, tokenizer) of members already in memory, by index. A strategy that runs fewer
    members than given (single) loads only those."""
    given = dict(given or {})
    used = strategy.members_used()
    if used is not None:
        given = {new: given[old] for new, old in enumerate(used) if old in given}
        specs, strategy = [specs[i] for i in used], strategy.restricted()
    for i, spec in enumerate(specs):  # a hub that does not answer fails before any weights load
        if i not in given:
            hub_access(spec, i)
    if engine == "vllm":
        members = [load_vllm_member(spec, i, vllm or VllmOptions(), len(specs)) for i, spec in enumerate(specs)]
    else:
        members = [in_memory_member(spec, *given[i]) if i in given else _load(spec, i) for i, spec in enumerate(specs)]
    ensemble = Ensemble(members, strategy, batch_size=batch_size)
    vocab = ensemble.vocab
    log.info(
        "%s with weights %s; %s",
        strategy.name,
        dict(zip((m.name for m in members), (round(w, 4) for w in ensemble.weights))),
        f"one shared vocabulary of {vocab.size} tokens, mixed id by id"
        if vocab.shared
        else f"different tokenizers, mixed in a union of {vocab.size} token strings",
    )
    return ensemble


def _load(spec: ModelSpec, index: int) -> Member:
    if spec.ray_actor is None:
        return load_member(spec, index)
    from mixens.ray_members import load_remote_member  # Ray is imported only for pools that use it

    return load_remote_member(spec, index)


def _in_memory(raw) -> bool:
    return isinstance(raw, Mapping) and "model" in raw
