"""The lm-eval adapter (mixens.harness) on tiny models: parity with lm-eval's own `hf` model for one member,
the mixture likelihoods of ensembles, the registry and model_args, and one real task end to end.

Parity with lm-eval's `hf` model is checked in float64, where every log-likelihood must agree within 1e-5, and
in float32, the precision runs use. The fixture's models are deliberately peaked, so a continuation's
log-likelihood reaches -290, where neighbouring float32 numbers are 3e-5 apart and lm-eval's `hf` model differs
from itself at another batch size by up to 7.6e-6; in float32 the bound is therefore "within 1e-5, or 4 float32
epsilons of the value where that is larger" (rel=5e-7). A tokenisation or position bug moves a value by whole
units, so both checks bite; the token ids themselves are compared exactly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys

import lm_eval
import pytest
import torch
from conftest import HUB_FIXTURE, REPO, spec
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from transformers import AutoModelForCausalLM, AutoTokenizer

import mixens
from mixens.errors import ConfigError
from mixens.harness import EnsembleLM
from mixens.tasks import TASKS_DIR

REL = 5e-7  # 4 float32 epsilons
TOLERANCE = {"float64": {"rel": 0, "abs": 1e-5}, "float32": {"rel": REL, "abs": 1e-5}}

MULTIPLE_CHOICE = {
    "The capital of France is": [" Paris", " Rome", " Berlin", " a city in Europe"],
    "Question: what is 12 + 30?\nAnswer:": [" 42", " 24", " 12 + 30 = 42"],
    "Janet has 16 eggs; she eats 3 ": ["eggs", "and bakes 4"],  # trailing space moves to the continuation
    "def add(a, b):\n    return": [" a + b", " a - b", "\n"],
    "": [" Hello", "The", "<|endoftext|> Hi"],  # empty context: the BOS/EOS prefix token, unless it starts the text
}
GENERATION_KWARGS = [
    {"until": ["\n", "."], "max_gen_toks": 12, "do_sample": False},
    {"until": " ", "max_gen_toks": 12},
    {"until": ["e", "a"], "max_gen_toks": 12, "temperature": 0.0},
    {"max_gen_toks": 12},  # no until: the EOS text is the stop string
]
PROMPTS = ["The capital of France is", "Question: what is 12 + 30?\nAnswer:", "Hi", "def add(a, b):"]
CHAT_TEMPLATE = (  # the fixture's tokenizers have none; like most templates it writes BOS itself
    "{{ bos_token or '' }}{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
TEXTS = [
    "The capital of France is Paris. The capital of Italy is Rome. " * 3,
    "Question: what is 12 + 30? Answer: 42.\nQuestion: 7 * 6? Answer: 42.",
    "Über café naïve — déjà vu! 東京 is a city.",
]


def loglikelihood_requests(pairs) -> list[Instance]:
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def multiple_choice_pairs(extra=()) -> list[tuple[str, str]]:
    return [(c, x) for c, xs in MULTIPLE_CHOICE.items() for x in xs] + list(extra)


def single(path: str, name: str, dtype: str = "float32", **kwargs) -> EnsembleLM:
    return EnsembleLM(ensemble=mixens.load_ensemble([spec(path, name, dtype=dtype)], "single"), **kwargs)


def next_token_probs(models: dict, weights: dict, ids: list[int]) -> torch.Tensor:
    """sum_i w_i P_i(. | ids) over every position, computed directly from each model's own logits (float64)."""
    with torch.no_grad():
        logits = {n: models[n](torch.tensor([ids])).logits[0].double() for n in weights}
    return sum(w * torch.softmax(logits[n], dim=-1) for n, w in weights.items())


def greedy_pair(path_or_models, weights=None, tokens: int = 3) -> tuple[str, str]:
    """A prompt and the text greedily written after it (by one model, or by the mixture of `weights`), cut to
    the longest run of greedy tokens that tokenises back to itself: a continuation lm-eval calls greedy.
    The tiny models write byte soup, so not every prompt has one."""
    if weights is None:
        path = path_or_models
        models, weights = {"m": AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()}, {"m": 1.0}
    else:
        path, models = next(iter(path_or_models.values())).name_or_path, path_or_models
    tok = AutoTokenizer.from_pretrained(path)
    for context in PROMPTS:
        context_ids = tok(context)["input_ids"]
        ids = list(context_ids)
        for _ in range(tokens):
            ids.append(int(next_token_probs(models, weights, ids)[-1].argmax()))
        new = ids[len(context_ids) :]
        for k in range(len(new), 0, -1):
            text = tok.decode(new[:k])
            if tok(context + text)["input_ids"] == context_ids + new[:k]:
                return context, text
    raise AssertionError("no prompt has a greedy continuation that survives re-tokenisation")


@pytest.fixture(scope="module")
def hf_models(tiny_models):
    """lm-eval's own HF model per (tiny model, dtype), built on first use."""
    built = {}

    def get(name: str, dtype: str = "float32") -> HFLM:
        if (name, dtype) not in built:
            built[name, dtype] = HFLM(pretrained=tiny_models[name], device="cpu", batch_size=4, dtype=dtype)
        return built[name, dtype]

    return get


@pytest.fixture(scope="module")
def singles(tiny_models):
    """mixens' `single` strategy per (tiny model, dtype), built on first use."""
    built = {}

    def get(name: str, dtype: str = "float32") -> EnsembleLM:
        if (name, dtype) not in built:
            built[name, dtype] = single(tiny_models[name], name, dtype=dtype, batch_size=4)
        return built[name, dtype]

    return get


# ---------------------------------------------------------------------------------- parity with lm-eval's hf


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["bpe_a", "sp_c"])
def test_loglikelihood_equals_lm_evals_hf_model(tiny_models, hf_models, singles, name, dtype):
    hf, ours = hf_models(name, dtype), singles(name, dtype)
    pairs = multiple_choice_pairs([greedy_pair(tiny_models[name])])
    seen = []  # the token ids lm-eval's model scores
    original = hf._loglikelihood_tokens
    hf._loglikelihood_tokens = lambda reqs, **kw: seen.extend(reqs) or original(reqs, **kw)
    try:
        expected = hf.loglikelihood(loglikelihood_requests(pairs), disable_tqdm=True)
    finally:
        del hf._loglikelihood_tokens
    got = ours.loglikelihood(loglikelihood_requests(pairs), disable_tqdm=True)

    assert [ours.encoders[0].pair(*pair) for pair in pairs] == [(ctx, cont) for _, ctx, cont in seen]
    for pair, (want, want_greedy), (have, have_greedy) in zip(pairs, expected, got):
        assert have == pytest.approx(want, **TOLERANCE[dtype]), pair
        assert have_greedy == want_greedy, pair
    assert any(g for _, g in expected) and not all(g for _, g in expected)  # both outcomes are exercised


@pytest.mark.parametrize("name", ["bpe_a", "sp_c"])
def test_greedy_generation_equals_lm_evals_hf_model(tiny_models, hf_models, name):
    hf = hf_models(name)
    ours = single(tiny_models[name], name, batch_size=hf.batch_size)
    requests = [
        Instance("generate_until", {}, (prompt, dict(kwargs)), i)
        for i, (prompt, kwargs) in enumerate((p, k) for k in GENERATION_KWARGS for p in PROMPTS)
    ]
    expected = hf.generate_until(requests, disable_tqdm=True)
    got = ours.generate_until(requests, disable_tqdm=True)
    assert got == expected
    uncut = expected[-len(PROMPTS) :]  # the same 12 tokens, no stop string but EOS
    shorter = [len(t) < len(uncut[i % len(PROMPTS)]) for i, t in enumerate(expected[: -len(PROMPTS)])]
    assert sum(shorter) >= 3  # the stop strings did cut generations
    assert ours.speed_stats.sequences == len(requests) and ours.speed_stats.tokens_generated > 0


def test_sampling_kwargs_reach_the_decoder(singles):
    lm = singles("bpe_a")

    def generate(**kwargs):
        requests = [
            Instance("generate_until", {}, (p, {"max_new_tokens": 10, **kwargs}), i) for i, p in enumerate(PROMPTS)
        ]
        return lm.generate_until(requests, disable_tqdm=True)

    greedy = generate(do_sample=False)
    # top_k=1 and a tiny top_p leave one candidate: sampling then is greedy decoding.
    assert generate(do_sample=True, temperature=0.7, top_k=1) == greedy
    assert generate(do_sample=True, top_p=1e-6) == greedy
    sampled = generate(do_sample=True, temperature=1.5)
    assert sampled != greedy and generate(do_sample=True, temperature=1.5) == sampled  # seeded
    with pytest.raises(ConfigError, match="top_p"):
        generate(do_sample=True, top_p=0.0)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["bpe_a", "sp_c"])
@pytest.mark.parametrize("max_length", [None, 24])
def test_loglikelihood_rolling_equals_lm_evals_hf_model(tiny_models, hf_models, singles, name, max_length, dtype):
    if max_length is None:
        hf, ours = hf_models(name, dtype), singles(name, dtype)
    else:  # several windows per text
        hf = HFLM(pretrained=tiny_models[name], device="cpu", batch_size=4, max_length=max_length, dtype=dtype)
        ours = EnsembleLM(ensemble=singles(name, dtype).ensemble, batch_size=4, max_length=max_length)
    requests = [Instance("loglikelihood_rolling", {}, (text,), i) for i, text in enumerate(TEXTS)]
    expected = hf.loglikelihood_rolling(requests, disable_tqdm=True)
    got = ours.loglikelihood_rolling(requests, disable_tqdm=True)
    # float32 sums of up to ~100 rounded terms per window: 4 epsilons of the total, or 1e-4
    tolerance = TOLERANCE[dtype] if dtype == "float64" else {"rel": REL, "abs": 1e-4}
    assert got == pytest.approx(expected, **tolerance)


def test_requests_sharing_a_context_share_its_forward(singles):
    lm = EnsembleLM(ensemble=singles("bpe_a").ensemble, batch_size=64)
    shapes = []
    hook = lm.members[0].model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        lm.loglikelihood(loglikelihood_requests(multiple_choice_pairs()), disable_tqdm=True)
    finally:
        hook.remove()
    # One batch: the distinct contexts once, then every continuation longer than a token on their cache.
    multi_token = [p for p in multiple_choice_pairs() if len(lm.encoders[0].pair(*p)[1]) > 1]
    assert [rows for rows, _ in shapes] == [len(MULTIPLE_CHOICE), len(multi_token)]


@pytest.mark.parametrize("name", ["bpe_a", "sp_c"])
def test_chat_template_members_read_lm_evals_prompts_through_their_template(tiny_models, hf_models, name):
    lm = EnsembleLM(
        ensemble=mixens.load_ensemble([spec(tiny_models[name], name, chat_template=CHAT_TEMPLATE)], "single")
    )
    prompt = lm.apply_chat_template([{"role": "user", "content": "What is 12 + 30?"}])
    rendered, _ = lm.members[0].render_prompt(prompt)
    assert rendered.endswith("<|user|>What is 12 + 30?\n<|assistant|>") and CHAT_TEMPLATE in lm.chat_template(True)
    # lm-eval's hf model given the rendered text: the same numbers and the same generation.
    continuations = [" 42", "The answer is 42"]
    got = lm.loglikelihood(loglikelihood_requests([(prompt, c) for c in continuations]), disable_tqdm=True)
    hf = hf_models(name)
    expected = hf.loglikelihood(loglikelihood_requests([(rendered, c) for c in continuations]), disable_tqdm=True)
    assert [v for v, _ in got] == pytest.approx([v for v, _ in expected], rel=REL, abs=1e-5)

    def generate(model, text):
        return model.generate_until([Instance("generate_until", {}, (text, {"max_gen_toks": 8}), 0)])

    assert generate(lm, prompt) == generate(hf, rendered)
    with pytest.raises(ConfigError, match=rf"the tokenizer of \['{name}'\] has none"):
        single(tiny_models[name], name).apply_chat_template([{"role": "user", "content": "Hi"}])


ROLE_TEMPLATE = (
    "{{ bos_token or '' }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CHAT = [  # what lm-eval builds for --system_instruction with --fewshot_as_multiturn
    {"role": "system", "content": "Answer with a number."},
    {"role": "user", "content": "What is 1 + 1?"},
    {"role": "assistant", "content": "2"},
    {"role": "user", "content": "What is 12 + 30?"},
]


@pytest.mark.parametrize("name", ["bpe_a", "sp_c"])
def test_a_chat_of_several_turns_reads_as_the_members_template_renders_it(tiny_models, hf_models, name):
    """A system instruction and few-shot turns reach each member through its own template, with the numbers
    and the generation of lm-eval's HF model given the text that template renders."""
    lm = EnsembleLM(
        ensemble=mixens.load_ensemble([spec(tiny_models[name], name, chat_template=ROLE_TEMPLATE)], "single")
    )
    prompt = lm.apply_chat_template(CHAT)
    tokenizer = lm.members[0].tokenizer
    rendered = tokenizer.apply_chat_template(
        CHAT, chat_template=ROLE_TEMPLATE, tokenize=False, add_generation_prompt=True
    )
    assert lm.members[0].render_prompt(prompt) == (rendered, False) and rendered.startswith(
        f"{tokenizer.bos_token or ''}<|system|>"
    )
    continuations = [" 42", "The answer is 42"]
    got = lm.loglikelihood(loglikelihood_requests([(prompt, c) for c in continuations]), disable_tqdm=True)
    hf = hf_models(name)
    expected = hf.loglikelihood(loglikelihood_requests([(rendered, c) for c in continuations]), disable_tqdm=True)
    assert [v for v, _ in got] == pytest.approx([v for v, _ in expected], rel=REL, abs=1e-5)
    request = [Instance("generate_until", {}, (prompt, {"max_gen_toks": 8}), 0)]
    assert lm.generate_until(request) == hf.generate_until(
        [Instance("generate_until", {}, (rendered, {"max_gen_toks": 8}), 0)]
    )
    # lm-eval's gen_prefix: the chat ends in the start of the answer, which the member continues
    prefilled = lm.apply_chat_template(
        [*CHAT, {"role": "assistant", "content": "The answer is"}], add_generation_prompt=False
    )
    assert lm.members[0].render_prompt(prefilled)[0] == rendered + "The answer is"


def test_the_python_api_takes_chats_as_prompts(tiny_models):
    from mixens.chat import chat_prompt

    ensemble = mixens.load_ensemble(
        [spec(tiny_models[n], n, chat_template=ROLE_TEMPLATE) for n in ("bpe_a", "sp_c")], "mixture"
    )
    greedy = {"max_new_tokens": 6, "do_sample": False}
    one = ensemble.generate(CHAT, **greedy).texts  # one chat is one prompt, not four
    assert len(one) == 1 and one == ensemble.generate(chat_prompt(CHAT), **greedy).texts
    assert ensemble.generate([CHAT, "What is 2 + 2?"], **greedy).texts[0] == one[0]
    with pytest.raises(ConfigError, match="message 1 needs a role"):
        ensemble.generate([[{"role": "user", "content": "Hi"}, {"role": "robot", "content": "beep"}]], **greedy)


def test_apply_chat_template_alone_turns_on_each_members_own_template(tiny_models, tmp_path):
    """lm-eval's --apply_chat_template with no chat_template in model_args: each tokenizer's own template."""
    import shutil

    from transformers import AutoTokenizer

    folder = shutil.copytree(tiny_models["bpe_a"], tmp_path / "with_template")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    lm = single(str(folder), "t")
    assert lm.members[0].spec.chat_template is False and CHAT_TEMPLATE in lm.chat_template(True)
    prompt = lm.apply_chat_template([{"role": "user", "content": "What is 12 + 30?"}])
    rendered, _ = lm.members[0].render_prompt(prompt)
    assert rendered.endswith("<|user|>What is 12 + 30?\n<|assistant|>")
    assert lm.encoders[0].member is lm.members[0]  # likelihood reads through the template too


# ---------------------------------------------------------------------------------- ensemble likelihoods


@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.2, 0.8)])
def test_two_copies_of_one_model_score_as_that_model(tiny_models, singles, weights):
    path = tiny_models["bpe_a"]
    copies = mixens.load_ensemble([spec(path, "a1", weights[0]), spec(path, "a2", weights[1])], "mixture")
    lm = EnsembleLM(ensemble=copies, batch_size=4)
    pairs = multiple_choice_pairs()
    expected = singles("bpe_a").loglikelihood(loglikelihood_requests(pairs), disable_tqdm=True)
    got = lm.loglikelihood(loglikelihood_requests(pairs), disable_tqdm=True)
    assert [g for _, g in got] == [g for _, g in expected]
    assert [v for v, _ in got] == pytest.approx([v for v, _ in expected], rel=0, abs=1e-5)
    rolling = [Instance("loglikelihood_rolling", {}, (TEXTS[0],), 0)]
    assert lm.loglikelihood_rolling(rolling) == pytest.approx(singles("bpe_a").loglikelihood_rolling(rolling), abs=1e-5)


def test_shared_vocabulary_mixture_equals_the_mixture_of_each_models_logits(tiny_models):
    weights = {"bpe_a": 0.3, "bpe_b": 0.7}
    models = {n: AutoModelForCausalLM.from_pretrained(tiny_models[n], dtype=torch.float32).eval() for n in weights}
    greedy = greedy_pair(models, weights)
    pairs = [("The capital of France is", " Paris, a city"), greedy]
    ensemble = mixens.load_ensemble([spec(tiny_models[n], n, w) for n, w in weights.items()], "averaging")
    got = EnsembleLM(ensemble=ensemble, batch_size=4).loglikelihood(loglikelihood_requests(pairs), disable_tqdm=True)

    tok = AutoTokenizer.from_pretrained(tiny_models["bpe_a"])
    alone = {n: single(tiny_models[n], n) for n in weights}
    for (context, continuation), (value, is_greedy) in zip(pairs, got):
        context_ids = tok(context)["input_ids"]
        tokens = tok(context + continuation)["input_ids"][len(context_ids) :]
        probs = next_token_probs(models, weights, context_ids + tokens[:-1])[len(context_ids) - 1 :]
        target = torch.tensor(tokens)
        assert value == pytest.approx(float(probs.gather(1, target[:, None]).log().sum()), rel=REL, abs=1e-5)
        assert is_greedy == bool((probs.argmax(dim=-1) == target).all())
        # Not either member's own number: the test would catch a harness that scored one member.
        for n in weights:
            [(member_value, _)] = alone[n].loglikelihood(loglikelihood_requests([(context, continuation)]))
            assert abs(member_value - value) > 1e-2
    assert [g for _, g in got] == [False, True]


def test_different_tokenizers_score_the_sequence_level_mixture(tiny_models, singles):
    weights = {"bpe_a": 0.4, "sp_c": 0.6}
    ensemble = mixens.load_ensemble([spec(tiny_models[n], n, w) for n, w in weights.items()], "mixture")
    assert not ensemble.shared_vocabulary
    lm = EnsembleLM(ensemble=ensemble, batch_size=4)
    pairs = multiple_choice_pairs()
    got = lm.loglikelihood(loglikelihood_requests(pairs), disable_tqdm=True)
    alone = {n: singles(n).loglikelihood(loglikelihood_requests(pairs), disable_tqdm=True) for n in weights}
    for i, (value, is_greedy) in enumerate(got):
        assert math.isfinite(value)
        parts = [(w, alone[n][i]) for n, w in weights.items()]
        assert value == pytest.approx(math.log(sum(w * math.exp(logp) for w, (logp, _) in parts)), abs=1e-9)
        assert is_greedy == all(g for _, (_, g) in parts)

    rolling = [Instance("loglikelihood_rolling", {}, (text,), i) for i, text in enumerate(TEXTS)]
    got_rolling = lm.loglikelihood_rolling(rolling)
    alone_rolling = {n: singles(n).loglikelihood_rolling(rolling) for n in weights}
    for i, value in enumerate(got_rolling):
        mixed = [math.log(w) + alone_rolling[n][i] for n, w in weights.items()]
        top = max(mixed)
        assert value == pytest.approx(top + math.log(sum(math.exp(m - top) for m in mixed)), abs=1e-9)


def test_a_journal_answers_finished_slices_and_batches_without_scoring_them_again(
    tiny_models, tmp_path, monkeypatch, caplog
):
    """What an earlier attempt finished comes back from the journal exactly; nothing is computed twice."""
    from mixens import harness
    from mixens.journal import RequestJournal

    monkeypatch.setattr(harness, "SCORE_SLICE", 4)  # several slices from a few requests
    ensemble = mixens.load_ensemble([spec(tiny_models[n], n) for n in ("bpe_a", "bpe_b")], "mixture")
    requests = loglikelihood_requests(multiple_choice_pairs())
    prompts = [
        Instance("generate_until", {}, (p, {"max_gen_toks": 6, "do_sample": True}), i) for i, p in enumerate(PROMPTS)
    ]

    def attempt():
        journal = RequestJournal(tmp_path / "journal.sqlite", {"job": 1})
        lm = EnsembleLM(ensemble=ensemble, batch_size=2, seed=5, journal=journal)
        return lm, lm.loglikelihood(requests, disable_tqdm=True), lm.generate_until(prompts, disable_tqdm=True)

    with caplog.at_level(logging.DEBUG, logger="mixens.harness"):  # per-batch detail at DEBUG
        first, scores, texts = attempt()
    assert any(
        re.fullmatch(r"batch 0 of group 0: 2 prompts, seed \d+, \d+ tokens in .* s", r.message) for r in caplog.records
    )
    assert first.journal.resumed == 0 and first.journal.finished_batches() == -(-len(requests) // 4) + 2
    calls = []
    monkeypatch.setattr(harness, "mixture_scores", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(ensemble, "decode", lambda *a, **k: calls.append(a))
    with caplog.at_level(logging.DEBUG, logger="mixens.harness"):
        again, scores_again, texts_again = attempt()
    assert "batch 1 of group 0: 2 prompts from the journal" in caplog.text
    assert (scores_again, texts_again, calls) == (scores, texts, [])
    assert again.journal.resumed == len(requests) + len(prompts)
    other = RequestJournal(tmp_path / "journal.sqlite", {"job": 2})  # another config: its batches are not these
    assert other.finished_batches() == 0


# ---------------------------------------------------------------------------------- registry and arguments


def test_registered_under_mixens_next_to_lm_evals_own_models():
    assert get_model("mixens") is EnsembleLM
    assert get_model("hf") is HFLM


def test_lm_evals_own_cli_runs_the_mixens_model(tiny_models, tmp_path):
    """`python -m mixens.lm_eval_cli` is lm-eval's CLI with "mixens" registered and mixens' tasks found
    without --include_path: a different-tokenizer pair on a paper task, read from the offline mirror
    (the working directory)."""
    models = f"{tiny_models['bpe_a']}|{tiny_models['sp_c']}"
    args = [
        sys.executable, "-m", "mixens.lm_eval_cli", "run", "--model", "mixens",
        "--model_args", f"models={models},weights=0.6|0.4,strategy=mixture,device=cpu",
        "--tasks", "gsm8k_paper", "--limit", "2", "--use_cache", str(tmp_path / "cache" / "requests"),
        "--gen_kwargs", "max_gen_toks=6,do_sample=false", "--output_path", str(tmp_path / "out"),
    ]  # fmt: skip
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(args, cwd=HUB_FIXTURE, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Cached requests: 0, Requests remaining: 2" in done.stderr
    again = subprocess.run(args, cwd=HUB_FIXTURE, env=env, capture_output=True, text=True, timeout=600)
    assert "Cached requests: 2, Requests remaining: 0" in again.stderr  # the rerun comes from the cache
    assert "mixens generate_until" not in again.stderr
    (written, _) = sorted((tmp_path / "out").rglob("results_*.json"))
    assert written.parent.name == "mixens-mixture-bpe_a+sp_c"  # named for the ensemble, not a random id
    results = json.loads(written.read_text())
    assert results["config"]["model"] == "mixens"
    assert results["results"]["gsm8k_paper"]["sample_len"] == 2
    assert 0.0 <= results["results"]["gsm8k_paper"]["exact_match,extract"] <= 1.0


def test_lm_evals_cli_with_a_system_instruction_and_few_shot_turns_reaches_each_members_template(tiny_models, tmp_path):
    """--apply_chat_template --system_instruction --fewshot_as_multiturn on a stock few-shot task: each member
    (two tokenizers, each with its own template) reads the whole chat, system turn and examples included."""
    from mixens.chat import as_messages

    folders = []
    for name in ("bpe_a", "sp_c"):
        folder = tmp_path / name
        shutil.copytree(tiny_models[name], folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        tokenizer.chat_template = ROLE_TEMPLATE
        tokenizer.save_pretrained(folder)
        folders.append(str(folder))
    args = [
        sys.executable, "-m", "mixens.lm_eval_cli", "run", "--model", "mixens",
        "--model_args", f"models={'|'.join(folders)},strategy=mixture,device=cpu",
        "--tasks", "gsm8k", "--num_fewshot", "2", "--limit", "2", "--gen_kwargs", "max_gen_toks=4",
        "--batch_size", "auto", "--max_batch_size", "4",
        "--apply_chat_template", "--system_instruction", "Answer with a number.", "--fewshot_as_multiturn",
        "--log_samples", "--output_path", str(tmp_path / "out"),
    ]  # fmt: skip
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(args, cwd=HUB_FIXTURE, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (samples,) = (tmp_path / "out").rglob("samples_gsm8k_*.jsonl")
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    chat = as_messages(rows[0]["arguments"]["gen_args_0"]["arg_0"])
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert chat[0]["content"] == "Answer with a number." and {row["doc_id"] for row in rows} == {0, 1}
    (results,) = (tmp_path / "out").rglob("results_*.json")
    settings = json.loads(results.read_text())
    assert settings["fewshot_as_multiturn"] and settings["system_instruction"] == "Answer with a number."
    assert settings["config"]["batch_sizes"] == [4]  # tiny models: the start of the search fits


def test_batch_size_auto_takes_the_largest_batch_that_fits(tiny_models, monkeypatch):
    """As lm-eval's HF model: start high, and on an out-of-memory error try smaller, here with a model that
    runs out of memory above 20 sequences of its full length."""
    ensemble = mixens.load_ensemble([spec(tiny_models[n], n) for n in ("bpe_a", "sp_c")], "mixture")
    base = ensemble.members[1].model.base_model
    seen = []

    def forward(input_ids=None, **kwargs):
        seen.append(tuple(input_ids.shape))
        if input_ids.shape[0] > 20:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return type(base).forward(base, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(base, "forward", forward)
    lm = EnsembleLM(ensemble=ensemble, batch_size="auto")
    assert 20 * 0.9 - 1 < lm.batch_size <= 20 and seen[0][0] == 64  # within one step of the limit, from 64 down
    assert {length for _, length in seen} == {lm.encoders[1].max_length}  # full-length sequences
    assert EnsembleLM(ensemble=ensemble, batch_size="auto:4", max_batch_size=8).batch_size == 8
    with pytest.raises(ConfigError, match="max_batch_size must be a positive integer"):
        EnsembleLM(ensemble=ensemble, batch_size="auto", max_batch_size=0)


def test_two_data_parallel_replicas_give_the_results_of_one_each_evaluating_its_share(tiny_models, tmp_path):
    """2 replicas, started by torchrun and as Ray actors on a local Ray cluster (gloo on a CPU): lm-eval gives
    each half the documents and gathers the results; with greedy averaging and likelihood scoring they equal
    those of one process exactly."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    models = f"{tiny_models['bpe_a']}|{tiny_models['sp_c']}"
    evaluation = [
        "-m", "mixens.lm_eval_cli", "run", "--model", "mixens",
        "--model_args", f"models={models},device=cpu,strategy=averaging",
        "--tasks", "gsm8k_paper,arc_challenge", "--limit", "4", "--gen_kwargs", "max_gen_toks=6,do_sample=false",
        "--log_samples",
    ]  # fmt: skip
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    ray = [sys.executable, "-m", "mixens.ray_eval", "--replicas", "2", "--", *evaluation[2:]]
    runs = {}
    for label, command in (("one", [sys.executable, *evaluation]), ("two", [*torchrun, *evaluation]), ("ray", ray)):
        out = tmp_path / label
        done = subprocess.run([*command, "--output_path", str(out)], cwd=HUB_FIXTURE, env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        (results,) = out.rglob("results_*.json")
        samples = {}
        for path in out.rglob("samples_*.jsonl"):
            for line in path.read_text().splitlines():
                row = json.loads(line)
                samples[path.name.split("_20")[0], row["doc_id"], row["filter"]] = row["resps"]
        runs[label] = (json.loads(results.read_text())["results"], samples, done.stderr)
    assert runs["two"][:2] == runs["one"][:2] == runs["ray"][:2]  # every metric and every output
    assert len(runs["one"][1]) == 4 + 4  # 4 documents of each task
    # each replica generated for 2 of the 4 documents; one process alone for all 4
    assert runs["two"][2].count("mixens generate_until: 100%|██████████| 2/2") == 2
    assert "mixens generate_until: 100%|██████████| 4/4" in runs["one"][2]
    assert "Building contexts for gsm8k_paper on rank 1" in runs["ray"][2]  # a second Ray actor took rank 1


def test_create_from_arg_string_builds_a_working_ensemble(tiny_models):
    args = (
        f"models={tiny_models['bpe_a']}|{tiny_models['bpe_b']},weights=0.6|0.4,names=x|y,"
        "strategy=averaging,device=cpu,seed=3,max_gen_toks=5"
    )
    # lm-eval's own --batch_size/--device: the batch size applies, the device in model_args wins.
    lm_eval_options = {"batch_size": "2", "device": "cuda:7", "max_batch_size": None}
    lm = get_model("mixens").create_from_arg_string(args, lm_eval_options)
    assert [(m.name, str(m.device)) for m in lm.members] == [("x", "cpu"), ("y", "cpu")]
    assert lm.ensemble.weights == pytest.approx((0.6, 0.4))
    assert (lm.ensemble.strategy.name, lm.batch_size, lm.seed, lm.max_gen_toks) == ("averaging", 2, 3, 5)
    [text] = lm.generate_until([Instance("generate_until", {}, ("The capital of", {"do_sample": False}), 0)])
    assert isinstance(text, str) and lm.speed_stats.tokens_generated <= 5
    [(value, _)] = lm.loglikelihood(loglikelihood_requests([("The capital of", " France")]))
    assert math.isfinite(value) and value < 0


def test_bad_arguments_get_one_clear_sentence(tiny_models, singles):
    with pytest.raises(ConfigError, match="temprature"):
        EnsembleLM.create_from_arg_string(f"models={tiny_models['bpe_a']},temprature=1")
    with pytest.raises(ConfigError, match=r"\['parallelize', 'peft'\] are options of lm-eval's hf model"):
        EnsembleLM.create_from_arg_string(f"models={tiny_models['bpe_a']},parallelize=True,peft=./adapter")
    lm = EnsembleLM.create_from_arg_string(f"pretrained={tiny_models['bpe_a']},device_map=auto")  # lm-eval's name
    assert [(m.name, m.spec.device_map) for m in lm.members] == [("bpe_a", "auto")]
    with pytest.raises(ConfigError, match="weights has 3 values for 2 models"):
        EnsembleLM.create_from_arg_string(f"models={tiny_models['bpe_a']}|{tiny_models['bpe_b']},weights=1|2|3")
    request = Instance("generate_until", {}, ("Hi", {"max_gen_toks": 2, "repetition_penalty": 1.2}), 0)
    with pytest.raises(ConfigError, match="repetition_penalty"):
        singles("bpe_a").generate_until([request])


# ---------------------------------------------------------------------------------- a real task


def test_gsm8k_paper_end_to_end(tiny_models, monkeypatch):
    monkeypatch.chdir(HUB_FIXTURE)  # lm-eval resolves openai/gsm8k to the folder here
    ensemble = mixens.load_ensemble(
        [spec(tiny_models["bpe_a"], "a", 0.5), spec(tiny_models["sp_c"], "c", 0.5)], "mixture"
    )
    lm = EnsembleLM(ensemble=ensemble, batch_size=2, seed=0)
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=["gsm8k_paper"],
        limit=2,
        bootstrap_iters=0,
        task_manager=TaskManager(include_path=str(TASKS_DIR), include_defaults=False),
        gen_kwargs={"max_gen_toks": 6},
    )
    assert 0.0 <= results["results"]["gsm8k_paper"]["exact_match,extract"] <= 1.0
    assert lm.speed_stats.sequences == 2 and 0 < lm.speed_stats.tokens_generated <= 12
    assert set(lm.speed_stats.members) == {"a", "c"}
    assert [m["name"] for m in results["config"]["ensemble_members"]] == ["a", "c"]


def test_lm_evals_request_cache_is_kept_apart_for_each_ensemble():
    """lm-eval keys its cache by the requests only; mixens' CLI gives each --model_args its own cache file."""
    from mixens.lm_eval_cli import cache_keyed_by_model

    def cache_path(model_args: str, style: str = "apart") -> str:
        use = ["--use_cache", "cache/run"] if style == "apart" else ["--use_cache=cache/run"]
        argv = ["run", "--model", "mixens", "--model_args", model_args, *use, "--tasks", "gsm8k_paper"]
        out = cache_keyed_by_model(argv)
        assert len(out) == len(argv) and out[-2:] == ["--tasks", "gsm8k_paper"]
        joined = " ".join(out)
        return joined.split("--use_cache")[1].strip(" =").split()[0]

    mixture, averaging = cache_path("models=a|b,strategy=mixture"), cache_path("models=a|b,strategy=averaging")
    assert mixture.startswith("cache/run_") and averaging.startswith("cache/run_") and mixture != averaging
    assert cache_path("models=a|b,strategy=mixture", "joined") == mixture  # the same ensemble finds its cache
    assert cache_keyed_by_model(["run", "--model", "mixens"]) == ["run", "--model", "mixens"]  # no cache: unchanged


def test_the_hydra_cli_and_the_python_api_write_the_same_texts(tiny_models, tmp_path, monkeypatch):
    """One sampled run, two front doors: `python -m mixens` and simple_evaluate on a loaded ensemble."""
    added = [f"+models.{n}={{name:{n},path:'{tiny_models[p]}',weight:1.0}}" for n, p in (("a", "bpe_a"), ("c", "sp_c"))]
    settings = [
        "benchmark.do_sample=true",
        "benchmark.temperature=1.0",
        "benchmark.top_k=5",
        "benchmark.max_gen_toks=6",
    ]
    args = [sys.executable, "-m", "mixens", "models=[]", *added, "device=cpu", "batch_size=2", "seed=3",
            "benchmark=gsm8k_paper", "benchmark.limit=2", *settings, f"data.hub_mirror={HUB_FIXTURE}",
            "logger=none", f"hydra.run.dir={tmp_path}/run"]  # fmt: skip
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "samples_gsm8k_paper.jsonl").read_text().splitlines()]
    from_cli = {row["doc_id"]: row["resps"][0][0] for row in rows}

    monkeypatch.chdir(HUB_FIXTURE)
    ensemble = mixens.load_ensemble([spec(tiny_models["bpe_a"], "a"), spec(tiny_models["sp_c"], "c")], "mixture")
    results = lm_eval.simple_evaluate(
        model=EnsembleLM(ensemble=ensemble, batch_size=2, seed=3),
        tasks=["gsm8k_paper"],
        limit=2,
        task_manager=TaskManager(include_path=str(TASKS_DIR), include_defaults=False),
        gen_kwargs={"do_sample": True, "temperature": 1.0, "top_k": 5, "max_gen_toks": 6},
        log_samples=True,
        random_seed=3, numpy_random_seed=3, torch_random_seed=3, fewshot_random_seed=3,
        bootstrap_iters=0,
    )  # fmt: skip
    from_api = {row["doc_id"]: row["resps"][0][0] for row in results["samples"]["gsm8k_paper"]}
    assert from_cli == from_api and len(from_api) == 2 and any(from_api.values())


@pytest.mark.parametrize("names", [("bpe_a", "bpe_b"), ("bpe_a", "sp_c")])
def test_the_likelihood_progress_counts_exactly_the_pieces_scored(tiny_models, names):
    from mixens.likelihood import _scoring_jobs, count_pieces

    lm = EnsembleLM(ensemble=mixens.load_ensemble([spec(tiny_models[n], n) for n in names], "mixture"))
    pairs = [[[enc.pair(c, x)] for c, x in multiple_choice_pairs()] for enc in lm.encoders]
    rolling = [[enc.rolling_windows(text) for text in TEXTS] for enc in lm.encoders]
    for pieces in (pairs, rolling):
        for weights in ((0.5, 0.5), (1.0, 0.0)):
            built = sum(len(items) for _, items in _scoring_jobs(weights, lm.ensemble.shared_vocabulary, pieces)[2])
            assert count_pieces(weights, lm.ensemble.shared_vocabulary, pieces) == built
