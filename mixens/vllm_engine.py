"""Members on vLLM engines (`engine=vllm`): one vLLM engine per member, loaded from the same paths.

vLLM lives in its own environment (`make vllm-setup`: its pins of transformers and numpy differ from mixens'),
so it is imported only here, when an ensemble asks for it. The decoding that suits it is in
mixens.vllm_decoding; this module loads members, scores continuations from vLLM's prompt log-probabilities
(VllmMember.continuation_logits), and says, before any weights load, what vLLM cannot run.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from unittest import mock

import torch

from mixens.errors import ConfigError
from mixens.members import Member, eos_token_ids, hub_access, local_source, resolve_device, resolve_dtype
from mixens.spec import ModelSpec

log = logging.getLogger(__name__)
ENGINES = ("transformers", "vllm")
# vLLM samples each member by itself and returns at most top-k log-probabilities: strategies that need every
# member's whole distribution (or hidden state) at every step run on transformers.
VLLM_STRATEGIES = ("single", "mixture", "averaging")
CPU_BLOCK_SIZE = 32
SETUP_HINT = "run `make vllm-setup` and use .venv-vllm/bin/python (vLLM needs its own environment)"
PROMPT_LOGPROBS = 20  # top log-probabilities per continuation position, for scoring (VllmMember.continuation_logits)
CPU_BINDING = "VLLM_CPU_OMP_THREADS_BIND"  # the cores a CPU engine computes on (vLLM's own default: "auto")


@dataclass(frozen=True)
class VllmOptions:
    """How each member's engine is built (vLLM's own engine arguments, the few mixens sets)."""

    # Skip CUDA graphs and compilation: an engine starts in seconds instead of minutes, and decodes slower.
    enforce_eager: bool = False
    max_model_len: int | None = None  # None: the model's own context length
    kv_cache_gib: float | None = None  # KV cache per member; None: vLLM's default (most of the free memory)
    gpu_memory_utilization: float | None = None  # per member on a GPU; None: 0.9 shared by the members
    tensor_parallel_size: int = 1  # GPUs per member
    # Tokens per KV block. The prefix cache keeps whole blocks only, and a member's next turn re-reads the text:
    # None takes 32 on a CPU (its smallest; vLLM's CPU default is 128) and vLLM's default on a GPU.
    block_size: int | None = None

    @classmethod
    def from_mapping(cls, raw: Mapping | None) -> VllmOptions:
        if raw is None:
            return cls()
        if isinstance(raw, VllmOptions):
            return raw
        known = [f.name for f in fields(cls)]
        if unknown := sorted(set(raw) - set(known)):
            raise ConfigError(f"vllm options {unknown} are unknown; the options are {known}.")
        options = cls(**raw)
        for name in ("max_model_len", "tensor_parallel_size", "block_size"):
            value = getattr(options, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"vllm.{name} must be an integer >= 1, got {value!r}.")
        if options.kv_cache_gib is not None and not options.kv_cache_gib > 0:
            raise ConfigError(f"vllm.kv_cache_gib must be > 0, got {options.kv_cache_gib!r}.")
        share = options.gpu_memory_utilization
        if share is not None and not 0 < share <= 1:
            raise ConfigError(f"vllm.gpu_memory_utilization must be in (0, 1], got {share!r}.")
        return options


def check_engine(engine: str, strategy_name: str, specs: Sequence[ModelSpec], in_memory: bool) -> None:
    """What the engine cannot run, in one sentence, before any weights load."""
    if engine not in ENGINES:
        raise ConfigError(f"engine '{engine}' is unknown; choose one of {', '.join(ENGINES)}.")
    if engine == "transformers":
        return
    check_strategy(strategy_name)
    if in_memory:
        raise ConfigError("a model given already loaded runs on engine=transformers; vLLM loads members from paths.")
    for i, spec in enumerate(specs):
        if spec.device.startswith("cuda:") and spec.device != "cuda:0":
            raise ConfigError(
                f"models[{i}].device is {spec.device}, but a vLLM engine takes the GPUs CUDA_VISIBLE_DEVICES shows; "
                "give device=cuda and set CUDA_VISIBLE_DEVICES for the process."
            )
        for field, value in (("ray_actor", spec.ray_actor), ("device_map", spec.device_map)):
            if value is not None:
                raise ConfigError(
                    f"models[{i}].{field} is for engine=transformers; on engine=vllm a member spans GPUs with "
                    "vllm.tensor_parallel_size."
                )
    try:
        import vllm  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"engine=vllm but vLLM is not installed here ({err}); {SETUP_HINT}.") from None


def check_strategy(strategy_name: str) -> None:
    if strategy_name not in VLLM_STRATEGIES:
        raise ConfigError(
            f"strategy '{strategy_name}' needs every member's whole next-token distribution at every step, which "
            f"vLLM does not return; on engine=vllm use one of {', '.join(VLLM_STRATEGIES)}, or engine=transformers."
        )


class EngineModel:
    """What the rest of mixens reads of a model (its configs, dtype, size), for a model inside a vLLM engine."""

    def __init__(self, engine, config, generation_config, dtype: torch.dtype, max_model_len: int, parameters: int):
        self.engine = engine
        self.config = copy.deepcopy(config)
        # mixens leaves room for the answer within the context the engine was built with
        self.config.get_text_config().max_position_embeddings = max_model_len
        self.generation_config = generation_config
        self.dtype = dtype
        self.max_model_len = max_model_len
        self._parameters = parameters

    def num_parameters(self) -> int:
        return self._parameters


def count_parameters(source: str, spec: ModelSpec) -> int:
    """Parameters in the model's safetensors files, from their headers (vLLM does not report them); 0 when
    the weights are in another format."""
    from pathlib import Path

    from safetensors import safe_open

    folder = Path(source)
    if not folder.is_dir():  # a hub id: the copy vLLM has just read from the cache
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(source, revision=spec.revision, local_files_only=True))
    total = 0
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(shard, framework="pt") as weights:
            total += sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())  # noqa: SIM118
    return total


@dataclass
class VllmMember(Member):
    """A member whose model is a vLLM engine (`model.engine`); decoded by mixens.vllm_decoding, scored here."""

    engine_name = "vllm"

    def new_cache(self, prompt_lengths: list[int], pad_id: int, logit_size: int, largest=None, draw=None):
        raise ConfigError(f"member {self.name} runs on vLLM, which mixens' step decoder cannot drive.")

    def continuation_logits(self, contexts, token_lists, group_of) -> torch.Tensor:
        """Logits [T, V] that predict each continuation token, built from vLLM's prompt log-probabilities.

        vLLM returns, for each position, the log-probability of the token there and of its top
        PROMPT_LOGPROBS tokens. Those go in as they are; the mass left over is spread evenly over the other ids.
        A row is then a normalised log-distribution, so a token's log-softmax is exactly its log-probability
        and the row's argmax is the model's own (no spread id can exceed the smallest listed one). Only where
        several members' distributions are added (the shared-vocabulary mixture's argmax, for is_greedy) do
        the spread values stand in for the true ones, which matters only when the mixture's argmax is outside
        some member's top PROMPT_LOGPROBS.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts = [
            TokensPrompt(prompt_token_ids=[*contexts[group_of[j]], *tokens]) for j, tokens in enumerate(token_lists)
        ]
        # max_tokens=1: vLLM decodes at least one token; the prompt's log-probabilities are what is read
        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=PROMPT_LOGPROBS, detokenize=False)
        outputs = self.model.engine.generate(prompts, params, use_tqdm=False)
        width = self.model.config.get_text_config().vocab_size
        rows = []
        for j, (tokens, output) in enumerate(zip(token_lists, outputs)):
            start = len(contexts[group_of[j]])
            for listed in output.prompt_logprobs[start : start + len(tokens)]:
                ids = torch.tensor(list(listed), dtype=torch.long)
                logps = torch.tensor([found.logprob for found in listed.values()], dtype=torch.float64)
                left = 1.0 - float(logps.exp().sum())
                spread = math.log(left / (width - len(ids))) if left > 0 and width > len(ids) else float("-inf")
                rows.append(torch.full((width,), spread, dtype=torch.float64).index_copy_(0, ids, logps).float())
        return torch.stack(rows)


def engine_cores(index: int, members: int, cores) -> list[int]:
    """The cores of member `index`'s engine on a CPU: this process's cores in `members` contiguous shares, or a
    core each in turn when there are fewer cores than members. vLLM's own binding puts every engine on the
    same cores, where engines called at once (mixens.vllm_decoding calls the members' engines together) take turns."""
    cores = sorted(cores)
    if len(cores) < members:
        return [cores[index % len(cores)]]
    share = len(cores) // members
    return cores[index * share : (index + 1) * share]


def load_vllm_member(spec: ModelSpec, index: int, options: VllmOptions, members_in_engine: int) -> VllmMember:
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig
    from vllm import LLM

    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    source = local_source(spec)
    hub = hub_access(spec, index)
    named = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(source, **named, **hub)
    config = AutoConfig.from_pretrained(source, **named, **hub)
    try:
        generation_config = GenerationConfig.from_pretrained(source, revision=spec.revision, **hub)
    except OSError:  # no generation_config.json: the tokenizer's EOS is the only stop
        generation_config = None
    engine_args = {
        "model": source,
        "tokenizer": source,
        "revision": spec.revision,
        "trust_remote_code": spec.trust_remote_code,
        "dtype": str(dtype).replace("torch.", ""),
        "enforce_eager": options.enforce_eager,
        "tensor_parallel_size": options.tensor_parallel_size,
        "enable_prefix_caching": True,  # a member's next turn re-reads the text it already read
        # log-probabilities after temperature, top-k and top-p: exactly F_i(P_i) (averaging mixes them)
        "logprobs_mode": "processed_logprobs",
        "max_logprobs": -1,
        "seed": 0,
    }
    if options.max_model_len is not None:
        engine_args["max_model_len"] = options.max_model_len
    if options.kv_cache_gib is not None:
        engine_args["kv_cache_memory_bytes"] = int(options.kv_cache_gib * 2**30)
    if device.type == "cuda":
        engine_args["gpu_memory_utilization"] = options.gpu_memory_utilization or 0.9 / members_in_engine
    if options.block_size is not None or device.type == "cpu":
        engine_args["block_size"] = options.block_size or CPU_BLOCK_SIZE
    log.info("starting a vLLM engine for %s from %s (%s, %s)", spec.name, source, dtype, device)
    binding = contextlib.nullcontext()
    if (
        device.type == "cpu"
        and members_in_engine > 1
        and options.tensor_parallel_size == 1
        and CPU_BINDING not in os.environ
    ):
        cores = engine_cores(index, members_in_engine, os.sched_getaffinity(0))
        log.info("%s's engine computes on cores %s (%s chooses others)", spec.name, cores, CPU_BINDING)
        binding = mock.patch.dict(os.environ, {CPU_BINDING: ",".join(map(str, cores))})  # and restored after
    with binding:  # read by the engine's process as it starts
        engine = LLM(**engine_args)
    # Stopped while the interpreter is whole: left to vLLM's own finalizers at exit, a run that scored
    # log-likelihoods could end in "terminate called without an active exception" after its results.
    atexit.register(engine.llm_engine.engine_core.shutdown)
    max_model_len = engine.llm_engine.model_config.max_model_len
    model = EngineModel(engine, config, generation_config, dtype, max_model_len, count_parameters(source, spec))
    return VllmMember(spec, model, tokenizer, device, frozenset(eos_token_ids(model, tokenizer)))
