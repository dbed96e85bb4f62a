"""batch_size=auto: the largest batch that fits, found as lm-eval's HF model finds it (accelerate's
find_executable_batch_size: try, and on an out-of-memory error try a smaller one)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from mixens.errors import ConfigError

log = logging.getLogger(__name__)

MAX_BATCH_SIZE = 64  # lm-eval's default start for the search


def largest_fitting_batch(members: Sequence, lengths: Sequence[int], start: int = MAX_BATCH_SIZE) -> int:
    """The largest batch, from `start` down, at which every member holds a batch of full-length sequences at
    once: each member's key/value cache is kept while the next one runs, as when they decode together."""
    from accelerate.utils import find_executable_batch_size

    if remote := [m.name for m in members if m.spec.ray_actor is not None]:
        raise ConfigError(
            f"batch_size=auto measures memory in this process, but {remote} run in Ray actors; give a number."
        )

    @find_executable_batch_size(starting_batch_size=start)
    def probe(batch_size: int) -> int:
        kept = []
        for member, length in zip(members, lengths):
            ids = torch.ones((batch_size, length), dtype=torch.long, device=member.device)
            with torch.no_grad():  # the base model: its cache, without a [batch, length, vocabulary] logits tensor
                kept.append(member.model.base_model(input_ids=ids, use_cache=True).past_key_values)
        del kept
        return batch_size

    try:
        size = probe()
    except RuntimeError as err:
        if "No executable batch size found" not in str(err):
            raise
        raise ConfigError(
            f"batch_size=auto: not even one sequence of {max(lengths)} tokens fits in memory for every member at "
            "once; lower max_length or move members to other devices."
        ) from None
    log.info("batch_size=auto: %d sequences of up to %d tokens fit for every member at once", size, max(lengths))
    return size
