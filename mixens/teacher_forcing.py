"""Scoring a reference continuation under a strategy, token by token (teacher forcing).

Each step the strategy routes, its members run and it combines, exactly as in generation; then the
reference's next token is appended instead of a sampled one, so every strategy is judged on the same
text and pays the same cost accounting (forward passes, per member, per token). The reference is
tokenised by the first member (mapped to the ensemble's id space) and ends with end-of-sequence.

Per step two numbers: the probability the strategy's distribution gives the reference token, and
whether its argmax is the reference token. The first, averaged, is the chance that a sampled token
equals the reference; its expectation over the routing draw is the same for mixture and averaging,
as the theory says. The second is the next-token accuracy of the greedy decoder, which differs
between strategies (argmax of the average vs. argmax of the member drawn).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from mixens.decoding import GenerationStats, decode_batch
from mixens.ensemble import Ensemble
from mixens.sampling import Sampling
from mixens.strategies import MemberOutputs

UNTRANSFORMED = Sampling(do_sample=True, temperature=1.0)  # F is the identity: each member's own P

# observe(outputs, rows, targets): the members' outputs at one step, the rows scored, their reference ids
Observer = Callable[[MemberOutputs, list[int], list[int]], None]


@dataclass
class ForcedScores:
    reference_probs: list[float] = field(default_factory=list)  # one per scored token
    greedy_hits: list[bool] = field(default_factory=list)
    stats: GenerationStats = field(default_factory=GenerationStats)

    def summary(self) -> dict:
        n = len(self.reference_probs)
        speed = self.stats.as_dict()
        return {
            "tokens": n,
            "reference_prob": sum(self.reference_probs) / n if n else None,
            "greedy_accuracy": sum(self.greedy_hits) / n if n else None,
            "member_runs_per_token": speed["member_runs_per_token"],
            "forward_passes_per_step": speed["forward_passes_per_step"],
            "tokens_per_second": speed["tokens_per_second"],
        }


def reference_ids(ensemble: Ensemble, reference: str) -> list[int]:
    """The reference as ids of the ensemble's id space, then end-of-sequence."""
    tokenizer = ensemble.members[0].tokenizer
    ids = tokenizer(reference, add_special_tokens=False)["input_ids"]
    vocab = ensemble.vocab
    if vocab.shared:
        return ids + [end_of_sequence(ensemble)]
    to_union = vocab.to_union(0, "cpu")
    union = [int(to_union[i]) for i in ids]
    return [u for u in union if u < vocab.size] + [end_of_sequence(ensemble)]  # ids with no surface are dropped


def end_of_sequence(ensemble: Ensemble) -> int:
    vocab = ensemble.vocab
    if not vocab.shared:
        return vocab.EOS
    first = ensemble.members[0].tokenizer.eos_token_id
    return first if first in vocab.eos_ids else min(vocab.eos_ids)


def teacher_force(
    ensemble: Ensemble,
    prompts: Sequence[str],
    references: Sequence[str],
    *,
    batch_size: int = 8,
    seed: int = 0,
    observe: Observer | None = None,
) -> ForcedScores:
    """Score every reference after its prompt with the ensemble's strategy."""
    if len(prompts) != len(references):
        raise ValueError(f"{len(prompts)} prompts but {len(references)} references; give one reference per prompt")
    scores = ForcedScores()
    for batch_index, start in enumerate(range(0, len(prompts), batch_size)):
        batch_refs = [reference_ids(ensemble, r) for r in references[start : start + batch_size]]

        def choose(step: int, dist: torch.Tensor, outputs: MemberOutputs, active: torch.Tensor) -> list[int]:
            rows = [b for b in range(len(batch_refs)) if active[b] and step < len(batch_refs[b])]
            targets = [batch_refs[b][step] for b in rows]
            if rows:
                index = torch.tensor(rows, device=dist.device)
                picked = dist[index, torch.tensor(targets, device=dist.device)]
                hits = dist[index].argmax(dim=-1).cpu() == torch.tensor(targets)
                scores.reference_probs.extend(picked.double().cpu().tolist())
                scores.greedy_hits.extend(hits.tolist())
                if observe is not None:
                    observe(outputs, rows, targets)
            return [refs[step] if step < len(refs) else refs[-1] for refs in batch_refs]

        _, stats = decode_batch(
            ensemble.members,
            ensemble.vocab,
            ensemble.strategy,
            list(prompts[start : start + batch_size]),
            [()] * len(batch_refs),
            UNTRANSFORMED,
            max(len(r) for r in batch_refs),
            seed,
            batch_index,
            choose=choose,
        )
        scores.stats.add(stats)
    return scores
