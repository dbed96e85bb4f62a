"""Averaging (the conventional ensemble, CE): every member runs; mix their distributions."""

from __future__ import annotations

import torch

from mixens.sampling import Sampling, transformed_distribution
from mixens.strategies.base import MemberOutputs, StepContext, Strategy


class Averaging(Strategy):
    """Next token from sum_i lambda_i F_i(P_i): exactly the distribution `mixture` samples from."""

    name = "averaging"

    def logits_needed(self, sampling: Sampling) -> int | None:
        # F_i(P_i) under top-k sampling depends on the k largest logits alone; the argmax of an average of
        # members' distributions needs them whole.
        return (sampling.top_k or None) if sampling.do_sample else None

    def route(self, ctx: StepContext) -> torch.Tensor:
        return ctx.weights.expand(ctx.active.shape[0], -1).clone()


class AveragingTopkUnion(Averaging):
    """The baseline of the paper (as in UniTE): average the members' raw probabilities over the union
    of their top-k candidates, then apply temperature/top-k/top-p to that mixture. The transforms act
    on the mixture rather than on each member, so this is NOT the distribution `mixture` samples from.
    """

    name = "averaging_topk_union"

    def __init__(self, n_members: int, union_top_k: int | None = None):
        super().__init__(n_members)
        if union_top_k is not None and union_top_k < 1:
            raise ValueError(f"union_top_k must be >= 1, got {union_top_k}")
        self.union_top_k = union_top_k

    def candidates(self, sampling: Sampling) -> int:
        # Without an explicit size the sampling top-k sets the candidate pool (10 when top-k is off).
        return self.union_top_k or sampling.top_k or 10

    def logits_needed(self, sampling: Sampling) -> int | None:
        return None  # the members' raw probabilities, normalised over their whole vocabularies

    def combine(self, outputs: MemberOutputs, routing: torch.Tensor, sampling: Sampling) -> torch.Tensor:
        k = self.candidates(sampling)
        mixed, in_union = None, None
        for i in range(routing.shape[1]):
            if not routing[:, i].any():
                continue
            probs = outputs.raw(i).float()
            if mixed is not None:
                probs = probs.to(mixed.device)
            top = torch.zeros_like(probs, dtype=torch.bool).scatter(
                -1, probs.topk(min(k, probs.shape[-1])).indices, True
            )
            part = routing[:, i : i + 1].to(probs) * probs
            mixed = part if mixed is None else mixed + part
            in_union = top if in_union is None else in_union | top
        restricted = mixed * in_union
        restricted = restricted / restricted.sum(dim=-1, keepdim=True)
        return transformed_distribution(restricted, sampling)
