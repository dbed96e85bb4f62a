"""Ensemble strategies by name: the one registry, and the one way to build a strategy from options."""

from collections.abc import Mapping, Sequence

from mixens.errors import ConfigError
from mixens.strategies.averaging import Averaging, AveragingTopkUnion
from mixens.strategies.base import MemberOutputs, StepContext, Strategy
from mixens.strategies.mixture import Mixture
from mixens.strategies.router import Router
from mixens.strategies.single import Single

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (Mixture, Averaging, AveragingTopkUnion, Single, Router)
}


def build_strategy(name: str, members: Sequence[str], options: Mapping | None = None) -> Strategy:
    """The strategy `name` for members with these names, from options as a user writes them.

    Reads no weights (a router file at most), so a mistake costs a second: ConfigError names it."""
    if name not in STRATEGIES:
        raise ConfigError(f"strategy '{name}' is unknown; choose one of {', '.join(STRATEGIES)}.")
    cls = STRATEGIES[name]
    options = dict(options or {})
    known = list(cls.option_defaults())
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"strategy '{name}' has no option {unknown}; its options are {known or 'none'}.")
    try:
        return cls.from_options(list(members), **options)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"strategy '{name}': {err}.") from None


__all__ = ["STRATEGIES", "MemberOutputs", "StepContext", "Strategy", "build_strategy"]
