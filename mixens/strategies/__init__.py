"""Ensemble strategies by name."""

from mixens.strategies.averaging import Averaging, AveragingTopkUnion
from mixens.strategies.base import MemberOutputs, StepContext, Strategy
from mixens.strategies.mixture import Mixture
from mixens.strategies.router import Router
from mixens.strategies.single import Single

STRATEGY_CLASSES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (Mixture, Averaging, AveragingTopkUnion, Single, Router)
}


def make_strategy(name: str, n_members: int, **options) -> Strategy:
    return STRATEGY_CLASSES[name](n_members, **options)


__all__ = ["STRATEGY_CLASSES", "MemberOutputs", "StepContext", "Strategy", "make_strategy"]
