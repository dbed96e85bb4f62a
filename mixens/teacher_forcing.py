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

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from mixens.decoding import Decoder, GenerationStats, Step
from mixens.ensemble import Ensemble
from mixens.sampling import Sampling

UNTRANSFORMED = Sampling(do_sample=True, temperature=1.0)  # F is the identity: each member's own P


@dataclass
class ForcedStep:
    """One step of teacher forcing: what the ensemble computed, and the rows whose reference it scores."""

    step: Step
    rows: list[int]  # rows of the batch still inside their reference
    targets: list[int]  # the reference id of each of those rows
    documents: list[int]  # the index of each of those rows among all the prompts


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


class TeacherForcing:
    """The references fed after their prompts, batch by batch: iterating gives one ForcedStep per step;
    `stats` then holds the work and time of every batch."""

    def __init__(
        self,
        ensemble: Ensemble,
        prompts: Sequence[str],
        references: Sequence[str],
        *,
        batch_size: int = 8,
        seed: int = 0,
    ):
        if len(prompts) != len(references):
            raise ValueError(f"{len(prompts)} prompts but {len(references)} references; give one reference per prompt")
        self.ensemble, self.prompts, self.references = ensemble, list(prompts), list(references)
        self.batch_size, self.seed = batch_size, seed
        self.stats = GenerationStats()

    def __iter__(self) -> Iterator[ForcedStep]:
        for batch_index, start in enumerate(range(0, len(self.prompts), self.batch_size)):
            refs = [reference_ids(self.ensemble, r) for r in self.references[start : start + self.batch_size]]
            prompts = self.prompts[start : start + self.batch_size]
            longest = max(len(r) for r in refs)
            decoder = Decoder(self.ensemble, prompts, [()] * len(refs), UNTRANSFORMED, self.seed, batch_index, longest)
            for position in range(longest):
                step = decoder.step()
                rows = [b for b in range(len(refs)) if step.active[b] and position < len(refs[b])]
                yield ForcedStep(step, rows, [refs[b][position] for b in rows], [start + b for b in rows])
                decoder.append([r[position] if position < len(r) else r[-1] for r in refs])
                if decoder.done:
                    break
            self.stats.add(decoder.stats)


def teacher_force(
    ensemble: Ensemble,
    prompts: Sequence[str],
    references: Sequence[str],
    *,
    batch_size: int = 8,
    seed: int = 0,
) -> ForcedScores:
    """Score every reference after its prompt with the ensemble's strategy."""
    forcing = TeacherForcing(ensemble, prompts, references, batch_size=batch_size, seed=seed)
    scores = ForcedScores()
    for forced in forcing:
        if not forced.rows:
            continue
        dist = forced.step.dist
        index = torch.tensor(forced.rows, device=dist.device)
        picked = dist[index, torch.tensor(forced.targets, device=dist.device)]
        hits = dist[index].argmax(dim=-1).cpu() == torch.tensor(forced.targets)
        scores.reference_probs.extend(picked.double().cpu().tolist())
        scores.greedy_hits.extend(hits.tolist())
    scores.stats = forcing.stats
    return scores
