"""One member alone: the reference point every ensemble is compared with."""

from __future__ import annotations

import torch

from mixens.strategies.base import StepContext, Strategy, one_hot_rows


class Single(Strategy):
    name = "single"

    def __init__(self, n_members: int, member: int = 0):
        super().__init__(n_members)
        if not 0 <= member < n_members:
            raise ValueError(f"single member index {member} is out of range for {n_members} member(s)")
        self.member = member

    def route(self, ctx: StepContext) -> torch.Tensor:
        rows = ctx.active.shape[0]
        return one_hot_rows(torch.full((rows,), self.member, dtype=torch.long), self.n_members)
