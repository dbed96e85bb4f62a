"""Token routers: a policy picks, per token and per row, which member(s) write the next token.

The mixture is the router that does not look at the text (`random`). A cascade looks: a designated
member runs first, and when a rule finds it unsure the step is handed over (`confidence` reads its
top probability or entropy; `learned` asks a classifier trained on its hidden state). A handed-over
row runs the handover members too and takes their distribution; every member that runs is counted,
so routers report the same cost statistics as mixture and averaging.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mixens.errors import ConfigError
from mixens.router_model import TrainedRouter, load_router, step_features
from mixens.strategies.base import MemberOutputs, StepContext, Strategy, one_hot_rows
from mixens.strategies.mixture import Mixture

CRITERIA = ("top_prob", "entropy")
GROUP_HANDOVERS = ("others", "average")  # the other members by weight, or every member by weight


class RouterPolicy(Strategy):
    """One way of routing (route, reroute, wants_hidden, check_members); the Router strategy delegates to it."""


class RandomPolicy(RouterPolicy):
    """A member drawn by weight: the mixture, with the same draws from the same routing stream."""

    one_member_per_row = True

    def __init__(self, n_members: int, draw: str = "batch"):
        super().__init__(n_members)
        self.mixture = Mixture(n_members, draw=draw)

    def route(self, ctx: StepContext) -> torch.Tensor:
        return self.mixture.route(ctx)


class CascadePolicy(RouterPolicy):
    """The designated member runs every step; rows where `keeps` is False are handed over."""

    def __init__(self, n_members: int, designated: int = 0, threshold: float = 0.5, handover: int | str = "others"):
        super().__init__(n_members)
        if not 0 <= designated < n_members:
            raise ValueError(f"designated member {designated} is out of range for {n_members} member(s)")
        if isinstance(handover, str) and handover not in GROUP_HANDOVERS:
            raise ValueError(
                f"handover '{handover}' is unknown; name a member or use one of {', '.join(GROUP_HANDOVERS)}"
            )
        if isinstance(handover, int) and not (0 <= handover < n_members and handover != designated):
            raise ValueError(
                f"handover member {handover} must be another member than the designated one ({designated})"
            )
        if handover == "others" and n_members < 2:
            raise ValueError("handover 'others' needs at least two members")
        self.designated = designated
        self.threshold = float(threshold)
        self.handover = handover

    def route(self, ctx: StepContext) -> torch.Tensor:
        rows = ctx.active.shape[0]
        return one_hot_rows(torch.full((rows,), self.designated, dtype=torch.long), self.n_members)

    def reroute(self, ctx: StepContext, outputs: MemberOutputs, routing: torch.Tensor) -> torch.Tensor:
        hand_over = ctx.active & ~self.keeps(outputs).cpu()
        if not hand_over.any():
            return routing
        routing = routing.clone()
        routing[hand_over] = self.handover_weights(ctx.weights)
        return routing

    def keeps(self, outputs: MemberOutputs) -> torch.Tensor:
        """[B] bool: rows whose next token the designated member writes alone."""
        raise NotImplementedError

    def check_members(self, members, weights: Sequence[float]) -> None:
        if self.handover == "others" and not any(w > 0 for i, w in enumerate(weights) if i != self.designated):
            raise ConfigError(
                "router handover is 'others' but every member other than the designated one has weight 0; "
                "give one a positive weight or name the handover member."
            )

    def handover_weights(self, weights: torch.Tensor) -> torch.Tensor:
        if self.handover == "average":
            return weights.clone()
        if self.handover == "others":
            others = weights.clone()
            others[self.designated] = 0.0
            if others.sum() <= 0:
                raise ValueError("handover 'others' needs another member with a positive weight")
            return others / others.sum()
        return one_hot_rows(torch.tensor([self.handover]), self.n_members)[0]


class ConfidencePolicy(CascadePolicy):
    """The designated member keeps a step when its top probability exceeds the threshold (criterion
    top_prob: 0 never hands over, 1 always does) or its entropy in nats is below it (criterion entropy)."""

    def __init__(self, n_members: int, criterion: str = "top_prob", **options):
        super().__init__(n_members, **options)
        if criterion not in CRITERIA:
            raise ValueError(f"criterion '{criterion}' is unknown; choose one of {', '.join(CRITERIA)}")
        if criterion == "top_prob" and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(
                f"threshold {self.threshold} is out of range for criterion top_prob; give a value in [0, 1]"
            )
        if criterion == "entropy" and not self.threshold >= 0.0:
            raise ValueError(f"threshold {self.threshold} is out of range for criterion entropy; give nats >= 0")
        self.criterion = criterion

    def keeps(self, outputs: MemberOutputs) -> torch.Tensor:
        probs = outputs.raw(self.designated).float()
        if self.criterion == "top_prob":
            return probs.max(dim=-1).values > self.threshold
        return torch.special.entr(probs).sum(dim=-1) < self.threshold


class LearnedPolicy(CascadePolicy):
    """The designated member keeps a step when the classifier's probability that it is the better
    member exceeds the threshold (0.5 with two members: the classifier's own choice)."""

    def __init__(self, n_members: int, router: TrainedRouter, **options):
        super().__init__(n_members, **options)
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold {self.threshold} is out of range for policy learned; give a value in [0, 1]")
        if router.classifier.n_members != n_members:
            raise ValueError(
                f"the router file was trained for {router.classifier.n_members} members ({router.members}), "
                f"the ensemble has {n_members}"
            )
        self.router = router

    def wants_hidden(self, member: int) -> bool:
        return member == self.designated

    def keeps(self, outputs: MemberOutputs) -> torch.Tensor:
        return self.member_probs(outputs)[:, self.designated] > self.threshold

    def member_probs(self, outputs: MemberOutputs) -> torch.Tensor:
        features = step_features(outputs.hidden(self.designated), outputs.raw(self.designated))
        return self.router.classifier.member_probs(features)

    def check_members(self, members, weights: Sequence[float]) -> None:
        super().check_members(members, weights)
        member = members[self.designated]
        size = member.model.config.get_text_config().hidden_size
        if size != self.router.hidden_size:
            raise ConfigError(
                f"the router file was trained on a member with hidden size {self.router.hidden_size} "
                f"({self.router.designated}), but the designated member {member.name} has {size}; "
                "train a router for these members with `python -m mixens.train_router`."
            )


class Router(Strategy):
    name = "router"

    def __init__(
        self,
        n_members: int,
        policy: str = "confidence",
        designated: int = 0,
        threshold: float = 0.5,
        criterion: str = "top_prob",
        handover: int | str = "others",
        router: TrainedRouter | None = None,
        draw: str = "batch",
    ):
        super().__init__(n_members)
        if policy not in POLICIES:
            raise ValueError(f"policy '{policy}' is unknown; choose one of {', '.join(POLICIES)}")
        cascade = {"designated": designated, "threshold": threshold, "handover": handover}
        if policy == "random":
            self.policy = RandomPolicy(n_members, draw=draw)
        elif policy == "confidence":
            self.policy = ConfidencePolicy(n_members, criterion=criterion, **cascade)
        else:
            if router is None:
                raise ValueError("policy learned needs a trained router (router_path)")
            self.policy = LearnedPolicy(n_members, router, **cascade)
        self.policy_name = policy

    @classmethod
    def from_options(
        cls,
        members: Sequence[str],
        policy: str = "confidence",
        designated: str | None = None,
        threshold: float = 0.5,
        criterion: str = "top_prob",
        handover: str = "others",
        router_path: str | None = None,
        draw: str = "batch",
    ) -> Router:
        """Members by name, the router file by path (read here, so a bad one shows before any model
        loads). Other policies leave router_path unread, so that one sweep can cover every policy."""
        names = list(members)
        if designated is not None and designated not in names:
            raise ValueError(f"designated '{designated}' is not a selected model; choose one of {names}")
        index = names.index(designated) if designated is not None else 0
        if handover not in GROUP_HANDOVERS and handover not in names:
            raise ValueError(
                f"handover '{handover}' is neither a selected model {names} nor one of {list(GROUP_HANDOVERS)}"
            )
        try:
            threshold = float(threshold)
        except (TypeError, ValueError):
            raise ValueError(f"threshold must be a number, got {threshold!r}") from None
        router = None
        if policy == "learned":
            if not router_path:
                raise ValueError(
                    "router_path is empty; policy learned needs a file from `python -m mixens.train_router`"
                )
            router = load_router(router_path)
            if list(router.members) != names:
                raise ConfigError(
                    f"the router file {router_path} was trained for the members {list(router.members)} in that order, "
                    f"but the ensemble has {names}; train a router for these members with `python -m mixens.train_router`."
                )
        handover_member = names.index(handover) if handover in names else handover
        return cls(len(names), policy, index, threshold, criterion, handover_member, router, draw)

    @property
    def one_member_per_row(self) -> bool:
        return self.policy.one_member_per_row

    def route(self, ctx: StepContext) -> torch.Tensor:
        return self.policy.route(ctx)

    def reroute(self, ctx: StepContext, outputs: MemberOutputs, routing: torch.Tensor) -> torch.Tensor:
        return self.policy.reroute(ctx, outputs, routing)

    def wants_hidden(self, member: int) -> bool:
        return self.policy.wants_hidden(member)

    def check_members(self, members, weights: Sequence[float]) -> None:
        self.policy.check_members(members, weights)


POLICIES = {"random": RandomPolicy, "confidence": ConfidencePolicy, "learned": LearnedPolicy}
