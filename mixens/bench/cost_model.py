"""The ideal time per decoding step of each strategy, from the catch-up costs c_i(k) alone.

With one draw per step for the whole batch, member i is drawn with probability lambda_i, and when it is
drawn it has missed k-1 tokens with k geometric: P(k) = lambda_i (1 - lambda_i)^(k-1). So the ideal
mixture step costs sum_i lambda_i E[c_i(k)], the ideal averaging step sum_i c_i(1), a single member c(1).
Anything mixens measures beyond these is its own overhead.
"""

from __future__ import annotations

from collections.abc import Sequence


def cost_at(costs: Sequence[float], k: int) -> float:
    """c(k), extended linearly past the measured range. A catch-up never gets cheaper with more tokens,
    so a falling tail (timing noise on tiny models) is extended flat, never down to negative costs."""
    if k <= len(costs):
        return costs[k - 1]
    if len(costs) == 1:
        return costs[0]
    slope = max(0.0, (costs[-1] - costs[len(costs) // 2 - 1]) / (len(costs) - len(costs) // 2))
    return costs[-1] + slope * (k - len(costs))


def expected_catchup_cost(costs: Sequence[float], weight: float, tail: float = 1e-6) -> float:
    """E[c(k)] for k geometric with success probability `weight` (the member's lambda)."""
    if weight >= 1.0:
        return costs[0]
    total, mass, k = 0.0, 0.0, 1
    while 1.0 - mass > tail and k < 10_000:
        p = weight * (1.0 - weight) ** (k - 1)
        total += p * cost_at(costs, k)
        mass += p
        k += 1
    return total / mass


def expected_catchup_length(weight: float) -> float:
    """E[k] = 1 / lambda: tokens a member feeds when drawn, the newest one included."""
    return 1.0 / weight


def ideal_mixture_step(costs: Sequence[Sequence[float]], weights: Sequence[float]) -> float:
    return sum(w * expected_catchup_cost(c, w) for c, w in zip(costs, weights) if w > 0)


def ideal_averaging_step(costs: Sequence[Sequence[float]], weights: Sequence[float] | None = None) -> float:
    if weights is None:
        weights = [1.0] * len(costs)
    return sum(c[0] for c, w in zip(costs, weights) if w > 0)


def realised_mixture_step(costs: Sequence[Sequence[float]], forwards: Sequence[tuple[int, int]]) -> float | None:
    """Mean c_i(k) over the (member, k) decode forwards a run actually made: the ideal for its own draws."""
    if not forwards:
        return None
    return sum(cost_at(costs[i], k) for i, k in forwards) / len(forwards)
