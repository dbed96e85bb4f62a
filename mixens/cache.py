"""A member's KV cache over a batch, kept in step with the tokens the member should have seen.

Each row has a list of ids the cache holds and the cache slots they sit in. Advancing to new target ids
keeps the longest common prefix, masks out the rest (a crop that may differ per row), and feeds every
missing token of every row in one forward pass (lazy sync). Chunks are right-aligned so the last position
of every row is its newest token; positions come from counting live slots, so holes left by padding or
crops never shift a position. When holes pile up the cache is compacted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from mixens.member_draw import MemberDraw


@dataclass
class FeedStats:
    forward_passes: int = 0
    prompt_tokens: int = 0  # prompt tokens fed (the first prefill)
    generated_tokens: int = 0  # tokens of generated text fed, one per step or several in a catch-up
    catchup_tokens: int = 0  # of those, tokens beyond the newest one of each row: what was missed
    cropped_tokens: int = 0  # cache entries dropped because the member's tokenisation of the text changed
    row_passes: int = 0  # rows fed, summed over forwards: a member's forward passes counted per sequence


@dataclass(frozen=True)
class Largest:
    """The logits of a row that the driver reads: the `count` largest, leaving out the ids it never draws
    (`excluded`). A cache may return the others as -inf (a member in a Ray actor sends back only these)."""

    count: int
    excluded: tuple[int, ...] = ()


@dataclass
class RowState:
    ids: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    prompt_len: int = 0


class MemberCache:
    def __init__(
        self,
        model,
        device: torch.device,
        prompt_lengths: list[int],
        pad_id: int,
        logit_size: int,
        draw: MemberDraw | None = None,
    ):
        self.model = model
        self.draw = draw
        self.device = device
        self.pad_id = pad_id
        self.logit_size = logit_size
        self.kv = DynamicCache()  # full (not sliding) layers: slot indices must stay stable
        self.live = torch.zeros(len(prompt_lengths), 0, dtype=torch.bool)
        self.rows = [RowState(prompt_len=n) for n in prompt_lengths]
        self.stats = FeedStats()

    @torch.inference_mode()
    def advance(self, targets: list[list[int]], active: list[bool], hidden: bool = False):
        """Bring every row's cache to its target ids and return next-token logits [B, logit_size].

        Rows that are not active keep their cache as is; their logits are meaningless. With `hidden`,
        also return the last layer's hidden state at the newest position [B, H] (costs the model's
        output_hidden_states, so only strategies that read it ask).
        """
        chunks = []
        for b, (row, target) in enumerate(zip(self.rows, targets)):
            if not active[b]:
                chunks.append([])
                continue
            keep = common_prefix(row.ids, target)
            if keep == len(target):  # nothing new (e.g. a byte this member cannot spell): re-feed the last
                keep -= 1
            self._crop(b, keep)
            chunks.append(target[keep:])
        width = max(len(c) for c in chunks)
        # Built from Python lists in one call, not row by row: the per-step cost stays flat in the batch size.
        input_ids = torch.tensor([[self.pad_id] * (width - len(c)) + c for c in chunks], dtype=torch.long)
        lengths = torch.tensor([len(c) for c in chunks])
        offsets = torch.arange(width) - (width - lengths)[:, None]  # index within the row's chunk; < 0: padding
        new_live = offsets >= 0
        before = self.live.sum(dim=1)
        positions = (before[:, None] + offsets) * new_live
        start = self.live.shape[1]
        self.live = torch.cat([self.live, new_live], dim=1)
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=self.live.to(self.device, torch.long),
            position_ids=positions.to(self.device),
            past_key_values=self.kv,
            use_cache=True,
            logits_to_keep=1,
            **({"output_hidden_states": True} if hidden else {}),
        )
        self._record(chunks, targets, start, width)
        self._compact_if_sparse()
        logits = _fit(out.logits[:, -1, :], self.logit_size)
        return (logits, out.hidden_states[-1][:, -1, :]) if hidden else logits

    def begin_advance(self, targets: list[list[int]], active: list[bool], hidden: bool = False):
        """`advance`, as a call that returns its result: computed here at once (a member in a Ray actor
        starts it there and waits only when asked, so several actors work at the same time)."""
        result = self.advance(targets, active, hidden)
        return lambda: result

    def begin_draw(self, targets: list[list[int]], active: list[bool], u: torch.Tensor | None):
        """`advance`, then the active rows' tokens drawn by the cache's MemberDraw with their uniform numbers
        u [active rows, 1] (None: greedy), as a call that returns them (see `begin_advance`)."""
        logits = self.advance(targets, active)
        rows = [b for b, on in enumerate(active) if on]
        tokens = self.draw.tokens(logits[rows], rows, u)
        return lambda: tokens

    def _record(self, chunks, targets, start: int, width: int) -> None:
        self.stats.forward_passes += 1
        self.stats.row_passes += sum(1 for chunk in chunks if chunk)
        for b, chunk in enumerate(chunks):
            if not chunk:
                continue
            row = self.rows[b]
            first_slot = start + width - len(chunk)
            row.slots.extend(range(first_slot, first_slot + len(chunk)))
            old_len = len(row.ids)
            row.ids = list(targets[b])
            new_len = len(row.ids)
            prompt_part = max(0, min(new_len, row.prompt_len) - old_len)
            generated = len(chunk) - prompt_part
            self.stats.prompt_tokens += prompt_part
            self.stats.generated_tokens += generated
            self.stats.catchup_tokens += max(0, generated - 1)

    def _crop(self, b: int, keep: int) -> None:
        row = self.rows[b]
        if keep < len(row.ids):
            self.stats.cropped_tokens += len(row.ids) - keep
            self.live[b, row.slots[keep:]] = False
            del row.ids[keep:], row.slots[keep:]

    def _compact_if_sparse(self) -> None:
        """Drop dead slots once they are more than a third of the cache (and worth the copy)."""
        total = self.live.shape[1]
        longest = int(self.live.sum(dim=1).max())
        if total - longest < max(16, total // 3):
            return
        index = torch.zeros(len(self.rows), longest, dtype=torch.long)
        live = torch.zeros(len(self.rows), longest, dtype=torch.bool)
        for b, row in enumerate(self.rows):
            kept = self.live[b].nonzero().squeeze(-1)
            n = kept.numel()
            index[b, longest - n :] = kept
            live[b, longest - n :] = True
            # Live slots of a row are exactly its ids' slots, in order.
            row.slots = list(range(longest - n, longest))
        gather = index.to(self.device)
        for layer in self.kv.layers:
            for name in ("keys", "values"):
                tensor = getattr(layer, name)
                idx = gather[:, None, :, None].expand(-1, tensor.shape[1], -1, tensor.shape[3])
                setattr(layer, name, tensor.gather(2, idx))
        self.live = live


def common_prefix(a: list[int], b: list[int]) -> int:
    if len(a) <= len(b) and b[: len(a)] == a:  # the usual case: the target only grew
        return len(a)
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _fit(logits: torch.Tensor, size: int) -> torch.Tensor:
    """Logits over exactly the tokenizer's ids: drop padded embedding rows, or pad with -inf."""
    if logits.shape[-1] >= size:
        return logits[:, :size]
    pad = logits.new_full((logits.shape[0], size - logits.shape[-1]), float("-inf"))
    return torch.cat([logits, pad], dim=-1)
