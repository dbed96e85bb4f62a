"""One member alone: the reference point every ensemble is compared with."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mixens.strategies.base import StepContext, Strategy, one_hot_rows


class Single(Strategy):
    name = "single"
    one_member_per_row = True

    def __init__(self, n_members: int, member: int = 0):
        super().__init__(n_members)
        if not 0 <= member < n_members:
            raise ValueError(f"single member index {member} is out of range for {n_members} member(s)")
        self.member = member

    @classmethod
    def from_options(cls, members: Sequence[str], member: str | None = None) -> Single:
        """`member` names the model (default: the first)."""
        if member is not None and member not in members:
            raise ValueError(f"member '{member}' is not one of the models {list(members)}; name one of them")
        return cls(len(members), list(members).index(member) if member is not None else 0)

    def members_used(self) -> list[int]:
        return [self.member]  # the reference point costs one model

    def restricted(self) -> Single:
        return Single(1, 0)

    def route(self, ctx: StepContext) -> torch.Tensor:
        rows = ctx.active.shape[0]
        return one_hot_rows(torch.full((rows,), self.member, dtype=torch.long), self.n_members)
