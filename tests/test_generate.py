"""Generation end to end on tiny models: parity with transformers, copies, seeds, stop strings, statistics."""

from __future__ import annotations

import pytest
import torch
from conftest import CORPUS, _byte_level_bpe, spec
from transformers import AutoModelForCausalLM, AutoTokenizer

import mixens
from mixens import decoding

PROMPTS = ["The capital of France is", "Question: what is 12 + 30?\nAnswer:", "Hi", "def add(a, b):"]


@pytest.fixture(scope="module")
def ensembles(tiny_models):
    """Loaded once per module: strategy objects are cheap to swap, weights are not."""
    shared = [spec(tiny_models["bpe_a"], "a", 0.6), spec(tiny_models["bpe_b"], "b", 0.4)]
    mixed = [spec(tiny_models["bpe_a"], "a", 0.5), spec(tiny_models["sp_c"], "c", 0.5)]
    return {
        "shared": {s: mixens.load_ensemble(shared, s) for s in ("mixture", "averaging")},
        "different": {s: mixens.load_ensemble(mixed, s) for s in ("mixture", "averaging")},
    }


@pytest.mark.parametrize("name", ["bpe_a", "sp_c"])
def test_single_greedy_equals_transformers_generate(tiny_models, name):
    path = tiny_models[name]
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    out = model.generate(**batch, do_sample=False, max_new_tokens=24, pad_token_id=tok.pad_token_id)
    expected = tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)

    ensemble = mixens.load_ensemble([spec(path, name)], "single")
    result = ensemble.generate(PROMPTS, max_new_tokens=24, do_sample=False, batch_size=len(PROMPTS))
    assert result.texts == expected
    assert all(len(t) > 0 for t in expected)


@pytest.mark.parametrize("strategy", ["mixture", "averaging"])
@pytest.mark.parametrize("do_sample", [False, True])
def test_two_copies_of_one_model_equal_that_model(tiny_models, strategy, do_sample):
    path = tiny_models["bpe_a"]
    alone = mixens.load_ensemble([spec(path, "a")], "single")
    # Equal weights keep 0.5 * p + 0.5 * p bit-identical to p, so even sampled tokens must agree.
    weights = (0.5, 0.5) if do_sample else (0.3, 0.7)
    copies = mixens.load_ensemble([spec(path, "a1", weights[0]), spec(path, "a2", weights[1])], strategy)
    kwargs = dict(max_new_tokens=20, do_sample=do_sample, temperature=0.8, top_k=20, seed=7)
    expected = alone.generate(PROMPTS, **kwargs)
    got = copies.generate(PROMPTS, **kwargs)
    assert got.texts == expected.texts
    if strategy == "mixture":  # both copies were drawn, so catch-up was exercised
        assert all(m.forward_passes > 0 for m in got.stats.members.values())
        assert sum(m.catchup_tokens for m in got.stats.members.values()) > 0


ROUTERS = {"router_random": {"policy": "random"}, "router_confidence": {"policy": "confidence", "threshold": 0.4}}


@pytest.mark.parametrize("vocab", ["shared", "different"])
@pytest.mark.parametrize("strategy", ["mixture", "averaging", *ROUTERS])
def test_same_seed_same_texts_other_seed_other_texts(ensembles, vocab, strategy):
    base = ensembles[vocab]["mixture"]
    ensemble = base.with_strategy("router", **ROUTERS[strategy]) if strategy in ROUTERS else ensembles[vocab][strategy]
    first = ensemble.generate(PROMPTS, max_new_tokens=16, seed=3).texts
    again = ensemble.generate(PROMPTS, max_new_tokens=16, seed=3).texts
    other = ensemble.generate(PROMPTS, max_new_tokens=16, seed=4).texts
    assert first == again
    assert first != other


@pytest.mark.parametrize("strategy", ["mixture", "averaging"])
def test_the_batch_size_is_part_of_what_fixes_the_texts(ensembles, strategy):
    """As the README says: each batch has its own random streams, so another batch size gives other texts
    for the same seed (and the same batch size the same texts)."""
    ensemble = ensembles["shared"][strategy]
    alone = ensemble.generate(PROMPTS, max_new_tokens=16, seed=3, batch_size=1).texts
    assert alone == ensemble.generate(PROMPTS, max_new_tokens=16, seed=3, batch_size=1).texts
    assert alone != ensemble.generate(PROMPTS, max_new_tokens=16, seed=3, batch_size=len(PROMPTS)).texts


@pytest.mark.parametrize("vocab", ["shared", "different"])
def test_forward_passes_per_step(ensembles, vocab):
    mixture = ensembles[vocab]["mixture"].generate(PROMPTS, max_new_tokens=12, seed=0, batch_size=4).stats
    averaging = ensembles[vocab]["averaging"].generate(PROMPTS, max_new_tokens=12, seed=0, batch_size=4).stats
    assert mixture.forward_passes == mixture.steps  # one model per step
    assert averaging.forward_passes == 2 * averaging.steps
    assert sum(m.catchup_tokens for m in mixture.members.values()) > 0
    assert mixture.tokens_generated > 0 and mixture.wall_seconds > 0
    prompt_tokens = [m.prompt_tokens for m in averaging.members.values()]
    assert all(n >= len(PROMPTS) for n in prompt_tokens)


@pytest.mark.parametrize("vocab", ["shared", "different"])
def test_stop_strings_cut_the_text(ensembles, vocab):
    ensemble = ensembles[vocab]["averaging"]
    free = ensemble.generate(PROMPTS, max_new_tokens=30, do_sample=False).texts
    # A stop string taken from the middle of each free-running text: generation must end right before it.
    stops = [[text[len(text) // 2 : len(text) // 2 + 2]] for text in free]
    assert all(len(s[0]) == 2 for s in stops)
    cut = ensemble.generate(PROMPTS, max_new_tokens=30, do_sample=False, until=stops).texts
    for text, stop, short in zip(free, stops, cut):
        assert short == text[: text.index(stop[0])]


def test_every_eos_id_of_the_generation_config_ends_a_sequence(tiny_models, tmp_path):
    """A model whose generation config lists a second EOS id (as chat models do) stops at either."""
    path = tiny_models["bpe_a"]
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    prompt = tok(PROMPTS[:1], return_tensors="pt")
    out = model.generate(**prompt, do_sample=False, max_new_tokens=8, pad_token_id=tok.pad_token_id)
    generated = out[0, prompt["input_ids"].shape[1] :].tolist()
    # The first position whose token did not occur before it: make that token a second EOS.
    cut = next(j for j in range(1, len(generated)) if generated[j] not in generated[:j])
    assert tok.eos_token_id not in generated[: cut + 1]
    model.generation_config.eos_token_id = [tok.eos_token_id, generated[cut]]
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)

    result = mixens.load_ensemble([spec(str(tmp_path), "a")], "single").generate(
        PROMPTS[:1], max_new_tokens=8, do_sample=False
    )
    assert result.texts[0] == tok.decode(generated[:cut])
    assert result.stats.steps == cut + 1


def test_per_prompt_stop_lists_must_match_prompts(ensembles):
    with pytest.raises(mixens.ConfigError, match="one per prompt"):
        ensembles["shared"]["mixture"].generate(PROMPTS, max_new_tokens=2, until=[["a"], ["b"]])


def test_a_string_is_one_prompt_and_a_bad_batch_size_is_refused(tiny_models):
    ensemble = mixens.load_ensemble([spec(tiny_models["bpe_a"], "a")], "single")
    one = ensemble.generate("The capital of France is", max_new_tokens=3, do_sample=False)
    listed = ensemble.generate(["The capital of France is"], max_new_tokens=3, do_sample=False)
    assert len(one.texts) == 1 and one.texts == listed.texts
    for bad in (0, -1, 2.5):
        with pytest.raises(mixens.ConfigError, match="batch_size must be an integer >= 1"):
            ensemble.generate(["a", "b"], max_new_tokens=2, batch_size=bad)


@pytest.mark.parametrize("vocab", ["shared", "different"])
def test_a_prompt_longer_than_the_context_loses_its_first_tokens_with_a_warning(ensembles, vocab, caplog):
    """As lm-eval's own models do: the tiny members read 1024 positions, so 8 new tokens leave 1016."""
    long_prompt = " ".join(CORPUS) * 6  # 2,000 to 3,700 tokens, by tokenizer
    ensemble = ensembles[vocab]["averaging"]
    decoding._warned.clear()  # said once per member name in a process
    with caplog.at_level("WARNING", logger="mixens.decoding"):
        result = ensemble.generate([long_prompt, "Hi"], max_new_tokens=8, do_sample=False, batch_size=2)
    for fed in result.stats.members.values():  # both rows' prompts: the long one cut to at most 1016, "Hi"
        assert 990 < fed.prompt_tokens <= 1016 + 4
    assert result.stats.tokens_generated > 0
    assert caplog.text.count("its first tokens are left out") == 2  # once for each member


def test_a_learned_position_model_reads_a_long_prompt_instead_of_crashing(tmp_path):
    """GPT-2-style models index a position table: past its end they used to fail with an IndexError."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = _byte_level_bpe()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=1, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    ensemble = mixens.load_ensemble([spec(str(tmp_path / "gpt2"), "g")], "single")
    result = ensemble.generate([" ".join(CORPUS)], max_new_tokens=6, do_sample=False)
    assert result.stats.members["g"].prompt_tokens == 64 - 6
    with pytest.raises(mixens.ConfigError, match="reads at most 64 tokens, not enough for 64 new ones"):
        ensemble.generate(["Hi"], max_new_tokens=64)


@pytest.mark.parametrize("vocab", ["shared", "different"])
def test_an_empty_prompt_for_a_member_without_a_start_token_is_one_clear_error(ensembles, vocab):
    for prompts in ([""], ["Hi", ""]):
        with pytest.raises(mixens.ConfigError, match=r"prompt \d of the batch is empty for member a"):
            ensembles[vocab]["mixture"].generate(prompts, max_new_tokens=3)


def test_a_model_already_in_memory_generates_what_the_same_model_loaded_by_path_does(tiny_models):
    """A loaded model and tokenizer (fine-tuned, PEFT, quantised in this process) join as they are."""
    path = tiny_models["sp_c"]
    in_memory = {
        "name": "c",
        "model": AutoModelForCausalLM.from_pretrained(path),
        "tokenizer": AutoTokenizer.from_pretrained(path),
    }
    by_path = mixens.load_ensemble([spec(tiny_models["bpe_a"], "a"), spec(path, "c")], "mixture")
    given = mixens.load_ensemble([spec(tiny_models["bpe_a"], "a"), in_memory], "mixture")
    settings = {"max_new_tokens": 12, "top_k": 20, "seed": 4}
    prompts = ["The capital of France is", "Question: what is 12 + 30?\nAnswer:"]
    assert given.generate(prompts, **settings).texts == by_path.generate(prompts, **settings).texts
    assert given.members[1].model is in_memory["model"] and given.members[1].spec.path == "<in memory>"
    alone = mixens.load_ensemble([spec(tiny_models["bpe_a"], "a"), in_memory], "single", member="c")
    assert [m.model for m in alone.members] == [in_memory["model"]]  # single keeps the given model, loads nothing
    with pytest.raises(mixens.ConfigError, match=r"models\[0\].name is missing"):
        mixens.load_ensemble([{"model": in_memory["model"], "tokenizer": in_memory["tokenizer"]}])
    with pytest.raises(mixens.ConfigError, match=r"models\[0\].tokenizer must be"):
        mixens.load_ensemble([{"name": "x", "model": in_memory["model"], "tokenizer": None}])


@pytest.mark.parametrize("strategy", ["mixture", "averaging"])
def test_each_token_comes_with_its_log_probability_and_the_members_it_came_from(tiny_models, strategy):
    """Recomputed from the members' own forward passes on the prompt and the recorded ids."""
    names = ("bpe_a", "bpe_b")
    ensemble = mixens.load_ensemble([spec(tiny_models[n], n) for n in names], strategy)
    prompts = ["The capital of France is", "Hi"]
    result = ensemble.generate(prompts, max_new_tokens=10, seed=2, return_tokens=True)
    models = {m.name: m.model for m in ensemble.members}
    tokenizer = ensemble.members[0].tokenizer
    for prompt, text, record in zip(prompts, result.texts, result.tokens):
        assert len(record.ids) == len(record.logprobs) == len(record.members) == len(record.pieces) > 0
        assert tokenizer.decode(record.ids, skip_special_tokens=True).startswith(text)  # no stops given
        ids = tokenizer(prompt)["input_ids"]
        for token, logprob, used in zip(record.ids, record.logprobs, record.members):
            with torch.no_grad():
                probs = {n: torch.softmax(models[n](torch.tensor([ids])).logits[0, -1].double(), -1) for n in names}
            if strategy == "mixture":
                assert len(used) == 1  # the one member drawn for this token
                expected = probs[used[0]][token]
            else:
                assert used == names
                expected = sum(probs[n][token] for n in names) / 2
            assert logprob == pytest.approx(float(expected.log()), abs=1e-4)
            ids.append(token)
    drawn = {m for record in result.tokens for used in record.members for m in used}
    assert drawn == set(names)  # over 20 draws, both members wrote tokens
    assert ensemble.generate(prompts, max_new_tokens=10, seed=2).tokens is None  # only when asked


def test_with_different_tokenizers_the_recorded_ids_are_the_union_vocabularys(tiny_models):
    ensemble = mixens.load_ensemble([spec(tiny_models[n], n) for n in ("bpe_a", "sp_c")], "mixture")
    result = ensemble.generate(["The capital of France is"], max_new_tokens=12, seed=1, return_tokens=True)
    (record,) = result.tokens
    surfaces = [ensemble.vocab.surfaces[i] for i in record.ids if i != ensemble.vocab.EOS]
    assert b"".join(surfaces).decode("utf-8", errors="replace").startswith(result.texts[0])
    assert all(len(used) == 1 for used in record.members) and all(lp <= 0 for lp in record.logprobs)


def test_progress_moves_as_rows_finish_within_a_batch(tiny_models):
    from mixens.sampling import Sampling

    ensemble = mixens.load_ensemble([spec(tiny_models[n], n) for n in ("bpe_a", "sp_c")], "mixture")
    told = []
    prompts = ["The capital of France is", "Hi"]
    texts, _ = ensemble.decode(
        prompts, [tuple("abcdefghijklmnopqrstuvwxyz "), ()], Sampling(do_sample=False), 12, seed=0, finished=told.append
    )
    assert len(texts[0]) < 3  # the first row stops at its first letter or space, the second runs to 12 tokens
    assert told == [1, 1]  # the first row as it stopped, the second at the end: not both at the end


def test_a_member_placed_by_device_map_generates_what_it_does_on_one_device(tiny_models, monkeypatch):
    """device_map (a member larger than one GPU) goes to transformers; on this CPU-only machine 'auto' puts every
    layer on the CPU, so the texts must be those of device=cpu."""
    names = ("bpe_a", "sp_c")
    on_cpu = mixens.load_ensemble([spec(tiny_models[n], n) for n in names], "mixture")
    asked, load = [], AutoModelForCausalLM.from_pretrained

    def from_pretrained(*args, **kwargs):
        asked.append(kwargs.get("device_map"))
        return load(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", from_pretrained)
    placed = mixens.load_ensemble(
        [spec(tiny_models["bpe_a"], "bpe_a"), {"name": "sp_c", "path": tiny_models["sp_c"], "device_map": "auto"}],
        "mixture",
    )
    assert asked == [None, "auto"]  # placed by transformers, not moved by mixens
    settings = {"max_new_tokens": 10, "top_k": 20, "seed": 1}
    assert placed.generate(PROMPTS, **settings).texts == on_cpu.generate(PROMPTS, **settings).texts
    with pytest.raises(mixens.ConfigError, match=r"sets both device and device_map"):
        mixens.load_ensemble([spec(tiny_models["bpe_a"], "a", device_map="auto")])
    with pytest.raises(mixens.ConfigError, match=r"device_map 'everywhere' is unknown"):
        mixens.load_ensemble([{"name": "a", "path": tiny_models["bpe_a"], "device_map": "everywhere"}])
