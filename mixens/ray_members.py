"""Members in Ray actors: a pool that does not fit one node runs each member where Ray places it.

A member with `ray_actor: {num_gpus: 1, ...}` (Ray's actor options) loads its weights inside an actor of its
own, on whichever node of the cluster has those resources (`RAY_ADDRESS`, as for any Ray program; with none
set, a local Ray instance starts). The process that drives decoding keeps only the tokenizer and the model's
configs. Each step, it sends a routed member only the tokens each row gained since that member last ran
(the catch-up span, usually one token); the member's KV cache never leaves its actor. What comes back is
the next-token logits of the rows the member ran for, which the strategy combines here, so every strategy,
tokenizer pairing and seed gives the same text as with the member in this process. Where one member writes
each row (mixture, single), the member draws the row's token in its actor with the uniform number this
process sends (mixens.member_draw): one id comes back per row. Where the draw depends only on each member's
largest logits (averaging under top-k: Strategy.logits_needed), only those come back, with their ids: tens of
numbers per row instead of a whole vocabulary (mixens.cache.Largest).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from dataclasses import dataclass, field

import torch

from mixens.cache import FeedStats, Largest, MemberCache, common_prefix
from mixens.errors import ConfigError
from mixens.member_draw import MemberDraw
from mixens.members import Member, load_member
from mixens.spec import ModelSpec

log = logging.getLogger(__name__)
WAIT_NOTICE_SECONDS = 30


class MemberActor:
    """The actor's side: one loaded member and its KV caches, one per batch being decoded."""

    def __init__(self, spec: ModelSpec, index: int):
        self.member = load_member(spec, index)
        self.caches: dict[int, MemberCache] = {}
        self.largest: dict[int, tuple[int, torch.Tensor]] = {}  # per cache: how many logits, the ids left out

    def about(self) -> dict:
        import ray

        model = self.member.model
        return {"tokenizer": self.member.tokenizer, "config": model.config, "generation_config": model.generation_config,
                "dtype": model.dtype, "parameters": model.num_parameters(), "eos_ids": self.member.eos_ids,
                "device": str(self.member.device), "node": ray.util.get_node_ip_address()}  # fmt: skip

    def open(
        self,
        key: int,
        prompt_lengths: list[int],
        pad_id: int,
        logit_size: int,
        largest: Largest | None,
        draw: MemberDraw | None,
    ) -> None:
        self.caches[key] = self.member.new_cache(prompt_lengths, pad_id, logit_size, draw=draw)
        if largest is not None:
            self.largest[key] = (
                largest.count,
                torch.tensor(largest.excluded, dtype=torch.long, device=self.member.device),
            )

    def close(self, key: int) -> None:
        self.caches.pop(key, None)
        self.largest.pop(key, None)

    def advance(self, key: int, spans: list[tuple[int, list[int]] | None], hidden: bool):
        """Rows with a span (kept prefix length, new ids) advance; returns their logits (and hidden states)
        in row order, and the cache's counts. When the cache was opened with `largest`, the logits are each
        row's largest, as (values, ids)."""
        cache = self.caches[key]
        targets, active = self._targets(cache, spans)
        result = cache.advance(targets, active, hidden=hidden)
        logits, state = result if hidden else (result, None)
        rows = torch.tensor([b for b, on in enumerate(active) if on], dtype=torch.long, device=logits.device)
        picked = logits.index_select(0, rows)
        if key in self.largest:
            picked = tuple(part.cpu() for part in largest_of(picked, *self.largest[key]))
        else:
            picked = picked.cpu()
        return picked, None if state is None else state.index_select(0, rows).cpu(), cache.stats

    def draw(self, key: int, spans: list[tuple[int, list[int]] | None], u: torch.Tensor | None):
        """Rows with a span advance and draw their tokens with their uniform numbers u (None: greedy); returns
        the tokens in row order, and the cache's counts."""
        cache = self.caches[key]
        targets, active = self._targets(cache, spans)
        return cache.begin_draw(targets, active, u)().cpu(), cache.stats

    def continuation_logits(self, contexts, token_lists, group_of) -> torch.Tensor:
        return self.member.continuation_logits(contexts, token_lists, group_of).cpu()

    @staticmethod
    def _targets(cache: MemberCache, spans) -> tuple[list[list[int]], list[bool]]:
        """Each row's target ids, from its span (how many cached ids it keeps, the new ids), and which rows run."""
        targets = [[] if span is None else cache.rows[b].ids[: span[0]] + span[1] for b, span in enumerate(spans)]
        return targets, [span is not None for span in spans]


def largest_of(logits: torch.Tensor, count: int, excluded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's `count` largest logits and their ids, the `excluded` ids left out (the actor's side)."""
    found = logits.index_fill(1, excluded, float("-inf")).topk(min(count, logits.shape[-1]), dim=-1)
    return found.values, found.indices


def spread_back(values: torch.Tensor, ids: torch.Tensor, width: int) -> torch.Tensor:
    """Rows of `width` logits holding those values at their ids and -inf elsewhere (the driver's side)."""
    return values.new_full((values.shape[0], width), float("-inf")).scatter_(1, ids, values)


class RemoteModel:
    """What the driving process knows of a model that lives in an actor: its configs, dtype and size."""

    def __init__(self, actor, about: dict):
        self.actor = actor
        self.config = about["config"]
        self.generation_config = about["generation_config"]
        self.dtype = about["dtype"]
        self._parameters = about["parameters"]

    def num_parameters(self) -> int:
        return self._parameters


@dataclass
class Traffic:
    """What crossed between this process and a member's actor, over all its caches."""

    ids_sent: int = 0  # the catch-up spans' token ids
    logits_received: int = 0  # logits of the rows that ran (a kept logit's id counted with it)
    tokens_received: int = 0  # tokens drawn in the actor, one per row that ran


@dataclass
class RemoteMember(Member):
    """A member whose weights and caches are in a Ray actor; tokenising and combining stay here."""

    traffic: Traffic = field(default_factory=Traffic)

    def new_cache(
        self,
        prompt_lengths: list[int],
        pad_id: int,
        logit_size: int,
        largest: Largest | None = None,
        draw: MemberDraw | None = None,
    ) -> RemoteCache:
        actor = self.model.actor
        return RemoteCache(self.name, actor, prompt_lengths, pad_id, logit_size, largest, draw, self.traffic)

    def continuation_logits(self, contexts, token_lists, group_of) -> torch.Tensor:
        return answer(self.name, self.model.actor.continuation_logits.remote(contexts, token_lists, group_of))


class MemberLost(RuntimeError):
    """A member's actor died (its node went away, or it ran out of memory) while the ensemble used it."""


def answer(name: str, pending):
    """The actor's answer, or MemberLost naming the member when its actor is gone."""
    import ray

    try:
        return ray.get(pending)
    except ray.exceptions.RayActorError as err:
        raise MemberLost(
            f"member {name}'s Ray actor is gone ({type(err).__name__}: {str(err).splitlines()[0]}); a run of "
            "`python -m mixens` keeps its finished batches in its journal, so running it again resumes there."
        ) from err


_cache_keys = itertools.count()


class RemoteCache:
    """MemberCache's interface for a cache kept in the member's actor: sends spans, receives logits or the
    tokens drawn there."""

    def __init__(
        self,
        name: str,
        actor,
        prompt_lengths: list[int],
        pad_id: int,
        logit_size: int,
        largest: Largest | None = None,
        draw: MemberDraw | None = None,
        traffic: Traffic | None = None,
    ):
        self.name, self.actor, self.key = name, actor, next(_cache_keys)
        self.logit_size = logit_size
        self.traffic = traffic if traffic is not None else Traffic()
        self.sent: list[list[int]] = [[] for _ in prompt_lengths]  # the ids each row of the actor's cache holds
        self.stats = FeedStats()
        # ordered before this actor's next call; the ids left out and the draw's id map cross once per batch
        actor.open.remote(self.key, prompt_lengths, pad_id, logit_size, largest, draw)

    def advance(self, targets: list[list[int]], active: list[bool], hidden: bool = False):
        return self.begin_advance(targets, active, hidden)()

    def begin_advance(self, targets: list[list[int]], active: list[bool], hidden: bool = False):
        """Send the spans now; the returned call waits for the actor's logits (and hidden states)."""
        pending = self.actor.advance.remote(self.key, self._spans(targets, active), hidden)
        rows = torch.tensor([b for b, on in enumerate(active) if on], dtype=torch.long)

        def result():
            picked, state, self.stats = answer(self.name, pending)
            if isinstance(picked, tuple):  # the largest logits and their ids: the rest cannot be drawn
                values, ids = picked
                picked = spread_back(values, ids, self.logit_size)
                self.traffic.logits_received += values.numel()
            else:
                self.traffic.logits_received += picked.numel()
            logits = picked.new_zeros(len(targets), picked.shape[-1]).index_copy_(0, rows, picked)
            if not hidden:
                return logits
            return logits, state.new_zeros(len(targets), state.shape[-1]).index_copy_(0, rows, state)

        return result

    def begin_draw(self, targets: list[list[int]], active: list[bool], u: torch.Tensor | None):
        """Send the spans and the active rows' uniform numbers now; the returned call waits for their tokens."""
        pending = self.actor.draw.remote(self.key, self._spans(targets, active), None if u is None else u.cpu())

        def result():
            tokens, self.stats = answer(self.name, pending)
            self.traffic.tokens_received += tokens.numel()
            return tokens

        return result

    def _spans(self, targets: list[list[int]], active: list[bool]) -> list[tuple[int, list[int]] | None]:
        """Per row: None if it does not run, else how many ids the actor keeps and the ids it gains."""
        spans = []
        for b, (target, on) in enumerate(zip(targets, active)):
            if not on:
                spans.append(None)
                continue
            keep = common_prefix(self.sent[b], target)
            spans.append((keep, list(target[keep:])))
            self.traffic.ids_sent += len(target) - keep
            self.sent[b] = list(target)
        return spans

    def __del__(self):
        with contextlib.suppress(Exception):  # the actor or Ray may already be gone at exit
            self.actor.close.remote(self.key)


def load_remote_member(spec: ModelSpec, index: int) -> RemoteMember:
    """Start the member's actor (Ray started or joined first), load it there, and keep what decoding needs."""
    import ray

    if not ray.is_initialized():
        ray.init(log_to_driver=True)  # RAY_ADDRESS names a cluster to join; without it a local one starts
    options = dict(spec.ray_actor)
    needed = {"CPU": options.get("num_cpus", 1), "GPU": options.get("num_gpus", 0), **(options.get("resources") or {})}
    total = ray.cluster_resources()
    if missing := {k: v for k, v in needed.items() if v and total.get(k, 0) < v}:
        has = {k: total.get(k, 0) for k in missing}
        raise ConfigError(
            f"models[{index}].ray_actor asks for {missing} but the Ray cluster has {has}; "
            "lower the request or join a larger cluster (RAY_ADDRESS)."
        )
    actor = ray.remote(**options)(MemberActor).remote(spec, index)
    started = actor.about.remote()
    while not ray.wait([started], timeout=WAIT_NOTICE_SECONDS)[0]:  # a load can take minutes; a full cluster forever
        free = ray.available_resources()
        log.warning("%s: still waiting for its Ray actor to start and load (asks %s; free now: %s)",
                    spec.name, needed, {k: free.get(k, 0) for k in needed})  # fmt: skip
    about = ray.get(started)
    log.info("%s runs in a Ray actor on %s (%s, %s)", spec.name, about["node"], about["dtype"], about["device"])
    model = RemoteModel(actor, about)
    return RemoteMember(spec, model, about["tokenizer"], torch.device("cpu"), frozenset(about["eos_ids"]))
