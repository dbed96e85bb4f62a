"""Mixture (the paper's ME): draw one member by weight, run only it, take its token."""

from __future__ import annotations

import torch

from mixens.strategies.base import StepContext, Strategy, one_hot_rows

DRAWS = ("batch", "sequence")


class Mixture(Strategy):
    """One draw per step for the whole batch (default): each row's distribution is exactly the
    mixture and only one model runs per step. `draw="sequence"` draws per row: the same marginal
    distribution with rows independent, but most members then run at every step."""

    name = "mixture"
    one_member_per_row = True

    def __init__(self, n_members: int, draw: str = "batch"):
        super().__init__(n_members)
        if draw not in DRAWS:
            raise ValueError(f"mixture draw '{draw}' is unknown; choose one of {', '.join(DRAWS)}")
        self.draw = draw

    def route(self, ctx: StepContext) -> torch.Tensor:
        rows = ctx.active.shape[0]
        count = 1 if self.draw == "batch" else rows
        choice = torch.multinomial(ctx.weights, count, replacement=True, generator=ctx.generator)
        return one_hot_rows(choice.expand(rows), self.n_members)
