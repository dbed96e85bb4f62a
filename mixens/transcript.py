"""The shared state of a batch being generated, and each member's view of it as token ids.

With a shared vocabulary the state is the generated ids themselves. With different tokenizers it is the
generated text as bytes, and a member's view is its own canonical tokenisation of (its prompt + that
text): when the text grows, the member re-tokenises, keeps the longest prefix its cache already holds and
recomputes the rest, so it never conditions on ids its tokenizer would not produce for that text.

A stop string that is the text of a special token (a chat model's `<|im_end|>` that is not its EOS) never
appears in the text, which leaves special tokens out; it stops a row when the token itself is produced:
`stop_token_ids` holds, per member and row, the member's ids that do so.
"""

from __future__ import annotations

from collections.abc import Sequence

from mixens.vocab import SharedVocab, UnionVocab, special_ids, split_incomplete_utf8


class Transcript:
    """`keep[i]`: the most prompt tokens member i may read (its context less the room for new tokens), or
    None for no limit; a longer prompt loses its first tokens, as lm-eval's own models truncate."""

    def __init__(self, rows: int, until: Sequence[Sequence[str]], tokenizers: Sequence = ()):
        self.done = [False] * rows
        self.until = [tuple(s for s in stops if s) for stops in until]
        self.stopped_text: list[str | None] = [None] * rows  # text cut at a stop string
        self._checked = [0] * rows  # how far each row's text has been searched for stop strings
        # [member][row]: the member's special-token ids whose text is one of the row's stop strings
        self.stop_token_ids = [special_stop_ids(t, self.until) for t in tokenizers]
        # rows stopped by a token of the ensemble's id space (shared vocabulary only; see TokenTranscript)
        self._stop_tokens: list[frozenset[int]] = [frozenset()] * rows

    def target_ids(self, member: int) -> list[list[int]]:
        raise NotImplementedError

    def row_target_ids(self, member: int, b: int) -> list[int]:
        """target_ids(member)[b], for one row."""
        raise NotImplementedError

    def prompt_lengths(self, member: int) -> list[int]:
        raise NotImplementedError

    def append(self, tokens: list[int]) -> None:
        for b, token in enumerate(tokens):
            self.append_to_row(b, token)

    def append_to_row(self, b: int, token: int) -> None:
        """One token (in the ensemble's id space) for row b; ignored once the row is done."""
        if self.done[b]:
            return
        if self._is_eos(token):
            self.done[b] = True
            return
        if token in self._stop_tokens[b]:  # a special token whose text is a stop string
            self.stopped_text[b] = self._text_so_far(b)
            self.done[b] = True
            return
        self._add(b, token)
        self._check_stops(b)

    def texts(self) -> list[str]:
        return [cut if cut is not None else self._final_text(b) for b, cut in enumerate(self.stopped_text)]

    def _check_stops(self, b: int) -> None:
        stops = self.until[b]
        if not stops:
            return
        text = self._text_so_far(b)
        start = max(0, self._checked[b] - max(len(s) for s in stops) + 1)
        hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
        if hits:
            self.stopped_text[b] = text[: min(hits)]
            self.done[b] = True
        self._checked[b] = len(text)

    def _is_eos(self, token: int) -> bool:
        raise NotImplementedError

    def _add(self, b: int, token: int) -> None:
        raise NotImplementedError

    def _text_so_far(self, b: int) -> str:
        raise NotImplementedError

    def _final_text(self, b: int) -> str:
        raise NotImplementedError


class TokenTranscript(Transcript):
    """Shared vocabulary: every member sees its own prompt ids followed by the generated ids."""

    def __init__(self, vocab: SharedVocab, tokenizers, prompts: list[list[tuple[str, bool]]], until, keep=None):
        super().__init__(len(prompts[0]), until, tokenizers)
        # One vocabulary: a member's special stop token is the ensemble's token of the same id.
        self._stop_tokens = [frozenset().union(*rows) for rows in zip(*self.stop_token_ids)]
        self.vocab = vocab
        self.decoder = tokenizers[0]
        tokenized = [_tokenize(t, p) for t, p in zip(tokenizers, prompts)]
        self.full_prompt_lengths = [[len(ids) for ids in rows] for rows in tokenized]
        self.prompt_ids = [
            [ids[len(ids) - limit :] if limit is not None and len(ids) > limit else ids for ids in rows]
            for rows, limit in zip(tokenized, keep or [None] * len(tokenized))
        ]
        self.generated: list[list[int]] = [[] for _ in self.done]

    def target_ids(self, member: int) -> list[list[int]]:
        return [p + g for p, g in zip(self.prompt_ids[member], self.generated)]

    def row_target_ids(self, member: int, b: int) -> list[int]:
        return self.prompt_ids[member][b] + self.generated[b]

    def prompt_lengths(self, member: int) -> list[int]:
        return [len(p) for p in self.prompt_ids[member]]

    def _is_eos(self, token: int) -> bool:
        return token in self.vocab.eos_ids

    def _add(self, b: int, token: int) -> None:
        self.generated[b].append(token)

    def _text_so_far(self, b: int) -> str:
        return self.decoder.decode(self.generated[b], skip_special_tokens=True)

    _final_text = _text_so_far


class TextTranscript(Transcript):
    """Different tokenizers: the generated text (bytes) is the state; members re-tokenise it. Special tokens
    have no text, so the union never holds them: the decoder counts a member's special stop tokens
    (`stop_token_ids`) as its end of sequence for that row, which ends the row like any EOS."""

    def __init__(self, vocab: UnionVocab, tokenizers, prompts: list[list[tuple[str, bool]]], until, keep=None):
        super().__init__(len(prompts[0]), until, tokenizers)
        self.vocab = vocab
        self.codecs = vocab.codecs
        self.prompts = prompts
        self.generated: list[bytes] = [b"" for _ in self.done]
        self.full_prompt_lengths = [[len(ids) for ids in _tokenize(t, p)] for t, p in zip(tokenizers, prompts)]
        # The same leading ids are left out of every re-tokenisation: they lie deep in the prompt, which
        # the generated text does not re-tokenise.
        self._cut = [
            [max(0, n - limit) if limit is not None else 0 for n in lengths]
            for lengths, limit in zip(self.full_prompt_lengths, keep or [None] * len(tokenizers))
        ]

    def target_ids(self, member: int) -> list[list[int]]:
        encoded = self.codecs[member].encode(self.prompts[member], self.generated)
        return [ids[cut:] for ids, cut in zip(encoded, self._cut[member])]

    def row_target_ids(self, member: int, b: int) -> list[int]:
        [encoded] = self.codecs[member].encode([self.prompts[member][b]], [self.generated[b]])
        return encoded[self._cut[member][b] :]

    def prompt_lengths(self, member: int) -> list[int]:
        return [n - cut for n, cut in zip(self.full_prompt_lengths[member], self._cut[member])]

    def _is_eos(self, token: int) -> bool:
        return token == UnionVocab.EOS

    def _add(self, b: int, token: int) -> None:
        self.generated[b] += self.vocab.surfaces[token]

    def _text_so_far(self, b: int) -> str:
        return split_incomplete_utf8(self.generated[b])[0]

    def _final_text(self, b: int) -> str:
        return self.generated[b].decode("utf-8", errors="replace")


def special_stop_ids(tokenizer, until: Sequence[Sequence[str]]) -> list[frozenset[int]]:
    """Per row, the ids of the tokenizer's special tokens whose text is one of that row's stop strings."""
    wanted = set().union(*until) if until else set()
    by_text: dict[str, set[int]] = {}
    if wanted:
        added = getattr(tokenizer, "added_tokens_decoder", {})
        for token_id in special_ids(tokenizer):
            text = added[token_id].content if token_id in added else tokenizer.convert_ids_to_tokens(token_id)
            if text in wanted:
                by_text.setdefault(text, set()).add(token_id)
    return [frozenset().union(*(by_text.get(s, ()) for s in stops)) for stops in until]


def _tokenize(tokenizer, prompts: list[tuple[str, bool]]) -> list[list[int]]:
    return [tokenizer(text, add_special_tokens=add)["input_ids"] for text, add in prompts]


def make_transcript(vocab, tokenizers, prompts, until, keep: Sequence[int | None] | None = None) -> Transcript:
    cls = TokenTranscript if vocab.shared else TextTranscript
    return cls(vocab, tokenizers, prompts, until, keep)
