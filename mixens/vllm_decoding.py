"""Decoding a batch on vLLM engines, exactly in distribution, without a step loop over full distributions.

vLLM samples by itself, one request at a time, and returns at most some top log-probabilities; so:

- mixture (and single): the members' draws do not depend on the text, so each row's schedule (one member per
  step; one schedule for the batch, or one per row with draw=sequence) is drawn up front. A run of consecutive
  steps of one member is one request: the member reads the shared text, as its own canonical tokenisation
  (mixens.transcript, as on transformers), and writes up to that many tokens, sampled by vLLM from F_i(P_i)
  with a seed of the row's own. The text is joined in the transcript, which finds EOS and stop strings; a run
  that vLLM ends early (a stop within the member's own text) is picked up where it ended, in the next round.
  The member's KV blocks for the text it read before are found by vLLM's prefix cache.
- averaging: at each step every member returns its log-probabilities after temperature, top-k and top-p
  (vLLM's processed log-probabilities) for its top-k tokens, which is all of F_i(P_i) when top-k is on; mixens
  mixes them in the ensemble's id space and draws, as on transformers. Without top-k the whole vocabulary
  would cross from the engine at every step: that is refused.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import torch

from mixens.cache import FeedStats
from mixens.decoding import ROUTING_STREAM, SAMPLING_STREAM, GenerationStats, prepare_transcript, stream_seed
from mixens.errors import ConfigError
from mixens.faults import raise_if_stopped
from mixens.sampling import Sampling, draw
from mixens.vocab import UnionVocab

if TYPE_CHECKING:
    from mixens.ensemble import Ensemble

# The members' engines are called at once (each is a process of its own); False calls them in turn, which the
# speed study measures beside it (mixens.bench.vllm_speed).
ENGINES_AT_ONCE = True
NO_SURFACE_BIAS = -100.0  # vLLM's lowest logit bias: e^-100 of the mass, so such a token is never drawn


def decode(
    ensemble: Ensemble,
    prompts: list,
    until: list[tuple[str, ...]],
    sampling: Sampling,
    max_new_tokens: int,
    seed: int,
    batch_index: int = 0,
    finished: Callable[[int], object] | None = None,
) -> tuple[list[str], GenerationStats]:
    """One prepared batch on the members' engines (the vLLM side of Ensemble.decode)."""
    batch = _Batch(ensemble, prompts, until, sampling, max_new_tokens, seed, batch_index, finished)
    if ensemble.strategy.name == "averaging":
        batch.average_by_steps()
    else:
        batch.mix_by_runs()
    return batch.transcript.texts(), batch.stats()


def check_sampling(strategy_name: str, sampling: Sampling) -> None:
    if strategy_name == "averaging" and not (sampling.do_sample and sampling.top_k > 0):
        raise ConfigError(
            "averaging on engine=vllm needs sampling with top_k > 0: vLLM returns a member's top-k log-probabilities, "
            "which hold all of F_i(P_i) only when top-k is on (greedy averaging, or top_k=0, needs each member's "
            "whole distribution at every step); set top_k, or use engine=transformers."
        )


class _Batch:
    def __init__(self, ensemble, prompts, until, sampling, max_new_tokens, seed, batch_index, finished):
        check_sampling(ensemble.strategy.name, sampling)
        self.started = time.perf_counter()
        self.ensemble, self.members, self.vocab = ensemble, ensemble.members, ensemble.vocab
        self.sampling, self.max_new_tokens = sampling, max_new_tokens
        self.seed, self.batch_index, self.finished = seed, batch_index, finished
        self.transcript = prepare_transcript(ensemble, prompts, until, max_new_tokens)
        self.rows = len(prompts)
        self.written = [0] * self.rows  # steps each row has taken (tokens written, EOS included)
        self.told = 0
        self.fed = [FeedStats() for _ in self.members]
        self.seen = [[0] * self.rows for _ in self.members]  # ids of each row a member's engine has read
        self.sent: list[dict[int, list[int]]] = [{} for _ in self.members]  # each row's ids in its last request
        self._params = [_ParamsFactory(self, i) for i in range(len(self.members))]

    # ------------------------------------------------------------------ mixture and single

    def mix_by_runs(self) -> None:
        schedule = self._schedule()
        while active := [b for b in range(self.rows) if self._writing(b)]:
            raise_if_stopped()
            turns: dict[int, list[tuple[int, int]]] = defaultdict(list)  # member -> [(row, run length)]
            for b in active:
                member = schedule[b, self.written[b]]
                run = 1
                while self.written[b] + run < self.max_new_tokens and schedule[b, self.written[b] + run] == member:
                    run += 1
                turns[int(member)].append((b, run))
            members = sorted(turns)
            calls = [(m, [b for b, _ in turns[m]], [run for _, run in turns[m]], None) for m in members]
            for member, outputs in zip(members, self._requests(calls)):
                for (b, _), output in zip(turns[member], outputs):
                    self._write(member, b, output.outputs[0])
            self._tell_finished()

    def _schedule(self) -> np.ndarray:
        """[rows, max_new_tokens]: the member of each step, drawn from the routing stream by weight."""
        n = len(self.members)
        if n == 1:
            return np.zeros((self.rows, self.max_new_tokens), dtype=np.int64)
        generator = torch.Generator().manual_seed(stream_seed(self.seed, ROUTING_STREAM, self.batch_index))
        weights = torch.tensor(self.ensemble.weights, dtype=torch.float64)
        per_row = getattr(self.ensemble.strategy, "draw", "batch") == "sequence"
        count = self.max_new_tokens * (self.rows if per_row else 1)
        drawn = torch.multinomial(weights, count, replacement=True, generator=generator).numpy()
        return drawn.reshape(self.rows, -1) if per_row else np.tile(drawn, (self.rows, 1))

    # ------------------------------------------------------------------ averaging

    def average_by_steps(self) -> None:
        generator = torch.Generator().manual_seed(stream_seed(self.seed, SAMPLING_STREAM, self.batch_index))
        for _ in range(self.max_new_tokens):
            raise_if_stopped()
            active = [b for b in range(self.rows) if self._writing(b)]
            if not active:
                break
            # Each row's mixture lives on the few tokens some member's top-k holds: drawn among those alone.
            mixed: list[dict[int, float]] = [defaultdict(float) for _ in active]
            calls = [(m, active, [1] * len(active), self.sampling.top_k) for m in range(len(self.members))]
            for member, (weight, outputs) in enumerate(zip(self.ensemble.weights, self._requests(calls))):
                for row, (b, output) in enumerate(zip(active, outputs)):
                    for token, logprob in output.outputs[0].logprobs[0].items():
                        mixed[row][self._to_ensemble(member, b, token)] += weight * math.exp(logprob.logprob)
            for b, row in zip(active, mixed):
                row.pop(self.vocab.size, None)  # ids the ensemble never draws (kept out by logit bias)
                if not any(row.values()):
                    raise RuntimeError(f"row {b}: every member's top-{self.sampling.top_k} holds no drawable token")
            width = max(len(row) for row in mixed)
            candidates = torch.zeros(len(active), width, dtype=torch.long)
            masses = torch.zeros(len(active), width, dtype=torch.float64)
            for row, found in enumerate(mixed):
                candidates[row, : len(found)] = torch.tensor(list(found))
                masses[row, : len(found)] = torch.tensor(list(found.values()))
            picked = candidates.gather(1, draw(masses, generator)[:, None]).flatten().tolist()
            for b, token in zip(active, picked):
                self.transcript.append_to_row(b, token)
                self.written[b] += 1
            self._tell_finished()

    # ------------------------------------------------------------------ shared

    def _writing(self, b: int) -> bool:
        return not self.transcript.done[b] and self.written[b] < self.max_new_tokens

    def _requests(self, calls: list[tuple[int, list[int], list[int], int | None]]) -> list[list]:
        """Each call (member, rows, runs, logprobs) on its member's engine, all engines at once: each engine is
        a process of its own, so one computes while another's thread here waits. Outputs in call order; what
        an engine returns depends only on its own requests, so the texts are those of calls in turn."""
        requests = [self._request(*call) for call in calls]  # the bookkeeping, here in call order
        # one engine is never called twice at once
        if not ENGINES_AT_ONCE or len({id(engine) for engine, _, _ in requests}) < len(requests):
            return [_generate(*request) for request in requests]
        with ThreadPoolExecutor(max_workers=len(requests)) as engines:
            return list(engines.map(lambda request: _generate(*request), requests))

    def _request(self, member: int, rows: list[int], runs: list[int], logprobs: int | None):
        """What the member's engine is asked for these rows, counted as fed; run by _generate."""
        from vllm.inputs import TokensPrompt

        targets = self.transcript.target_ids(member)
        fed = self.fed[member]
        for b in rows:
            if self.seen[member][b] == 0:
                fed.prompt_tokens += len(targets[b])
            else:  # the newest token, and beyond it what the member missed (other members' runs)
                new = max(1, len(targets[b]) - self.seen[member][b])
                fed.generated_tokens += new
                fed.catchup_tokens += new - 1
            self.seen[member][b] = len(targets[b])
        fed.forward_passes += 1
        fed.row_passes += len(rows)
        self.sent[member].update((b, targets[b]) for b in rows)
        # Text re-tokenised by another member can take more ids than steps: the oldest go, as lm-eval truncates.
        window = self.members[member].model.max_model_len
        prompts = [TokensPrompt(prompt_token_ids=targets[b][-(window - run) :]) for b, run in zip(rows, runs)]
        params = [self._params[member](b, run, logprobs) for b, run in zip(rows, runs)]
        return self.members[member].model.engine, prompts, params

    def _write(self, member: int, b: int, completion) -> None:
        """Append a member's run to row b's text, up to where the row ends."""
        ids = list(completion.token_ids)
        stop_reason = getattr(completion, "stop_reason", None)
        if isinstance(stop_reason, int) and (not ids or ids[-1] != stop_reason):
            ids.append(stop_reason)  # a stop token vLLM left out of the output
        if not ids:
            raise RuntimeError(f"member {self.members[member].name} returned no token for row {b}")
        written = 0
        for token in ids:
            self.transcript.append_to_row(b, self._to_ensemble(member, b, token))
            self.written[b] += 1
            written += 1
            if not self._writing(b):
                break
            if not self.vocab.shared and written < len(ids) and not self._canonical(member, b, ids[:written]):
                # The text now tokenises otherwise for this member: the rest of its run was drawn after ids its
                # tokenizer would not produce, so it is dropped and the member re-reads the text next round.
                self.fed[member].cropped_tokens += len(ids) - written
                break
        # the engine read back every token of its run but the last
        self.seen[member][b] += written - 1
        self.fed[member].generated_tokens += written - 1

    def _canonical(self, member: int, b: int, run: list[int]) -> bool:
        """Whether the ids the member has read and written for row b are its own tokenisation of the text."""
        return self.transcript.row_target_ids(member, b) == self.sent[member][b] + run

    def _to_ensemble(self, member: int, b: int, token: int) -> int:
        if token >= self.vocab.member_size(member):  # the model's padding rows, past the tokenizer's ids
            return self.vocab.size
        if self.vocab.shared:  # the transcript itself knows EOS ids and special stop tokens
            return token
        if token in self.members[member].eos_ids or token in self.transcript.stop_token_ids[member][b]:
            return UnionVocab.EOS
        return int(self.vocab.to_union(member, "cpu")[token])

    def _tell_finished(self) -> None:
        if self.finished is not None:
            now = sum(not self._writing(b) for b in range(self.rows))
            if now > self.told:
                self.finished(now - self.told)
                self.told = now

    def stats(self) -> GenerationStats:
        wall = time.perf_counter() - self.started
        return GenerationStats(
            sequences=self.rows,
            steps=max(self.written, default=0),
            tokens_generated=sum(self.written),
            wall_seconds=wall,
            members={m.name: fed for m, fed in zip(self.members, self.fed)},
        )


def _generate(engine, prompts, params) -> list:
    return engine.generate(prompts, params, use_tqdm=False)


class _ParamsFactory:
    """vLLM's SamplingParams for one member's requests: F_i's settings, the row's stops and a seed per request."""

    def __init__(self, batch: _Batch, member: int):
        from vllm import SamplingParams

        self.SamplingParams = SamplingParams
        self.batch, self.member = batch, member
        vocab, m = batch.vocab, batch.members[member]
        self.eos = sorted(vocab.eos_ids if vocab.shared else m.eos_ids)
        # As on transformers, the model's padding rows past the tokenizer's ids are never drawn, nor (in a
        # union of vocabularies) the tokens with no surface text.
        size = vocab.member_size(member)
        banned = list(range(size, m.model.config.get_text_config().vocab_size))
        if not vocab.shared:
            to_union = vocab.to_union(member, "cpu")
            stops = set().union(*batch.transcript.stop_token_ids[member], m.eos_ids)
            banned += [t for t in (to_union == vocab.size).nonzero().flatten().tolist() if t not in stops]
        self.bias = dict.fromkeys(banned, NO_SURFACE_BIAS) or None

    def __call__(self, b: int, run: int, logprobs: int | None):
        batch, sampling = self.batch, self.batch.sampling
        # A seed per row and step: a row's draws do not depend on when other rows end.
        where = [batch.seed, SAMPLING_STREAM, batch.batch_index, self.member, b, batch.written[b]]
        seed = np.random.SeedSequence(where)
        stops = batch.transcript.until[b]
        return self.SamplingParams(
            max_tokens=run,
            temperature=sampling.temperature if sampling.do_sample else 0.0,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            seed=int(seed.generate_state(1, dtype=np.uint64)[0] >> 1),
            stop=list(stops) or None,
            stop_token_ids=sorted(set(self.eos) | batch.transcript.stop_token_ids[self.member][b]),
            logit_bias=self.bias,
            logprobs=logprobs,
            detokenize=bool(stops),
        )
