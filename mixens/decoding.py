"""The batched generation loop: route, bring the chosen members up to date, combine, pick, repeat."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from mixens.cache import FeedStats, MemberCache
from mixens.members import Member
from mixens.sampling import Sampling, pick, transformed_probs
from mixens.strategies import MemberOutputs, StepContext, Strategy
from mixens.transcript import make_transcript
from mixens.vocab import SharedVocab, UnionVocab

ROUTING_STREAM, SAMPLING_STREAM = 0, 1


def stream_seed(seed: int, stream: int, batch: int = 0) -> int:
    """Independent seeds for the routing draws and the token draws of each batch."""
    return int(np.random.SeedSequence([seed, stream, batch]).generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclass
class GenerationStats:
    sequences: int = 0
    steps: int = 0
    tokens_generated: int = 0
    wall_seconds: float = 0.0
    # Set-up (tokenising prompts) plus every step in which some member read prompt tokens; the rest of
    # wall_seconds is decoding. Under mixture a member reads its prompt when it is first drawn.
    prefill_seconds: float = 0.0
    prefill_steps: int = 0
    members: dict[str, FeedStats] = field(default_factory=dict)

    def add(self, other: GenerationStats) -> None:
        self.sequences += other.sequences
        self.steps += other.steps
        self.tokens_generated += other.tokens_generated
        self.wall_seconds += other.wall_seconds
        self.prefill_seconds += other.prefill_seconds
        self.prefill_steps += other.prefill_steps
        for name, fed in other.members.items():
            mine = self.members.setdefault(name, FeedStats())
            for key, value in asdict(fed).items():
                setattr(mine, key, getattr(mine, key) + value)

    @property
    def forward_passes(self) -> int:
        return sum(m.forward_passes for m in self.members.values())

    @property
    def row_passes(self) -> int:
        return sum(m.row_passes for m in self.members.values())

    def as_dict(self) -> dict:
        steps = max(self.steps, 1)
        return {
            "sequences": self.sequences,
            "steps": self.steps,
            "tokens_generated": self.tokens_generated,
            "wall_seconds": self.wall_seconds,
            "tokens_per_second": self.tokens_generated / self.wall_seconds if self.wall_seconds else None,
            "prefill_seconds": self.prefill_seconds,
            "prefill_steps": self.prefill_steps,
            "decode_seconds": self.wall_seconds - self.prefill_seconds,
            "forward_passes": self.forward_passes,
            "forward_passes_per_step": self.forward_passes / steps,
            # Per sequence: how many members ran for a generated token, on average (routers run
            # members for some rows only; a batched forward counts once above, per row here).
            "member_runs_per_token": self.row_passes / self.tokens_generated if self.tokens_generated else None,
            "members": {name: asdict(fed) for name, fed in self.members.items()},
        }


class _Distributions:
    """Member logits -> transformed distributions in the ensemble's id space, on one device."""

    def __init__(self, vocab, device: torch.device):
        self.vocab = vocab
        self.device = device
        self.logits: dict[int, torch.Tensor] = {}
        self._memo: dict = {}

    def set_logits(self, member: int, logits: torch.Tensor) -> None:
        self.logits[member] = logits
        self._memo = {key: value for key, value in self._memo.items() if key[0] != member}

    def __call__(self, member: int, sampling: Sampling) -> torch.Tensor:
        key = (member, sampling)
        if key not in self._memo:
            self._memo[key] = self._compute(member, sampling)
        return self._memo[key]

    def _compute(self, member: int, sampling: Sampling) -> torch.Tensor:
        logits = self.logits[member]
        if isinstance(self.vocab, SharedVocab):
            return transformed_probs(logits, sampling).to(self.device)
        # Tokens with no surface text are removed before F, so top-k counts only real candidates.
        to_union = self.vocab.to_union(member, logits.device)
        logits = logits.masked_fill(to_union == self.vocab.size, float("-inf"))
        probs = transformed_probs(logits, sampling)
        union = probs.new_zeros(probs.shape[0], self.vocab.size + 1)
        union.scatter_add_(1, to_union.expand_as(probs), probs)
        return union[:, : self.vocab.size].to(self.device)


def decode_batch(
    members: list[Member],
    vocab: SharedVocab | UnionVocab,
    strategy: Strategy,
    prompts: list[str],
    until: list[tuple[str, ...]],
    sampling: Sampling,
    max_new_tokens: int,
    seed: int,
    batch_index: int = 0,
    choose=None,
) -> tuple[list[str], GenerationStats]:
    """Generate a batch. `choose(step, dist, outputs, active) -> tokens` replaces sampling for a caller
    that drives the text itself (teacher forcing: it returns the reference tokens, EOS when one ends)."""
    started = time.perf_counter()
    rendered = [[m.render_prompt(p) for p in prompts] for m in members]
    transcript = make_transcript(vocab, [m.tokenizer for m in members], rendered, until)
    caches = []
    for i, m in enumerate(members):
        size = vocab.member_size(i)
        caches.append(MemberCache(m.model, m.device, transcript.prompt_lengths(i), _pad_id(m), size))
    home = members[0].device
    routing_rng = torch.Generator().manual_seed(stream_seed(seed, ROUTING_STREAM, batch_index))
    sampling_rng = torch.Generator(device=home).manual_seed(stream_seed(seed, SAMPLING_STREAM, batch_index))
    weights = torch.tensor([m.weight for m in members], dtype=torch.float64)
    stats = GenerationStats(sequences=len(prompts))
    stats.prefill_seconds = time.perf_counter() - started

    for step in range(max_new_tokens):
        step_started = time.perf_counter()
        prompt_tokens_before = sum(c.stats.prompt_tokens for c in caches)
        active = torch.tensor([not d for d in transcript.done])
        ctx = StepContext(step, active, weights, routing_rng)
        outputs, routing = _run_routed_members(strategy, ctx, caches, transcript, vocab, home)
        dist = strategy.combine(outputs, routing, sampling)
        if not bool(active.all()):  # the masked writes cost a full-vocabulary pass even when no row is done
            dist[~active.to(dist.device)] = 0.0
            dist[~active.to(dist.device), 0] = 1.0  # finished rows draw a dummy token that is ignored
        tokens = pick(dist, sampling, sampling_rng).tolist() if choose is None else choose(step, dist, outputs, active)
        stats.steps += 1
        stats.tokens_generated += int(active.sum())
        if sum(c.stats.prompt_tokens for c in caches) > prompt_tokens_before:  # `tolist` synced the device
            stats.prefill_seconds += time.perf_counter() - step_started
            stats.prefill_steps += 1
        transcript.append(tokens)
        if all(transcript.done):
            break

    stats.wall_seconds = time.perf_counter() - started
    stats.members = {m.name: c.stats for m, c in zip(members, caches)}
    return transcript.texts(), stats


def _run_routed_members(strategy: Strategy, ctx: StepContext, caches, transcript, vocab, home):
    """Route, run the routed members for their rows, let the strategy route again having seen those
    outputs (a cascade), run what it added. Returns the outputs and the final routing."""
    distributions = _Distributions(vocab, home)
    hidden: dict[int, torch.Tensor] = {}
    outputs = MemberOutputs(distributions, hidden)
    ran = torch.zeros(ctx.active.shape[0], len(caches), dtype=torch.bool)
    routing = strategy.route(ctx)
    for second_look in (False, True):
        if second_look:
            routing = strategy.reroute(ctx, outputs, routing)
        routing[~ctx.active] = 0.0
        for i, cache in enumerate(caches):
            rows = (routing[:, i] > 0) & ~ran[:, i]
            if not rows.any():
                continue
            wants_hidden = strategy.wants_hidden(i)
            result = cache.advance(transcript.target_ids(i), rows.tolist(), hidden=wants_hidden)
            logits, state = result if wants_hidden else (result, None)
            # Rows this member did not run for hold meaningless logits: keep earlier ones, else zeros.
            earlier = ran[:, i].to(logits.device)[:, None]
            keep = rows.to(logits.device)[:, None]
            logits = _merge_rows(logits, keep, distributions.logits.get(i), earlier)
            distributions.set_logits(i, logits)
            if state is not None:
                hidden[i] = _merge_rows(state, keep, hidden.get(i), earlier)
            ran[:, i] |= rows
    return outputs, routing


def _merge_rows(new: torch.Tensor, new_rows: torch.Tensor, old: torch.Tensor | None, old_rows: torch.Tensor):
    if old is None and bool(new_rows.all()):  # the usual case: the member ran for every row
        return new
    fallback = torch.zeros_like(new) if old is None else torch.where(old_rows, old, torch.zeros_like(new))
    return torch.where(new_rows, new, fallback)


def _pad_id(member: Member) -> int:
    tok = member.tokenizer
    for candidate in (tok.pad_token_id, tok.eos_token_id, *sorted(member.eos_ids)):
        if candidate is not None:
            return candidate
    return 0
