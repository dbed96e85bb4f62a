"""The ensemble's likelihood of text: what lm-eval's loglikelihood and loglikelihood_rolling return.

The strategy changes how text is generated, not the
model being evaluated, so every strategy is scored by the same ensemble distribution (averaging_topk_union's
top-k restriction is a decoding device and is not applied):
  * shared vocabulary: the token-level mixture. A continuation's log-likelihood is
    sum_t log sum_i lambda_i P_i(token_t | prefix), tokenised as lm-eval's HF model does (context + continuation
    encoded whole, the continuation's tokens split off the end); is_greedy means every continuation token is
    the argmax of sum_i lambda_i P_i. For one member these are lm-eval's `hf` numbers (up to float32 rounding).
  * different tokenizers: token probabilities of different vocabularies cannot be added, so the ensemble
    scores whole strings with the sequence-level mixture log sum_i lambda_i exp(log P_i(continuation | context)),
    each member tokenising with its own tokenizer (the same for rolling: the whole text's log-likelihood).
    It is a proper mixture of the members' distributions over strings, and equals the token-level number when
    the vocabularies agree and there is one token. is_greedy is True only when every member (with a
    non-zero weight) would produce the continuation greedily under its own tokenisation: a conservative
    stand-in for the greedy decoder in the union vocabulary, which would need a decoding run per request.
    A shared vocabulary whose members tokenise a request differently (e.g. one member uses a chat template
    that changes the split) falls back to this sequence-level mixture for that request.
Members asking for a chat template score the context as they generate from it: wrapped in their template.

Requests that share a context (multiple choice) cost one forward of that context per member: each batch runs
the distinct contexts once, then the continuations of every request on copies of the contexts' KV cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from transformers import DynamicCache

from mixens.errors import ConfigError
from mixens.members import Member


def mixture_scores(
    members: Sequence[Member],
    member_weights: Sequence[float],
    shared_vocabulary: bool,
    pieces: list[list[list[tuple[list[int], list[int]]]]],
    batch_size: int,
    bar=None,
) -> list[tuple[float, bool]]:
    """(log-likelihood, is_greedy) of each request from its pieces: pieces[member][request] = [(context, tokens)],
    a request's pieces being its rolling windows or its one (context, continuation) pair. `bar` (a tqdm)
    moves by one per piece scored: count_pieces(...) in all."""
    active, token_level, jobs = _scoring_jobs(member_weights, shared_vocabulary, pieces)
    totals = {r: [0.0, True] for r, joint in enumerate(token_level) if joint}
    per_member = {r: {i: [0.0, True] for i in active} for r, joint in enumerate(token_level) if not joint}
    for member_index, items in jobs:
        chosen = active if member_index is None else [member_index]
        scoring = [members[i] for i in chosen]
        weights = [member_weights[i] for i in chosen] if member_index is None else [1.0]
        scores = score_pieces(scoring, weights, [piece for _, piece in items], batch_size, bar)
        for (r, _), (logp, greedy) in zip(items, scores):
            slot = totals[r] if member_index is None else per_member[r][member_index]
            slot[0] += logp
            slot[1] = slot[1] and greedy

    weights = [member_weights[i] for i in active]
    return [
        tuple(totals[r]) if token_level[r] else sequence_mixture([per_member[r][i] for i in active], weights)
        for r in range(len(token_level))
    ]


def count_pieces(member_weights: Sequence[float], shared_vocabulary: bool, pieces) -> int:
    """How many pieces mixture_scores scores for these requests (the length of its progress), counted
    without building them: one per window for a request scored token by token, one per member otherwise."""
    active, token_level = _token_level(member_weights, shared_vocabulary, pieces)
    return sum(
        len(pieces[active[0]][r]) if joint else sum(len(pieces[i][r]) for i in active)
        for r, joint in enumerate(token_level)
    )


def _token_level(member_weights: Sequence[float], shared_vocabulary: bool, pieces) -> tuple[list[int], list[bool]]:
    """The active members, and whether each request is scored token by token (the same continuation tokens
    for every active member, in one vocabulary)."""
    active = [i for i, w in enumerate(member_weights) if w > 0]
    token_level = [
        shared_vocabulary and all([c for _, c in pieces[i][r]] == [c for _, c in pieces[active[0]][r]] for i in active)
        for r in range(len(pieces[0]))
    ]
    return active, token_level


def _scoring_jobs(member_weights: Sequence[float], shared_vocabulary: bool, pieces):
    """(active members, whether each request is scored token by token, jobs) for mixture_scores."""
    active, token_level = _token_level(member_weights, shared_vocabulary, pieces)
    n_requests = len(pieces[0])
    # Jobs: (member index or None for all, [(request, Piece)]): one job for the token-level requests, one
    # per member for the rest (each member scores its own tokenisation).
    jobs: list[tuple[int | None, list[tuple[int, Piece]]]] = []
    together = [r for r in range(n_requests) if token_level[r]]
    if together:
        first = active[0]
        items = [
            (r, Piece(tuple(tuple(pieces[i][r][p][0]) for i in active), tuple(pieces[first][r][p][1])))
            for r in together
            for p in range(len(pieces[first][r]))
        ]
        jobs.append((None, items))
    alone = [r for r in range(n_requests) if not token_level[r]]
    for i in active if alone else []:
        jobs.append((i, [(r, Piece((tuple(ctx),), tuple(cont))) for r in alone for ctx, cont in pieces[i][r]]))
    return active, token_level, jobs


def sequence_mixture(member_scores: Sequence[Sequence], weights: Sequence[float]) -> tuple[float, bool]:
    """log sum_i w_i exp(logP_i) and whether every member is greedy: the different-tokenizer likelihood."""
    logps = torch.tensor([float(s[0]) for s in member_scores], dtype=torch.float64)
    logw = torch.tensor(weights, dtype=torch.float64).log()
    return float(torch.logsumexp(logps + logw, dim=0)), all(bool(s[1]) for s in member_scores)


# ---------------------------------------------------------------------- tokenisation (as lm-eval's HF model)


class MemberEncoder:
    """One member's ids for lm-eval's strings, following lm-eval's HFLM (tok_encode, _encode_pair, rolling)."""

    def __init__(self, member: Member, max_length: int):
        self.member = member
        self.tokenizer = member.tokenizer
        self.max_length = max_length
        tok = member.tokenizer
        self.prefix_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        # A string that already starts with the prefix token's text gets no second one.
        self.prefix_text = tok.decode([self.prefix_id]) if self.prefix_id is not None else None

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        if add_special_tokens is None:
            add_special_tokens = not (self.prefix_text and text.startswith(self.prefix_text))
        return self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]

    def encode_prompt(self, prompt: str) -> list[int]:
        text, add = self.member.render_prompt(prompt)
        return self.encode(text, None if add else False)

    def pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        templated = self.member.spec.chat_template is not False
        if context == "" and not templated:
            tokens = self.encode(continuation, add_special_tokens=False)
            if tokens and tokens[0] == self.prefix_id:  # the continuation brings its own BOS
                return self._fit(tokens[:1], tokens[1:])
            return self._fit([self.prefix_id], tokens)
        text, add = self.member.render_prompt(context)
        flag = None if add else False
        # Trailing spaces of the context belong to the continuation (they start its first word).
        spaces = len(text) - len(text.rstrip())
        if spaces:
            continuation = text[-spaces:] + continuation
            text = text[:-spaces]
        whole = self.encode(text + continuation, flag)
        context_ids = self.encode(text, flag)
        tokens = whole[len(context_ids) :]
        return self._fit(context_ids or [self.prefix_id], tokens)

    def _fit(self, context: list[int], tokens: list[int]) -> tuple[list[int], list[int]]:
        """Cut the context from the left so that context + continuation fit max_length + 1 tokens."""
        if len(tokens) > self.max_length:
            raise ConfigError(
                f"a continuation of {len(tokens)} tokens is longer than {self.member.name}'s max_length "
                f"({self.max_length}); raise max_length in model_args or shorten the task's targets."
            )
        overflow = len(context) + len(tokens) - (self.max_length + 1)
        return (context[overflow:] if overflow > 0 else context), tokens

    def rolling_windows(self, text: str) -> list[tuple[list[int], list[int]]]:
        windows = get_rolling_token_windows(
            token_list=self.encode(text), prefix_token=self.prefix_id, max_seq_len=self.max_length, context_len=1
        )
        return [make_disjoint_window(w) for w in windows]


# ---------------------------------------------------------------------- batched scoring


@dataclass(frozen=True)
class Piece:
    """Continuation tokens to score, and each scoring member's context ids before them."""

    contexts: tuple[tuple[int, ...], ...]
    tokens: tuple[int, ...]


def score_pieces(
    members: Sequence[Member], weights: Sequence[float], pieces: Sequence[Piece], batch_size: int, bar=None
) -> list[tuple[float, bool]]:
    """Token-level mixture log-likelihood of every piece (members share one vocabulary) and whether each
    token is the argmax of the mixture. Pieces with the same contexts are batched together."""
    scores: list[tuple[float, bool] | None] = [None] * len(pieces)
    groups: dict[tuple, list[int]] = {}
    for j, piece in enumerate(pieces):
        if piece.tokens:
            groups.setdefault(piece.contexts, []).append(j)
        else:
            scores[j] = (0.0, True)
    ordered = sorted(
        groups.items(), key=lambda item: -(max(map(len, item[0])) + max(len(pieces[j].tokens) for j in item[1]))
    )
    for batch in _fill_batches(ordered, batch_size):
        indices = [j for _, part in batch for j in part]
        for j, score in zip(indices, _score_batch(members, weights, batch, [pieces[j].tokens for j in indices])):
            scores[j] = score
        if bar is not None:
            bar.update(len(indices))
    return scores


def _fill_batches(groups, size: int):
    """Batches of at most `size` pieces; a context's pieces stay together unless they alone exceed `size`."""
    batch, count = [], 0
    for contexts, indices in groups:
        for start in range(0, len(indices), size):
            part = indices[start : start + size]
            if batch and count + len(part) > size:
                yield batch
                batch, count = [], 0
            batch.append((contexts, part))
            count += len(part)
    if batch:
        yield batch


def _score_batch(members, weights, batch, token_lists) -> list[tuple[float, bool]]:
    group_of = [g for g, (_, part) in enumerate(batch) for _ in part]
    targets = torch.tensor([t for tokens in token_lists for t in tokens], dtype=torch.long)
    token_logps, mixed, greedy = [], None, None
    for i, member in enumerate(members):
        logits = member.continuation_logits([contexts[i] for contexts, _ in batch], token_lists, group_of)
        # float32 at least (half-precision log-softmax loses whole digits); float64 members stay float64
        logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        token_logps.append(logp.gather(1, targets.to(logp.device)[:, None]).squeeze(1).double().cpu())
        if len(members) == 1:
            greedy = logp.argmax(dim=-1).cpu()
        else:
            probs = logp.exp_().mul_(weights[i]).to(members[0].device)
            mixed = probs if mixed is None else _add_padded(mixed, probs)
    if mixed is not None:
        greedy = mixed.argmax(dim=-1).cpu()
    logw = torch.tensor(weights, dtype=torch.float64).log()
    per_token = torch.logsumexp(torch.stack(token_logps) + logw[:, None], dim=0)
    hits = greedy == targets
    scores, start = [], 0
    for tokens in token_lists:
        end = start + len(tokens)
        scores.append((float(per_token[start:end].sum()), bool(hits[start:end].all())))
        start = end
    return scores


def _add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b over the wider vocabulary (models may pad their embedding matrices differently)."""
    if a.shape[-1] < b.shape[-1]:
        a, b = b, a
    a[:, : b.shape[-1]] += b
    return a


@torch.inference_mode()
def continuation_logits(
    member: Member, contexts: Sequence[Sequence[int]], token_lists: Sequence[Sequence[int]], group_of: Sequence[int]
) -> torch.Tensor:
    """Logits [T, V] that predict each continuation token (all pieces' tokens, in order).

    Two forwards: the distinct contexts (left-padded; only the last position's logits are kept), then the
    continuations of every piece on a copy of its context's KV cache (right-padded).
    """
    model, device = member.model, member.device
    pad = next((t for t in (member.tokenizer.pad_token_id, member.tokenizer.eos_token_id) if t is not None), 0)
    width = max(len(c) for c in contexts)
    ids = torch.full((len(contexts), width), pad, dtype=torch.long)
    mask = torch.zeros(len(contexts), width, dtype=torch.long)
    for g, context in enumerate(contexts):
        ids[g, width - len(context) :] = torch.tensor(context, dtype=torch.long)
        mask[g, width - len(context) :] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    cache = DynamicCache()  # full layers, as in decoding: slots must not slide away under the padding
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    first = out.logits[:, -1, :]  # predicts each piece's first token
    longer = [j for j, tokens in enumerate(token_lists) if len(tokens) > 1]
    rest = None
    if longer:
        rows = torch.tensor([group_of[j] for j in longer], dtype=torch.long)
        cache.batch_select_indices(rows.to(device))
        steps = max(len(token_lists[j]) - 1 for j in longer)
        ids2 = torch.full((len(longer), steps), pad, dtype=torch.long)
        mask2 = torch.zeros(len(longer), steps, dtype=torch.long)
        for r, j in enumerate(longer):
            k = len(token_lists[j]) - 1
            ids2[r, :k] = torch.tensor(token_lists[j][:-1], dtype=torch.long)
            mask2[r, :k] = 1
        positions2 = mask[rows].sum(dim=1, keepdim=True) + torch.arange(steps)[None, :]
        out2 = model(
            input_ids=ids2.to(device),
            attention_mask=torch.cat([mask[rows], mask2], dim=1).to(device),
            position_ids=positions2.to(device),
            past_key_values=cache,
            use_cache=True,
        )
        rest = out2.logits
    chosen, row_of = [], {j: r for r, j in enumerate(longer)}
    for j, tokens in enumerate(token_lists):
        chosen.append(first[group_of[j] : group_of[j] + 1])
        if len(tokens) > 1:
            chosen.append(rest[row_of[j], : len(tokens) - 1])
    return torch.cat(chosen, dim=0)
