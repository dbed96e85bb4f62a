"""Benchmark members: real architecture shapes (Llama / Qwen2 configs) with random weights, built locally.

Speed depends on shapes, not on what the weights say, so no checkpoint is downloaded. Members of one study
share one tokenizer (the shared-vocabulary path of mixens). The tokenizer is a byte-level BPE whose merges
are drawn at random until the vocabulary has the size the shape asks for: sampling, softmax and the output
layer then cost what they cost with a real vocabulary of that size.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from mixens.members import Member
from mixens.spec import ModelSpec


@dataclass(frozen=True)
class Shape:
    """An architecture shape; parameter counts in the names are approximate (embeddings included)."""

    family: str  # "llama" or "qwen2"
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = True


SHAPES: dict[str, Shape] = {
    # CPU sizes (tens to a few hundred million parameters).
    "tiny": Shape("llama", 64, 2, 128, 4, 2, 512),  # smoke tests only
    "tiny-2x": Shape("llama", 128, 2, 256, 4, 2, 512),
    "llama-20m": Shape("llama", 256, 8, 768, 4, 2, 49152),
    "llama-50m": Shape("llama", 512, 8, 1536, 8, 4, 49152),
    "llama-90m": Shape("llama", 768, 8, 2048, 12, 4, 49152),
    "smollm2-135m": Shape("llama", 576, 30, 1536, 9, 3, 49152),
    "smollm2-360m": Shape("llama", 960, 32, 2560, 15, 5, 49152),
    # GPU sizes (the published configs of these models).
    "qwen2.5-0.5b": Shape("qwen2", 896, 24, 4864, 14, 2, 151936),
    "qwen2.5-1.5b": Shape("qwen2", 1536, 28, 8960, 12, 2, 151936),
    "qwen2.5-3b": Shape("qwen2", 2048, 36, 11008, 16, 2, 151936),
    "qwen2.5-7b": Shape("qwen2", 3584, 28, 18944, 28, 4, 152064, tied=False),
    "llama-3.2-1b": Shape("llama", 2048, 16, 8192, 32, 8, 128256),
    "llama-3.2-3b": Shape("llama", 3072, 28, 8192, 24, 8, 128256),
}


def synthetic_tokenizer(vocab_size: int, seed: int = 0):
    """A byte-level BPE tokenizer with exactly `vocab_size` ids: 256 byte symbols, random merges, one EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = list(alphabet)
    known = set(tokens)
    merges = []
    while len(tokens) < vocab_size - 1:
        # Short pieces merge more often, as in a trained vocabulary.
        left = tokens[min(int(rng.expovariate(1 / 600)), len(tokens) - 1)]
        right = tokens[min(int(rng.expovariate(1 / 600)), len(tokens) - 1)]
        if left + right in known or len(left + right) > 12:  # real tokens are short
            continue
        merges.append((left, right))
        tokens.append(left + right)
        known.add(left + right)
    vocab = {t: i for i, t in enumerate(tokens)}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.padding_side = "left"
    return fast


def random_model(shape: Shape, device: torch.device, dtype: torch.dtype, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[
        shape.family
    ]
    config = config_cls(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=shape.tied,
        eos_token_id=None,  # random weights: nothing ends early, every run has the same length
        pad_token_id=shape.vocab - 1,
    )
    torch.manual_seed(seed)
    # Built directly on the device in its dtype: a 7B model never passes through host memory in fp32.
    with torch.device(device):
        model = model_cls._from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = shape.vocab - 1
    return model.eval()


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def build_member(name: str, shape_name: str, tokenizer, device: torch.device, dtype: torch.dtype, seed: int) -> Member:
    """A mixens member with no end-of-sequence ids, so every generation runs its full length."""
    shape = SHAPES[shape_name]
    # A model may have more output rows than the tokenizer has ids (as Qwen2.5-7B has); mixens drops them.
    if len(tokenizer) > shape.vocab:
        raise ValueError(f"shape {shape_name} has a {shape.vocab}-token vocabulary, the tokenizer {len(tokenizer)}")
    model = random_model(shape, device, dtype, seed)
    spec = ModelSpec(name=name, path=f"random:{shape_name}", device=str(device))
    return Member(spec, model, tokenizer, device, frozenset())


def fixed_length_prompts(tokenizer, count: int, length: int, seed: int = 0) -> list[str]:
    """Prompts that tokenise to exactly `length` ids, so a batch needs no padding."""
    rng = random.Random(seed)
    prompts = []
    while len(prompts) < count:
        ids = [rng.randrange(256, len(tokenizer) - 1) for _ in range(length)]
        for _ in range(8):  # decode/encode until the tokenisation is a fixed point of the right length
            text = tokenizer.decode(ids)
            again = tokenizer(text, add_special_tokens=True)["input_ids"]
            if again == ids:
                prompts.append(text)
                break
            ids = (again + [rng.randrange(256, len(tokenizer) - 1) for _ in range(length)])[:length]
    return prompts
