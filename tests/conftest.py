"""Offline test set-up and tiny models: two sharing a byte-level BPE tokenizer, one with a
SentencePiece-style tokenizer (metaspace, byte fallback, BOS), all built here from random weights."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Real benchmark rows carried by the repository (see tests/data/hub/README.md): tests read no other data.
HUB_FIXTURE = REPO / "tests" / "data" / "hub"

# Before transformers / datasets / wandb are imported anywhere: nothing in the tests touches a network.
os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    WANDB_MODE="offline",
    HF_HOME=(_hf_home := tempfile.mkdtemp(prefix="mixens-hf-home-")),
    TOKENIZERS_PARALLELISM="false",
)
atexit.register(shutil.rmtree, _hf_home, ignore_errors=True)
# Converted packaged models are kept between local runs (a fresh clone converts once).
os.environ.setdefault("MIXENS_CACHE", str(REPO / ".cache" / "mixens-test"))

import pytest  # noqa: E402
import torch  # noqa: E402

CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Janet has 16 eggs; she eats 3 and bakes 4, selling the rest for $2 each: 1,234 dollars?",
    "Über café naïve — déjà vu! 東京 is a city. Emoji: 🙂 🚀.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Question: what is 12 + 30? Answer: 42.\nQuestion: 7 * 6? Answer: 42.",
    "In the beginning the model reads the prompt, then it writes one token at a time.",
] * 4


def _byte_level_bpe(vocab_size: int = 420):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def _sentencepiece_style(vocab_size: int = 300):
    """Metaspace pieces with byte fallback and a BOS, like Llama-2/Mistral/Gemma tokenizers."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    base = Tokenizer(models.BPE(unk_token="<unk>"))
    base.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    base.train_from_iterator(
        CORPUS, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    )
    spec = json.loads(base.to_str())
    trained = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    pieces = specials + [f"<0x{b:02X}>" for b in range(256)] + [t for t, _ in trained if t not in specials]
    spec["model"]["vocab"] = {piece: i for i, piece in enumerate(pieces)}
    spec["model"]["byte_fallback"] = True
    for added in spec["added_tokens"]:
        added["id"] = pieces.index(added["content"])
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def build_tiny_model(folder: Path, tokenizer, seed: int, logit_scale: float = 6.0, head_dim: int = 16) -> Path:
    """A 2-layer Llama with random weights whose next-token distributions are peaked, not uniform,
    so that differences between members (and strategies) are visible in a few thousand draws. (vLLM's CPU
    attention needs head_dim >= 32.)"""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    size = max(tokenizer.get_vocab().values()) + 1
    config = LlamaConfig(
        vocab_size=size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=head_dim,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale / (0.02 * 8))
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """Paths of three tiny models: bpe_a and bpe_b share a tokenizer, sp_c has a different one."""
    root = tmp_path_factory.mktemp("tiny-models")
    bpe = _byte_level_bpe()
    sp = _sentencepiece_style()
    return {
        "bpe_a": str(build_tiny_model(root / "bpe_a", bpe, seed=1)),
        "bpe_b": str(build_tiny_model(root / "bpe_b", bpe, seed=2)),
        "sp_c": str(build_tiny_model(root / "sp_c", sp, seed=3)),
    }


def spec(path: str, name: str, weight: float = 1.0, **extra) -> dict:
    return {"name": name, "path": path, "weight": weight, "device": "cpu", **extra}
