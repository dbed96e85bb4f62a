"""The lazy-sync micro-benchmark: c(k), the time of one forward that feeds k new tokens into a KV cache.

A 1-token forward is an ordinary decoding step; a k-token forward is the catch-up a mixture member runs
when it is drawn after missing k-1 tokens. Both are measured the way mixens runs them: a batch with a
cache of fixed length, an attention mask, explicit positions and logits of the last position only.
The cache is cropped back after each forward so every measurement sees the same context length.
"""

from __future__ import annotations

import statistics

import torch
from transformers import DynamicCache

from mixens.bench.timing import stopwatch


@torch.inference_mode()
def catchup_costs(model, device: torch.device, batch: int, context: int, max_k: int, repeats: int) -> list[float]:
    """Median seconds of a k-token forward for k = 1..max_k (index k-1)."""
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    cache = DynamicCache()
    prompt = torch.randint(0, vocab, (batch, context), generator=generator)
    model(input_ids=prompt.to(device), past_key_values=cache, use_cache=True, logits_to_keep=1)

    def forward(k: int) -> None:
        ids = torch.randint(0, vocab, (batch, k), generator=generator).to(device)
        mask = torch.ones(batch, context + k, dtype=torch.long, device=device)
        positions = torch.arange(context, context + k, device=device).expand(batch, -1)
        model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        cache.crop(-k)

    forward(1)  # warm-up: first calls pick kernels and allocate
    samples: dict[int, list[float]] = {k: [] for k in range(1, max_k + 1)}
    for _ in range(repeats):
        for k in range(1, max_k + 1):  # interleaved over k, so drifting load hits every k alike
            with stopwatch(device) as elapsed:
                forward(k)
            samples[k].append(elapsed())
    return [statistics.median(samples[k]) for k in range(1, max_k + 1)]
