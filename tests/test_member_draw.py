"""Where one member writes each row (mixture, single, a random router), the member draws the row's token from
its own distribution with the row's uniform number (Decoder.step_drawn). That must be the token the combined
step and the driver's draw give (Decoder.step, then sampling.pick), which a token record still takes."""

from __future__ import annotations

import pytest
import torch
from conftest import spec

import mixens
from mixens.decoding import Decoder
from mixens.member_draw import MemberDraw, in_ensemble_ids
from mixens.sampling import Sampling, invert_cdf, pick

PROMPTS = ["The capital of France is", "Question: what is 12 + 30?\nAnswer:", "Hi", "def add(a, b):", "x"]


def special_token(ensemble, member: int) -> tuple[int, str]:
    """One of a member's special tokens, with its text (a stop string that the union draws as EOS)."""
    never = (ensemble.vocab.to_union(member, "cpu") == ensemble.vocab.size).nonzero().flatten().tolist()
    return never[0], ensemble.members[member].tokenizer.convert_ids_to_tokens(never[0])


@pytest.mark.parametrize(
    ("names", "strategy", "options"),
    [
        (("bpe_a", "sp_c"), "mixture", {"draw": "sequence"}),  # two tokenizers, rows written by both members
        (("bpe_a", "sp_c"), "mixture", {}),
        (("bpe_a", "bpe_b"), "mixture", {"draw": "sequence"}),  # one shared vocabulary
        (("bpe_a", "bpe_b"), "router", {"policy": "random", "draw": "sequence"}),
        (("bpe_a", "sp_c"), "single", {"member": "sp_c"}),
    ],
)
@pytest.mark.parametrize("do_sample", [True, False])
def test_members_drawing_their_own_rows_write_what_the_combined_step_draws(
    tiny_models, monkeypatch, names, strategy, options, do_sample
):
    ensemble = mixens.load_ensemble(
        [spec(tiny_models[n], n, w) for n, w in zip(names, (0.6, 0.4))], strategy, **options
    )
    assert ensemble.strategy.one_member_per_row
    drawn_steps = []
    step_drawn = Decoder.step_drawn
    monkeypatch.setattr(Decoder, "step_drawn", lambda self, u: drawn_steps.append(1) or step_drawn(self, u))
    stops = [("\n\n",)] * len(PROMPTS)
    if not ensemble.vocab.shared:  # one row stops on a special token's text, which the union draws as EOS there
        stops[0] = (special_token(ensemble, len(ensemble.members) - 1)[1],)
    settings = dict(until=stops, max_new_tokens=16, do_sample=do_sample, temperature=0.8, seed=3, batch_size=5)
    by_members = ensemble.generate(PROMPTS, **settings)
    assert len(drawn_steps) > 0
    steps_drawn_by_members = len(drawn_steps)
    combined = ensemble.generate(PROMPTS, **settings, return_tokens=True)  # a token record takes the combined step
    assert len(drawn_steps) == steps_drawn_by_members
    assert by_members.texts == combined.texts
    assert by_members.stats.members == combined.stats.members
    assert len(set(by_members.texts)) > 1


def test_a_member_draw_on_some_rows_is_the_pick_from_those_rows_of_the_whole_batch(tiny_models):
    """Row by row, the same distribution and the same uniform number: a subset of rows draws what the whole
    batch would, in a union of vocabularies with a row that stops on a special token."""
    ensemble = mixens.load_ensemble([spec(tiny_models[n], n) for n in ("bpe_a", "sp_c")], "mixture")
    sampling = Sampling(do_sample=True, temperature=0.7, top_k=30, top_p=0.9)
    special, text = special_token(ensemble, 1)
    stops = [(text,)] + [()] * (len(PROMPTS) - 1)
    decoder = Decoder(ensemble, PROMPTS, stops, sampling, seed=0, members_draw=True)
    draw = decoder.caches[1].draw
    assert isinstance(draw, MemberDraw) and draw.stop_columns is not None
    logits = torch.randn(len(PROMPTS), ensemble.vocab.member_size(1), generator=torch.Generator().manual_seed(4))
    logits[:, special] += 10.0  # the largest logit of every row: row 0 draws it as EOS, the others never
    whole = in_ensemble_ids(logits, sampling, draw.stop_columns.on(draw.to_union), ensemble.vocab.size)
    assert whole[0, ensemble.vocab.EOS] > 0.9 and bool((whole[1:, ensemble.vocab.EOS] < 0.9).all())
    generator = torch.Generator().manual_seed(9)
    expected = pick(whole, sampling, generator)
    u = torch.rand(len(PROMPTS), 1, generator=generator.manual_seed(9), dtype=torch.float64)
    assert torch.equal(invert_cdf(whole, u), expected)
    rows = [0, 2, 3]
    assert torch.equal(draw.tokens(logits[rows], rows, u[rows]), expected[rows])
    greedy = MemberDraw(Sampling(do_sample=False), draw.union_size, draw.to_union, draw.stop_columns)
    assert torch.equal(greedy.tokens(logits[rows], rows, None), whole[rows].argmax(dim=-1))
