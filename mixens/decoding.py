"""The decoding loop as a stepper: route, bring the routed members up to date, combine; the driver
picks the tokens and appends them."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from mixens.cache import FeedStats, Largest
from mixens.errors import ConfigError
from mixens.member_draw import MemberDraw, StopColumns, in_ensemble_ids
from mixens.members import Member, context_length
from mixens.sampling import Sampling
from mixens.strategies import MemberOutputs, StepContext
from mixens.transcript import Transcript, make_transcript

if TYPE_CHECKING:
    from mixens.ensemble import Ensemble

log = logging.getLogger(__name__)
ROUTING_STREAM, SAMPLING_STREAM = 0, 1
TIED_AT_THE_EDGE = 8  # logits kept beyond the top k (Decoder.largest_logits)


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
    """Member logits -> transformed distributions in the ensemble's id space, on one device.

    `stop_columns`: per member, a [B, V_member] map that replaces the vocabulary's for rows whose stop
    strings include a special token's text (union vocabulary only): that token counts as the row's EOS."""

    def __init__(self, vocab, device: torch.device, stop_columns: dict[int, StopColumns] | None = None):
        self.vocab = vocab
        self.device = device
        self.stop_columns = stop_columns or {}
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
        if self.vocab.shared:
            return in_ensemble_ids(logits, sampling).to(self.device)
        to_union = self.vocab.to_union(member, logits.device)
        if member in self.stop_columns:
            to_union = self.stop_columns[member].on(to_union)
        return in_ensemble_ids(logits, sampling, to_union, self.vocab.size).to(self.device)


@dataclass
class Step:
    """One step's result: the combined next-token distribution and what produced it."""

    dist: torch.Tensor  # [B, V] in the ensemble's id space; a finished row holds a dummy one-hot
    outputs: MemberOutputs  # the members that ran, in the ensemble's id space
    routing: torch.Tensor  # [B, n] the final routing matrix W
    active: torch.Tensor  # [B] bool: rows still writing


class Decoder:
    """One batch decoded step by step by whoever drives it: `step()` routes, brings the routed members up
    to date and combines them; `append(tokens)` writes the tokens the driver chose. Generation samples
    them (`Ensemble.decode`), teacher forcing appends the reference, router training reads the members'
    outputs. Work and time are counted beside the loop, in `stats`."""

    def __init__(
        self,
        ensemble: Ensemble,
        prompts: list[str],
        until: list[tuple[str, ...]],
        sampling: Sampling,
        seed: int,
        batch_index: int = 0,
        room: int = 0,
        top_logits: int | None = None,
        members_draw: bool = False,
    ):
        """`room`: how many tokens the driver may append; a prompt that leaves a member less than that
        of its context loses its first tokens (with a warning), as lm-eval's own models do. `top_logits`:
        the driver reads only the top that many of each F_i(P_i) (Strategy.logits_needed), so a member may
        return only its largest logits (the others as -inf). `members_draw`: the driver calls `step_drawn`, in
        which each row's one member draws the row's token itself (Strategy.one_member_per_row)."""
        self._clock = _StepClock(len(prompts))
        self.members, self.vocab, self.strategy = ensemble.members, ensemble.vocab, ensemble.strategy
        self.sampling = sampling
        self.transcript = prepare_transcript(ensemble, prompts, until, room)
        self._stop_columns = StopColumns.build(self.transcript, self.vocab, self.members)
        self.caches = [
            m.new_cache(
                self.transcript.prompt_lengths(i),
                _pad_id(m),
                self.vocab.member_size(i),
                self.largest_logits(i, top_logits),
                self._member_draw(i) if members_draw else None,
            )
            for i, m in enumerate(self.members)
        ]
        self.home = self.members[0].device
        self.weights = torch.tensor(ensemble.weights, dtype=torch.float64)
        self.routing_rng = torch.Generator().manual_seed(stream_seed(seed, ROUTING_STREAM, batch_index))
        self.steps_taken = 0
        self._clock.prepared()

    def step(self) -> Step:
        self._clock.step_started(self._prompt_tokens())
        active = torch.tensor([not d for d in self.transcript.done])
        ctx = StepContext(self.steps_taken, active, self.weights, self.routing_rng)
        outputs, routing = self._run_routed_members(ctx)
        dist = self.strategy.combine(outputs, routing, self.sampling)
        if not bool(active.all()):  # the masked writes cost a full-vocabulary pass even when no row is done
            finished = ~active.to(dist.device)
            dist[finished] = 0.0
            dist[finished, 0] = 1.0  # finished rows draw a dummy token that is ignored
        return Step(dist, outputs, routing, active)

    def step_drawn(self, u: torch.Tensor | None) -> torch.Tensor:
        """A step of a strategy that routes each row to one member: route, and let each routed member draw its
        rows' tokens from its own F(P) with the rows' uniform numbers u [B, 1] (None: greedy), the same tokens
        `step` and a draw of its result give. Returns a token per row (0 for finished rows, which `append`
        ignores)."""
        self._clock.step_started(self._prompt_tokens())
        active = torch.tensor([not d for d in self.transcript.done])
        routing = self.strategy.route(StepContext(self.steps_taken, active, self.weights, self.routing_rng))
        routing[~active] = 0.0
        started = []  # every routed member starts before any is waited for, as in `step`
        for i, cache in enumerate(self.caches):
            rows = routing[:, i] > 0
            if rows.any():
                row_u = None if u is None else u[rows.to(u.device)]
                started.append((rows, cache.begin_draw(self.transcript.target_ids(i), rows.tolist(), row_u)))
        tokens = torch.zeros(active.shape[0], dtype=torch.long)
        for rows, result in started:
            tokens[rows] = result().cpu()
        return tokens

    def append(self, tokens: list[int]) -> None:
        """Write one token per row (ignored for finished rows). `tokens` is a host list, so the step's
        device work is done and its time can be taken."""
        self._clock.step_finished(self._prompt_tokens(), sum(not d for d in self.transcript.done))
        self.transcript.append(tokens)
        self.steps_taken += 1

    @property
    def done(self) -> bool:
        return all(self.transcript.done)

    def finished_rows(self) -> int:
        return sum(self.transcript.done)

    def texts(self) -> list[str]:
        return self.transcript.texts()

    @property
    def stats(self) -> GenerationStats:
        return self._clock.stats({m.name: c.stats for m, c in zip(self.members, self.caches)})

    def _prompt_tokens(self) -> int:
        return sum(c.stats.prompt_tokens for c in self.caches)

    def largest_logits(self, member: int, top: int | None) -> Largest | None:
        """The logits of a member that hold the top `top` of its F_i(P_i). In a union of vocabularies the ids
        with no surface text leave before F: they are left out, except those that are some row's stop token
        (that row draws them as EOS), for which as many more are kept. A few more keep every id tied at the
        edge (greedy takes the first of tied ids, as over the whole row)."""
        if top is None:
            return None
        if self.vocab.shared:
            return Largest(top + TIED_AT_THE_EDGE)
        never = self.vocab.to_union(member, "cpu") == self.vocab.size
        stops = self._stop_columns[member].mask.any(dim=0) if member in self._stop_columns else torch.zeros_like(never)
        stopping = int((never & stops).sum())
        return Largest(top + stopping + TIED_AT_THE_EDGE, tuple((never & ~stops).nonzero().flatten().tolist()))

    def _member_draw(self, member: int) -> MemberDraw:
        if self.vocab.shared:
            return MemberDraw(self.sampling)
        to_union = self.vocab.to_union(member, "cpu")
        return MemberDraw(self.sampling, self.vocab.size, to_union, self._stop_columns.get(member))

    def _run_routed_members(self, ctx: StepContext) -> tuple[MemberOutputs, torch.Tensor]:
        """Route, run the routed members for their rows, let the strategy route again having seen those
        outputs (a cascade), run what it added. Returns the outputs and the final routing."""
        distributions = _Distributions(self.vocab, self.home, self._stop_columns)
        hidden: dict[int, torch.Tensor] = {}
        outputs = MemberOutputs(distributions, hidden)
        ran = torch.zeros(ctx.active.shape[0], len(self.caches), dtype=torch.bool)
        routing = self.strategy.route(ctx)
        for second_look in (False, True):
            if second_look:
                routing = self.strategy.reroute(ctx, outputs, routing)
            routing[~ctx.active] = 0.0
            started = []  # every routed member starts before any is waited for: members in Ray actors run at once
            for i, cache in enumerate(self.caches):
                rows = (routing[:, i] > 0) & ~ran[:, i]
                if rows.any():
                    wants_hidden = self.strategy.wants_hidden(i)
                    targets = self.transcript.target_ids(i)
                    started.append((i, rows, wants_hidden, cache.begin_advance(targets, rows.tolist(), wants_hidden)))
            for i, rows, wants_hidden, result in started:
                logits, state = result() if wants_hidden else (result(), None)
                # Rows this member did not run for hold meaningless logits: keep earlier ones, else zeros.
                earlier = ran[:, i].to(logits.device)[:, None]
                keep = rows.to(logits.device)[:, None]
                logits = _merge_rows(logits, keep, distributions.logits.get(i), earlier)
                distributions.set_logits(i, logits)
                if state is not None:
                    hidden[i] = _merge_rows(state, keep, hidden.get(i), earlier)
                ran[:, i] |= rows
        return outputs, routing


def prepare_transcript(ensemble: Ensemble, prompts: list, until: list[tuple[str, ...]], room: int) -> Transcript:
    """The batch's shared state before its first token: each member's rendered prompt, cut to leave `room`
    tokens in its context (with a warning), as the member's ids."""
    members = ensemble.members
    rendered = [[m.render_prompt(p) for p in prompts] for m in members]
    keep = [_prompt_budget(m, room) for m in members]
    transcript = make_transcript(ensemble.vocab, [m.tokenizer for m in members], rendered, until, keep)
    _warn_if_truncated(members, transcript, keep)
    _refuse_empty_prompts(members, transcript)
    return transcript


class _StepClock:
    """Wall time of a batch, split into prompt reading and decoding, and the steps and tokens counted."""

    def __init__(self, sequences: int):
        self.started = time.perf_counter()
        self.counts = GenerationStats(sequences=sequences)
        self._step_started = self.started
        self._prompt_tokens_before = 0

    def prepared(self) -> None:
        self.counts.prefill_seconds = time.perf_counter() - self.started  # tokenising the prompts

    def step_started(self, prompt_tokens: int) -> None:
        self._step_started = time.perf_counter()
        self._prompt_tokens_before = prompt_tokens

    def step_finished(self, prompt_tokens: int, active_rows: int) -> None:
        self.counts.steps += 1
        self.counts.tokens_generated += active_rows
        if prompt_tokens > self._prompt_tokens_before:  # some member read prompt tokens in this step
            self.counts.prefill_seconds += time.perf_counter() - self._step_started
            self.counts.prefill_steps += 1
        self.counts.wall_seconds = time.perf_counter() - self.started

    def stats(self, members: dict[str, FeedStats]) -> GenerationStats:
        return dataclasses.replace(self.counts, members=members)


def _merge_rows(new: torch.Tensor, new_rows: torch.Tensor, old: torch.Tensor | None, old_rows: torch.Tensor):
    if old is None and bool(new_rows.all()):  # the usual case: the member ran for every row
        return new
    fallback = torch.zeros_like(new) if old is None else torch.where(old_rows, old, torch.zeros_like(new))
    return torch.where(new_rows, new, fallback)


def _prompt_budget(member: Member, room: int) -> int | None:
    """The most prompt tokens a member can read and still write `room` tokens (None: no known limit)."""
    window = context_length(member)
    if window is None:
        return None
    if window <= room:
        raise ConfigError(
            f"member {member.name} reads at most {window} tokens, not enough for {room} new ones; "
            "ask for fewer new tokens (max_new_tokens / max_gen_toks)."
        )
    return window - room


def _refuse_empty_prompts(members: list[Member], transcript) -> None:
    for i, member in enumerate(members):
        lengths = transcript.prompt_lengths(i)
        if 0 in lengths:
            raise ConfigError(
                f"prompt {lengths.index(0)} of the batch is empty for member {member.name}, whose tokenizer adds "
                "no start token, so there is nothing to condition on; give each prompt at least one character."
            )


_warned: set[str] = set()


def _warn_if_truncated(members: list[Member], transcript, keep: list[int | None]) -> None:
    for i, member in enumerate(members):
        full, kept = transcript.full_prompt_lengths[i], transcript.prompt_lengths(i)
        cut = [n for n, k in zip(full, kept) if n > k]
        if cut and member.name not in _warned:
            _warned.add(member.name)
            log.warning(
                "a prompt of %d tokens is longer than member %s can read with room for the answer (%d); "
                "its first tokens are left out, as lm-eval does (said once per member)",
                max(cut),
                member.name,
                keep[i],
            )


def _pad_id(member: Member) -> int:
    tok = member.tokenizer
    for candidate in (tok.pad_token_id, tok.eos_token_id, *sorted(member.eos_ids)):
        if candidate is not None:
            return candidate
    return 0
