"""Members in Ray actors (CPU actors on a local Ray instance): the same texts, scores and counted work as the
same members in this process, with only catch-up spans sent to the actors, and only a token per row (where
one member writes each row) or only the largest logits (where the draw depends on them alone) sent back."""

from __future__ import annotations

import dataclasses

import pytest
import ray
import torch
from conftest import spec

import mixens
from mixens.decoding import Decoder, _Distributions
from mixens.errors import ConfigError
from mixens.ray_members import MemberLost, RemoteCache, RemoteMember, largest_of, spread_back
from mixens.sampling import Sampling

PROMPTS = ["The capital of France is", "Question: what is 12 + 30?\nAnswer:", "Hi", "def add(a, b):"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def pool(tiny_models, names, remote: bool) -> list[dict]:
    actor = {"ray_actor": {"num_cpus": 1}} if remote else {}
    return [spec(tiny_models[n], n, w, **actor) for n, w in zip(names, (0.6, 0.4))]


@pytest.mark.parametrize(
    ("strategy", "names", "options", "back_sampled", "back_greedy"),
    [
        # one member per row: it draws the row's token in its actor; two tokenizers, per-row draws: catch-up spans
        ("mixture", ("bpe_a", "sp_c"), {"draw": "sequence"}, "token", "token"),
        ("mixture", ("bpe_a", "bpe_b"), {}, "token", "token"),
        # top-k sampling reads each member's k largest logits; greedy, the argmax of a sum, reads them all
        ("averaging", ("bpe_a", "bpe_b"), {}, "largest", "all"),
        # a cascade: a second look per step, at a member's whole distribution
        ("router", ("bpe_a", "bpe_b"), {"policy": "confidence", "threshold": 0.4}, "all", "all"),
    ],
)
def test_members_in_actors_write_the_same_texts_with_the_same_work(
    local_ray, tiny_models, strategy, names, options, back_sampled, back_greedy
):
    here = mixens.load_ensemble(pool(tiny_models, names, remote=False), strategy, **options)
    there = mixens.load_ensemble(pool(tiny_models, names, remote=True), strategy, **options)
    assert all(isinstance(m, RemoteMember) for m in there.members)
    for do_sample, back in ((True, back_sampled), (False, back_greedy)):
        kwargs = dict(max_new_tokens=24, do_sample=do_sample, temperature=0.9, top_k=20, seed=5, batch_size=4)
        before = [dataclasses.replace(m.traffic) for m in there.members]
        expected, got = here.generate(PROMPTS, **kwargs), there.generate(PROMPTS, **kwargs)
        assert got.texts == expected.texts
        assert got.stats.members == expected.stats.members  # forward passes, catch-up and cropped tokens
        for i, (member, earlier) in enumerate(zip(there.members, before)):
            rows_ran, vocabulary = got.stats.members[member.name].row_passes, there.vocab.member_size(i)
            logits = (member.traffic.logits_received - earlier.logits_received) / rows_ran
            tokens = (member.traffic.tokens_received - earlier.tokens_received) / rows_ran
            expected_back = {"token": (0, 1), "all": (vocabulary, 0)}.get(back)
            if back == "largest":
                assert 0 < logits < vocabulary / 4 and tokens == 0
            else:
                assert (logits, tokens) == expected_back
    assert sum(m.catchup_tokens for m in got.stats.members.values()) > 0 or strategy != "mixture"
    del there  # its actors leave the local Ray instance for the next test


def test_the_largest_logits_sent_back_hold_all_of_each_transformed_distribution(tiny_models):
    """In a union of vocabularies the ids with no surface text leave before top-k: the actor leaves them out
    before taking the largest, except one that a row names as a stop string (drawn there as EOS), for which
    one more is kept. So the few sent back give F_i(P_i) exactly, even when such ids hold the largest logits."""
    ensemble = mixens.load_ensemble(pool(tiny_models, ("bpe_a", "sp_c"), remote=False), "averaging")
    vocab, sampling = ensemble.vocab, Sampling(do_sample=True, temperature=0.9, top_k=5)
    never_drawn = [vocab.to_union(i, "cpu") == vocab.size for i in range(2)]
    assert [int(ids.sum()) > 1 for ids in never_drawn] == [False, True]  # sp_c's special tokens
    (special,) = ensemble.members[1].tokenizer.convert_ids_to_tokens([int(never_drawn[1].nonzero()[0])])
    top = ensemble.strategy.logits_needed(sampling)
    for stops in ([()] * len(PROMPTS), [(special,)] + [()] * (len(PROMPTS) - 1)):
        decoder = Decoder(ensemble, PROMPTS, stops, sampling, seed=0, top_logits=top)
        for i in range(2):
            largest = decoder.largest_logits(i, top)
            logits = torch.randn(len(PROMPTS), vocab.member_size(i), generator=torch.Generator().manual_seed(i))
            logits[:, never_drawn[i]] += 10.0  # the member's largest logits are ids the ensemble never draws
            values, ids = largest_of(logits, largest.count, torch.tensor(largest.excluded, dtype=torch.long))
            assert values.shape[1] < vocab.member_size(i) / 4
            assert not set(ids.flatten().tolist()) & set(largest.excluded)  # no room spent on ids never drawn
            whole = _Distributions(vocab, torch.device("cpu"), decoder._stop_columns)
            sent = _Distributions(vocab, torch.device("cpu"), decoder._stop_columns)
            whole.set_logits(i, logits)
            sent.set_logits(i, spread_back(values, ids, vocab.member_size(i)))
            torch.testing.assert_close(sent(i, sampling), whole(i, sampling), rtol=0, atol=1e-7)


def test_only_the_tokens_a_row_gained_cross_to_the_actor(local_ray, tiny_models):
    (member,) = mixens.load_ensemble(pool(tiny_models, ["bpe_a"], remote=True), "single").members
    (local,) = mixens.load_ensemble(pool(tiny_models, ["bpe_a"], remote=False), "single").members
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12]]
    cache = member.new_cache([len(p) for p in prompts], pad_id=0, logit_size=420)
    same_here = local.new_cache([len(p) for p in prompts], pad_id=0, logit_size=420)
    assert isinstance(cache, RemoteCache)

    def advance(targets, active, sent):
        logits, hidden = cache.advance(targets, active, hidden=True)
        expected_logits, expected_hidden = same_here.advance(targets, active, hidden=True)
        rows = torch.tensor(active)
        assert torch.equal(logits[rows], expected_logits[rows]) and torch.equal(hidden[rows], expected_hidden[rows])
        assert bool(logits[~rows].eq(0).all())  # a row that did not run gets no logits
        assert member.traffic.ids_sent == sent and cache.stats == same_here.stats

    advance(prompts, [True, True], sent=8)  # the prompts, once
    grown = [[*prompts[0], 13, 14, 15], [*prompts[1], 16]]  # a member that was not drawn catches up by three
    advance(grown, [True, True], sent=8 + 3 + 1)
    cropped = [[*prompts[0], 13, 20], grown[1]]  # a re-tokenisation changed the last two ids of row 0
    advance(cropped, [True, False], sent=12 + 1)
    assert cache.stats.cropped_tokens == 2


def test_likelihood_scores_match_members_in_this_process(local_ray, tiny_models):
    from mixens.harness import EnsembleLM

    requests = [("Question: 2 + 2 =", " 4"), ("Question: 2 + 2 =", " five"), ("The sky is", " blue today")]

    class Request:
        def __init__(self, args):
            self.args = args

    scores = {}
    for remote in (False, True):
        ensemble = mixens.load_ensemble(pool(tiny_models, ("bpe_a", "sp_c"), remote=remote), "mixture")
        lm = EnsembleLM(ensemble=ensemble)
        scores[remote] = lm.loglikelihood([Request(r) for r in requests], disable_tqdm=True)
    assert scores[True] == pytest.approx(scores[False], abs=1e-5)
    assert [greedy for _, greedy in scores[True]] == [greedy for _, greedy in scores[False]]


def test_a_member_whose_actor_dies_is_named(local_ray, tiny_models):
    ensemble = mixens.load_ensemble(pool(tiny_models, ("bpe_a", "bpe_b"), remote=True), "averaging")
    ray.kill(ensemble.members[1].model.actor)
    with pytest.raises(MemberLost, match=r"member bpe_b's Ray actor is gone .*resumes there"):
        ensemble.generate(PROMPTS, max_new_tokens=4, do_sample=False)


@pytest.mark.parametrize(
    ("ray_actor", "message"),
    [
        ({"num_gpu": 1}, r"unknown keys \['num_gpu'\]"),
        ({"num_gpus": -1}, r"ray_actor.num_gpus must be a number >= 0"),
        ({"resources": {"node_b": "one"}}, r"ray_actor.resources.node_b must be a number"),
        ({"resources": 3}, r"ray_actor.resources must be a mapping"),
        ("gpu", r"ray_actor must be a mapping"),
    ],
)
def test_bad_actor_options_are_one_sentence_before_ray_starts(tiny_models, ray_actor, message):
    with pytest.raises(ConfigError, match=message):
        mixens.load_ensemble([spec(tiny_models["bpe_a"], "a", ray_actor=ray_actor)], "single")


def test_an_actor_the_cluster_cannot_hold_is_refused_with_what_it_has(local_ray, tiny_models):
    with pytest.raises(ConfigError, match=r"asks for \{'GPU': 1\} but the Ray cluster has \{'GPU': 0\}"):
        mixens.load_ensemble([spec(tiny_models["bpe_a"], "a", ray_actor={"num_gpus": 1})], "single")
