"""Per-distribution sampling transforms F: temperature, top-k, top-p (transformers' own warpers, in its order)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from mixens.errors import ConfigError


@dataclass(frozen=True)
class Sampling:
    """How each member's distribution is transformed (F) and whether tokens are drawn or argmaxed."""

    do_sample: bool = True
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature >= 0:  # also NaN; a greedy run with a negative one is a typo, not a setting
            raise ConfigError(f"temperature must be >= 0, got {self.temperature!r}.")
        if self.do_sample and not self.temperature > 0:
            raise ConfigError(
                f"temperature must be > 0 when sampling, got {self.temperature!r}; use do_sample=False for greedy."
            )
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise ConfigError(f"top_k must be an integer >= 0 (0 turns it off), got {self.top_k!r}.")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}.")


def check_decoding_budget(max_new_tokens: int, seed: int) -> None:
    """The per-call settings beside Sampling: how many tokens, which random streams."""
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}.")
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}.")


def transformed_probs(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """F(P) for a batch of logits [B, V]: the distribution a member alone would sample from.

    Greedy decoding uses the untransformed distribution: temperature, top-k and top-p do not move an argmax.
    """
    logits = logits.float()
    if not sampling.do_sample:
        return torch.softmax(logits, dim=-1)
    return torch.softmax(_warpers(sampling)(None, logits), dim=-1)


@lru_cache(maxsize=32)
def _warpers(sampling: Sampling) -> LogitsProcessorList:
    """transformers' own temperature, top-k and top-p warpers, in the order `generate` applies them."""
    warpers = LogitsProcessorList()
    if sampling.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k > 0:
        warpers.append(TopKLogitsWarper(sampling.top_k))
    if sampling.top_p < 1.0:
        warpers.append(TopPLogitsWarper(sampling.top_p))
    return warpers


def transformed_distribution(probs: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """F applied to a distribution given as probabilities (the mixture in `averaging_topk_union`)."""
    return transformed_probs(torch.log(probs.clamp_min(0)), sampling)


def pick(dist: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> torch.Tensor:
    """One token per row: a draw from dist, or its argmax when decoding greedily."""
    if not sampling.do_sample:
        return dist.argmax(dim=-1)
    return draw(dist, generator)


def draw(dist: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw per row of (unnormalised, non-negative) weights [B, V]."""
    return invert_cdf(dist, uniforms(dist.shape[0], generator, dist.device))


def uniforms(rows: int, generator: torch.Generator, device="cpu") -> torch.Tensor:
    """The random numbers a draw reads, one per row [rows, 1]. Taken apart from the draw, they let whoever
    computes a row's distribution draw its token (a member in a Ray actor: mixens.member_draw)."""
    return torch.rand(rows, 1, generator=generator, device=device, dtype=torch.float64)


def invert_cdf(dist: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The draw of each row of weights [B, V] that its uniform number u [B, 1] (in [0, 1)) selects, by inverting
    the cumulative sum.

    torch.multinomial on a CPU draws one random number per vocabulary entry: at batch 8 with a 49k
    vocabulary that costs more than a small model's whole forward pass. Here it is one pass of cumsum
    and a binary search. The cumsum runs in float64 so that the mass of unlikely tokens survives the
    running sum over 100k+ entries.
    """
    cdf = dist.cumsum(dim=-1, dtype=torch.float64)
    # searchsorted(right=True) returns the first index whose cdf exceeds u, so zero-weight ids are never hit.
    index = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    return index.squeeze(-1).clamp_max(dist.shape[-1] - 1)
