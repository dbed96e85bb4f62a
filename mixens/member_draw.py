"""A member's next-token distribution in the ensemble's ids, and its own draw from it.

When one member writes each row (mixture, single: Strategy.one_member_per_row), a row's token is drawn from
that member's F(P) alone. So the member can draw it where it runs, given the row's uniform number from the
driver's sampling stream: a member in a Ray actor then sends back one id per row instead of a row of logits,
and the token is the one the driver would have drawn from the same logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mixens.sampling import Sampling, invert_cdf, transformed_probs
from mixens.vocab import UnionVocab


def in_ensemble_ids(
    logits: torch.Tensor, sampling: Sampling, to_union: torch.Tensor | None = None, union_size: int = 0
) -> torch.Tensor:
    """F(P) of a member's logits [B, V], in the ensemble's ids: the member's own ids when the vocabulary is
    shared (`to_union` None); otherwise in a union of `union_size` token strings, with `to_union` ([V], or
    [B, V] where rows stop on special tokens) sending each id to its string, or to `union_size` for ids with
    no surface text. Those leave before F, so top-k counts only real candidates."""
    if to_union is None:
        return transformed_probs(logits, sampling)
    logits = logits.masked_fill(to_union == union_size, float("-inf"))
    probs = transformed_probs(logits, sampling)
    union = probs.new_zeros(probs.shape[0], union_size + 1)
    union.scatter_add_(1, to_union.expand_as(probs), probs)
    return union[:, :union_size]


class StopColumns:
    """Which of a member's ids end which rows, besides its EOS: special tokens named as stop strings."""

    def __init__(self, rows: list[frozenset[int]], size: int):
        self.mask = torch.zeros(len(rows), size, dtype=torch.bool)
        for b, ids in enumerate(rows):
            self.mask[b, sorted(i for i in ids if i < size)] = True
        self._maps: dict[str, torch.Tensor] = {}

    @classmethod
    def build(cls, transcript, vocab, members) -> dict[int, StopColumns]:
        if vocab.shared:  # the transcript stops on the sampled token itself
            return {}
        built = {}
        for i, (member, rows) in enumerate(zip(members, transcript.stop_token_ids)):
            rows = [ids - member.eos_ids for ids in rows]  # EOS ids already map to the union's EOS
            if any(rows):
                built[i] = cls(rows, vocab.member_size(i))
        return built

    def on(self, to_union: torch.Tensor) -> torch.Tensor:
        """The member's map to the union [V], widened to [B, V] with the stop tokens sent to EOS."""
        key = str(to_union.device)
        if key not in self._maps:
            mask = self.mask.to(to_union.device)
            self._maps[key] = torch.where(mask, torch.full_like(to_union, UnionVocab.EOS), to_union)
        return self._maps[key]


@dataclass
class MemberDraw:
    """What a member needs to draw its rows' tokens itself: the transform F and, in a union of vocabularies,
    its map to the union (and the rows' special stop tokens). It crosses to a Ray actor once per batch."""

    sampling: Sampling
    union_size: int = 0
    to_union: torch.Tensor | None = None  # [V] on the CPU; None when the vocabulary is shared
    stop_columns: StopColumns | None = None
    _on_device: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    def tokens(self, logits: torch.Tensor, rows: list[int], u: torch.Tensor | None) -> torch.Tensor:
        """The tokens (ensemble ids) of batch rows `rows`, whose logits [len(rows), V] these are, drawn with
        their uniform numbers u [len(rows), 1] (mixens.sampling.uniforms), or greedily when u is None."""
        to_union = None
        if self.to_union is not None:
            key = str(logits.device)
            if key not in self._on_device:  # copied to the member's device once, not at every step
                self._on_device[key] = self.to_union.to(logits.device)
            to_union = self._on_device[key]
            if self.stop_columns is not None:
                to_union = self.stop_columns.on(to_union)[rows]
        dist = in_ensemble_ids(logits, self.sampling, to_union, self.union_size)
        return dist.argmax(dim=-1) if u is None else invert_cdf(dist, u.to(dist.device))
