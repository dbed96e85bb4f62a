"""What each generated token was: its id and text, its log-probability, and which members it came from."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class TokenRecord:
    """The tokens drawn for one prompt, in order. `ids` are the members' own ids when they share one
    vocabulary, else ids of the ensemble's union vocabulary (`pieces` gives each one's text either way; a
    token holding part of a character shows U+FFFD, so join the ids, not the pieces, to get text);
    `logprobs` are under the distribution the token was drawn from (after temperature, top-k, top-p; the
    untransformed one when greedy); `members` names the members that distribution mixed (the drawn one
    for mixture, all for averaging, the routed ones for a router). A token that completed a stop string
    or ended the sequence is included, although the text stops before it."""

    ids: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    members: list[tuple[str, ...]] = field(default_factory=list)


class TokenRecorder:
    """Fills one TokenRecord per row from the decoding steps."""

    def __init__(self, ensemble, rows: int):
        self.vocab = ensemble.vocab
        self.names = [m.name for m in ensemble.members]
        self.tokenizer = ensemble.members[0].tokenizer
        self.records = [TokenRecord() for _ in range(rows)]

    def add(self, step, picked: torch.Tensor) -> None:
        """One step: the decoder's Step and the token picked for each row."""
        dist = step.dist.double()
        chosen = dist.gather(1, picked.view(-1, 1).to(dist.device)).squeeze(1) / dist.sum(dim=-1)  # may be unnormalised
        chosen = chosen.log().tolist()
        routed = (step.routing > 0).tolist()
        for row, (active, token) in enumerate(zip(step.active.tolist(), picked.tolist())):
            if not active:
                continue
            record = self.records[row]
            record.ids.append(token)
            record.pieces.append(self._piece(token))
            record.logprobs.append(chosen[row])
            record.members.append(tuple(name for name, used in zip(self.names, routed[row]) if used))

    def _piece(self, token: int) -> str:
        if self.vocab.shared:
            return self.tokenizer.decode([token])
        return self.vocab.surfaces[token].decode("utf-8", errors="replace")
