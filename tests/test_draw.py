"""The token draw (inverse of the cumulative sum) samples the distribution it is given."""

from __future__ import annotations

import torch
from scipy.stats import chisquare

from mixens.sampling import draw


def test_draws_follow_the_weights_and_skip_zero_weights():
    weights = torch.tensor([0.0, 0.5, 0.0, 0.2, 0.3, 0.0]) * 7.0  # unnormalised on purpose
    rows = weights.expand(20_000, -1).contiguous()
    counts = torch.bincount(draw(rows, torch.Generator().manual_seed(0)), minlength=6)
    assert counts[[0, 2, 5]].sum() == 0
    expected = (weights.double() / weights.double().sum())[[1, 3, 4]] * counts[[1, 3, 4]].sum().item()
    assert chisquare(counts[[1, 3, 4]].numpy(), expected.numpy()).pvalue > 1e-3


def test_each_row_draws_from_its_own_distribution():
    dist = torch.zeros(3, 50_000)
    dist[0, 7] = dist[1, 49_999] = 1.0
    dist[2, :] = 1.0
    dist[2, 0] = 0.0
    picks = draw(dist, torch.Generator().manual_seed(1))
    assert picks[0] == 7 and picks[1] == 49_999 and 0 < picks[2] < 50_000
