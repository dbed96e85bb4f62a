"""The strategy interface: route (which members run, with what weight) and combine (their distributions).

A step of decoding asks the strategy for a routing matrix W [rows, members]; the members with a non-zero
column run, and the next token of row b is drawn from the strategy's combination, by default
sum_i W[b, i] * F_i(P_i). Averaging, mixture and routers differ only in W; `averaging_topk_union`
changes the combination. A strategy that must see some members' outputs before it knows which others
to run (a cascade) routes again in `reroute`, after the first members ran; the loop then runs the
members newly routed for each row.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mixens.sampling import Sampling


@dataclass
class StepContext:
    step: int
    active: torch.Tensor  # [B] bool: rows still generating
    weights: torch.Tensor  # [n] float64, the ensemble's lambda, summing to one
    generator: torch.Generator  # the routing stream, separate from token sampling


class MemberOutputs:
    """Next-token distributions of the members that ran this step, in the ensemble's id space."""

    def __init__(self, distributions, hidden_states=None):
        self._distributions = distributions  # callable(member, sampling) -> [B, U]
        self._hidden_states = hidden_states if hidden_states is not None else {}  # member -> [B, H]

    def transformed(self, member: int, sampling: Sampling) -> torch.Tensor:
        """F_i(P_i): the member's own distribution after temperature, top-k and top-p."""
        return self._distributions(member, sampling)

    def raw(self, member: int) -> torch.Tensor:
        """P_i with no transform."""
        return self._distributions(member, Sampling(do_sample=False))

    def hidden(self, member: int) -> torch.Tensor:
        """The member's last hidden state at the newest position [B, H]; only for members the strategy
        asked for with `wants_hidden` (other strategies do not pay for output_hidden_states)."""
        if member not in self._hidden_states:
            raise KeyError(f"no hidden state for member {member}: the strategy did not ask for it")
        return self._hidden_states[member]


class Strategy:
    """Subclasses set `name`, take their options as keyword arguments after n_members, and override
    `from_options` when a user-facing option must be translated (a member's name, a file)."""

    name = "strategy"
    # Whether `route` gives each row one member with weight 1 and nothing else changes it (no reroute, the
    # default combine): each row's token is then a draw from that member alone, which it can make itself.
    one_member_per_row = False

    def __init__(self, n_members: int, **options):
        if options:
            raise TypeError(f"strategy '{self.name}' takes no options {sorted(options)}")
        self.n_members = n_members

    @classmethod
    def from_options(cls, members: Sequence[str], **options) -> Strategy:
        """The strategy for members with these names, from options as a user writes them; ValueError
        (or ConfigError) names a bad option."""
        return cls(len(members), **options)

    @classmethod
    def option_defaults(cls) -> dict:
        """The options `from_options` accepts, with their defaults."""
        overridden = cls.from_options.__func__ is not Strategy.from_options.__func__
        signature = inspect.signature(cls.from_options if overridden else cls.__init__)
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        skip = ("self", "members", "n_members")
        return {p.name: p.default for p in signature.parameters.values() if p.kind in named and p.name not in skip}

    def members_used(self) -> list[int] | None:
        """The members this strategy ever runs, when it is fewer than all (so that only they load)."""
        return None

    def restricted(self) -> Strategy:
        """The same strategy over `members_used()` only, numbered from 0."""
        return self

    def route(self, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError

    def reroute(self, ctx: StepContext, outputs: MemberOutputs, routing: torch.Tensor) -> torch.Tensor:
        """A second look after the members routed first have run; members it adds for a row run too."""
        return routing

    def wants_hidden(self, member: int) -> bool:
        """Whether the strategy reads this member's last hidden state (MemberOutputs.hidden)."""
        return False

    def logits_needed(self, sampling: Sampling) -> int | None:
        """How many of a member's largest next-token logits per row the strategy's draw depends on (None: all
        of them). A member in a Ray actor sends only those back (mixens.ray_members)."""
        return None

    def check_members(self, members, weights: Sequence[float]) -> None:
        """Checks that need the loaded members (e.g. a saved classifier's input size); raise ConfigError."""

    def combine(self, outputs: MemberOutputs, routing: torch.Tensor, sampling: Sampling) -> torch.Tensor:
        running = [i for i in range(routing.shape[1]) if routing[:, i].any()]
        total = None
        for i in running:
            dist = outputs.transformed(i, sampling).float()
            part = routing[:, i : i + 1].to(dist) * dist  # routing lives on the CPU, dist maybe on a GPU
            total = part if total is None else total + part.to(total.device)
        return total


def one_hot_rows(choice: torch.Tensor, n_members: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(choice, n_members).to(torch.float64)
