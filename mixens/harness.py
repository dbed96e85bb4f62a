"""The ensemble as an lm-evaluation-harness model, registered under the name "mixens".

From Python (simple_evaluate ignores its own batch_size/device for a ready model):

    lm = EnsembleLM(ensemble=load_ensemble(models, "mixture"), batch_size=8, seed=0, max_gen_toks=256)
    lm_eval.simple_evaluate(model=lm, tasks=["gsm8k_paper"], task_manager=...)
    lm.speed_stats  # a mixens GenerationStats summed over every generate_until call

From lm-eval's CLI (mixens.lm_eval_cli: lm-eval's own, with this model registered and mixens' tasks found):

    mixens-lm-eval run --model mixens --tasks gsm8k_paper \
        --model_args "models=HuggingFaceTB/SmolLM2-135M-Instruct|./gemma,weights=0.6|0.4,strategy=mixture"

model_args: lm-eval splits them at ',' and '='; a list is written with '|':
  models             required: one path per member (hub id, local folder or packaged:<name>)
  weights, names     one per member (default: equal weights; the last path component)
  dtype, device, device_map, revision, chat_template, trust_remote_code
                     one value for every member, or one per member ('|'); chat_template=true makes a
                     member wrap each prompt in its own tokenizer's chat template
  strategy           mixture | averaging | averaging_topk_union | single | router (default mixture)
  seed, max_gen_toks, max_length, batch_size
  engine             transformers (default) | vllm: each member on a vLLM engine (its own environment: make
                     vllm-setup); vLLM's engine options as vllm_<option>: vllm_enforce_eager, vllm_max_model_len,
                     vllm_kv_cache_gib, vllm_gpu_memory_utilization, vllm_tensor_parallel_size, vllm_block_size
  any other key      an option of the chosen strategy, as in mixens/conf/ensemble/<strategy>.yaml: member
                     (single), draw (mixture), union_top_k (averaging_topk_union), policy, designated,
                     threshold, ... (router); members by name. The strategy refuses keys it lacks.
lm-eval's --batch_size and --device apply when model_args does not set them (batch_size=auto finds the
largest batch that fits, from --max_batch_size (default 64) down; a --device this machine lacks falls back to
'auto', as lm-eval's own HF model does).

Likelihood is scored by mixens.likelihood (see there for how each vocabulary case is defined).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict

import lm_eval.models  # noqa: F401  lm-eval's own models first: registering before this hides "hf"
import numpy as np
import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import Collator, handle_stop_sequences, normalize_gen_kwargs, resolve_max_length
from lm_eval.utils import handle_arg_string, simple_parse_args_string
from tqdm.auto import tqdm

from mixens.batch_size import MAX_BATCH_SIZE, largest_fitting_batch
from mixens.chat import chat_prompt
from mixens.data_parallel import Replicas
from mixens.decoding import GenerationStats
from mixens.ensemble import Ensemble, load_ensemble
from mixens.errors import ConfigError
from mixens.faults import raise_if_stopped
from mixens.journal import RequestJournal
from mixens.likelihood import MemberEncoder, count_pieces, mixture_scores
from mixens.members import Member, describe
from mixens.sampling import Sampling, check_decoding_budget
from mixens.spec import validate_device
from mixens.token_record import TokenRecorder

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_LENGTH = 2048  # lm-eval's HF default when neither config nor tokenizer names a length
MAX_TOKEN_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")  # lm-eval's priority
# lm-eval's hf model's own arguments that the mixens model does not take (a clear error, not an unknown option)
HF_MODEL_ARGS = ("backend", "subfolder", "tokenizer", "truncation", "logits_cache", "softmax_dtype",
                 "mixed_precision_dtype", "use_fast_tokenizer", "add_bos_token", "prefix_token_id", "parallelize",
                 "max_memory_per_gpu", "max_cpu_memory", "offload_folder", "tp_plan", "peft", "delta", "autogptq",
                 "gptqmodel", "gguf_file", "think_end_token", "enable_thinking", "chat_template_args")  # fmt: skip
MIXENS_MODEL_ARGS = ("models", "weights", "names", "dtype", "device", "device_map", "revision", "chat_template", "trust_remote_code",
                     "strategy", "batch_size", "max_batch_size", "seed", "max_gen_toks", "max_length", "engine",
                     "vllm_<option>")  # fmt: skip
VLLM_PREFIX = "vllm_"  # model_args vllm_enforce_eager=true: the option enforce_eager of mixens.vllm_engine.VllmOptions
SCORE_SLICE = 512  # likelihood requests scored (and journaled) together: a few minutes of work at most
GEN_KWARGS = ("until", *MAX_TOKEN_KEYS, "do_sample", "temperature", "top_k", "top_p")


@register_model("mixens")
class EnsembleLM(LM):
    def __init__(
        self,
        ensemble: Ensemble | None = None,
        *,
        models: str | Sequence[str] | None = None,
        weights=None,
        names=None,
        dtype=None,
        device=None,
        device_map=None,
        revision=None,
        chat_template=None,
        trust_remote_code=None,
        strategy: str | None = None,
        batch_size: int | str | None = None,
        max_batch_size: int | None = None,
        seed: int = 0,
        max_gen_toks: int = 256,
        max_length: int | None = None,
        engine: str | None = None,
        journal: RequestJournal | None = None,
        record_tokens: bool = False,
        **strategy_options,
    ):
        """An ensemble already loaded, or what to load: `models` and the per-member settings, `strategy`
        (default mixture) and that strategy's own options by name (checked by the strategy). With a `journal`,
        finished batches are kept there and taken from there when the job runs again. With `record_tokens`,
        each generation's tokens (mixens.token_record) are kept in `token_records[task][doc_id]`."""
        super().__init__()
        if "pretrained" in strategy_options:  # lm-eval's hf model names its model so: the same as models
            if models is not None:
                raise ConfigError("give the members as models=a|b (or pretrained=a|b), not both.")
            models = strategy_options.pop("pretrained")
        if hf_only := sorted(set(strategy_options) & set(HF_MODEL_ARGS)):
            raise ConfigError(
                f"{hf_only} are options of lm-eval's hf model that the mixens model does not take; it takes "
                f"{list(MIXENS_MODEL_ARGS)} and its strategy's options (a model quantised, sharded or with adapters "
                "can join from Python as a loaded model: mixens.load_ensemble([{'name', 'model', 'tokenizer'}])."
            )
        batch_size = _batch_size(batch_size)
        auto = batch_size == AUTO
        batch_size = None if auto else batch_size
        vllm = {
            k[len(VLLM_PREFIX) :]: strategy_options.pop(k) for k in list(strategy_options) if k.startswith(VLLM_PREFIX)
        }
        per_member = {"weights": weights, "names": names, "dtype": dtype, "device": device, "device_map": device_map,
                      "revision": revision, "chat_template": chat_template,
                      "trust_remote_code": trust_remote_code}  # fmt: skip
        self.replicas = Replicas.from_environment()  # torchrun / accelerate launch: one replica per process
        if ensemble is None:
            specs = _member_specs(models, **per_member)
            for spec in specs:
                if "device_map" not in spec and (device := self.replicas.device_for(spec.get("device"))):
                    spec["device"] = device
            if auto and engine == "vllm":
                raise ConfigError("batch_size=auto sizes batches for transformers; on engine=vllm give a number.")
            ensemble = load_ensemble(
                specs,
                strategy or "mixture",
                batch_size=batch_size or DEFAULT_BATCH_SIZE,
                engine=engine or "transformers",
                vllm=vllm,
                **strategy_options,
            )
        else:
            loading = {"models": models, "strategy": strategy, "engine": engine, **per_member, **strategy_options}
            loading.update({VLLM_PREFIX + k: v for k, v in vllm.items()})
            if given := sorted(k for k, v in loading.items() if v is not None):
                raise ConfigError(f"{given} configure loading models; with ensemble= (already loaded) leave them out.")
        if not isinstance(max_gen_toks, int) or max_gen_toks < 1:
            raise ConfigError(f"max_gen_toks must be an integer >= 1, got {max_gen_toks!r}.")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
            raise ConfigError(f"max_length must be an integer >= 2, got {max_length!r}.")
        self.ensemble = ensemble
        self._batch_size = batch_size or ensemble.batch_size
        self.seed = int(seed)
        self._max_gen_toks = max_gen_toks
        self._max_length = max_length
        self.speed_stats = GenerationStats()
        self.journal = journal
        self.record_tokens = record_tokens
        self.token_records: dict[str, dict[int, list[dict]]] = {}  # TokenRecord fields, as JSON writes them
        self._device = ensemble.members[0].device
        lengths = [self._member_max_length(m) for m in ensemble.members]
        if ensemble.shared_vocabulary:  # one window size, so that every member scores the same tokens
            lengths = [min(lengths)] * len(lengths)
        self.encoders = [MemberEncoder(m, n) for m, n in zip(ensemble.members, lengths)]
        if auto:  # lm-eval's batch_size=auto: the largest batch of full-length sequences that fits
            self._batch_size = largest_fitting_batch(ensemble.members, lengths, _max_batch(max_batch_size))
            self.batch_sizes = {0: self._batch_size}  # what lm-eval records (and prints) as the sizes found
            self.ensemble = ensemble = ensemble.with_batch_size(self._batch_size)

    # ------------------------------------------------------------------ construction from lm-eval

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> EnsembleLM:
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> EnsembleLM:
        args = dict(arg_dict)  # keys that are neither loading settings nor the strategy's are refused by the strategy
        # lm-eval's own --batch_size/--device fill in only what model_args leaves open.
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        if "batch_size" in extra:
            args.setdefault("batch_size", extra["batch_size"])
        if "max_batch_size" in extra:
            args.setdefault("max_batch_size", extra["max_batch_size"])
        if "device" in extra and "device" not in args:
            args["device"] = _available_or_auto(str(extra["device"]))
        return cls(**args)

    # ------------------------------------------------------------------ properties lm-eval reads

    @property
    def members(self) -> list[Member]:
        return self.ensemble.members

    @property
    def tokenizer(self):
        return self.members[0].tokenizer

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        return self.encoders[0].prefix_id

    @property
    def max_length(self) -> int:
        return min(e.max_length for e in self.encoders)

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def rank(self) -> int:
        return self.replicas.rank

    @property
    def world_size(self) -> int:
        return self.replicas.world_size

    def all_gather(self, tensor):
        return self.replicas.all_gather(tensor)

    def gather_object(self, obj, dst: int = 0):
        return self.replicas.gather_object(obj, dst)

    def barrier(self) -> None:
        self.replicas.barrier()

    @property
    def output_name(self) -> str:
        """The folder lm-eval's files go to (its model name): mixens-<strategy>-<members it runs>."""
        used = self.ensemble.strategy.members_used() or range(len(self.members))
        return output_name(self.ensemble.strategy.name, [self.members[i].name for i in used])

    @property
    def tokenizer_name(self) -> str:
        names = []
        for m in self.members:
            chat = "" if m.spec.chat_template is False else "+chat"
            names.append(m.tokenizer.name_or_path.replace("/", "__") + chat)
        return "+".join(names)

    def _member_max_length(self, member: Member) -> int:
        own = resolve_max_length(member.model.config, member.tokenizer, default=DEFAULT_MAX_LENGTH)
        return min(own, self._max_length) if self._max_length else own

    def get_model_info(self) -> dict:
        """Merged into results["config"] by simple_evaluate."""
        return {
            "ensemble_strategy": self.ensemble.strategy.name,
            "ensemble_shared_vocabulary": self.ensemble.shared_vocabulary,
            "ensemble_members": [describe(m, w) for m, w in zip(self.members, self.ensemble.weights)],
            "model_num_parameters": sum(m.model.num_parameters() for m in self.members),
        }

    # ------------------------------------------------------------------ chat templates

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The chat as a prompt each member renders with its own template when it reads it
        (Member.render_prompt), so members with different templates see their own: one user message stays
        its text; a longer chat (--system_instruction, --fewshot_as_multiturn, a gen_prefix ending it in an
        assistant message) travels as mixens.chat's string. When no member asks for a template
        (--apply_chat_template alone), every member uses its tokenizer's own."""
        if all(m.spec.chat_template is False for m in self.members):
            self._use_member_templates()
        if [turn.get("role") for turn in chat_history] == ["user"] and add_generation_prompt:
            return chat_history[0]["content"]
        return chat_prompt(chat_history)

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The templates members apply, for lm-eval's run record."""
        if chat_template is False or chat_template is None:
            return None
        parts = []
        asking = [m for m in self.members if m.spec.chat_template is not False] or self.members
        for m in asking:
            template = m.spec.chat_template if isinstance(m.spec.chat_template, str) else m.tokenizer.chat_template
            parts.append(f"{{# member {m.name} #}}\n{template}")
        return "\n".join(parts) or None

    def _use_member_templates(self) -> None:
        missing = [m.name for m in self.members if not getattr(m.tokenizer, "chat_template", None)]
        if missing:
            raise ConfigError(
                f"lm-eval was asked to apply a chat template, but the tokenizer of {missing} has none; give one "
                "with chat_template=<Jinja template> in model_args, or drop --apply_chat_template."
            )
        self.ensemble = self.ensemble.with_chat_templates()
        self.encoders = [MemberEncoder(m, e.max_length) for m, e in zip(self.ensemble.members, self.encoders)]

    # ------------------------------------------------------------------ generation

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        args = [req.args for req in requests]
        # lm-eval's batching: one group per distinct gen_kwargs, longest prompt first within a group (a
        # slow batch shows early), in batches of batch_size; every group is checked before any token.
        batches = Collator(
            args, sort_fn=lambda a: (-len(self.encoders[0].encode_prompt(a[0])), a[0]), group_by="gen_kwargs"
        )
        settings = {}
        for _, kwargs in args:
            if (key := _kwargs_key(kwargs)) not in settings:
                settings[key] = self._generation_settings(kwargs)
        texts, records = [], []
        bar = tqdm(total=len(args), desc="mixens generate_until", disable=disable_tqdm)
        group_index, batch_index, previous = -1, 0, None
        for chunk in batches.get_batched(n=self.batch_size):
            key = _kwargs_key(chunk[0][1])
            group_index, batch_index = (group_index + 1, 0) if key != previous else (group_index, batch_index + 1)
            previous = key
            sampling, max_new_tokens, until = settings[key]
            prompts = [prompt for prompt, _ in chunk]
            # one seed per batch of each group: the random streams of every batch are independent
            seed = _batch_seed(self.seed, group_index, batch_index, self.replicas)
            entry = RequestJournal.key("generate_until", seed, key, prompts, self.record_tokens)
            done = self.journal.get(entry, len(chunk)) if self.journal is not None else None
            if done is None:
                recorder = TokenRecorder(self.ensemble, len(chunk)) if self.record_tokens else None
                chunk_texts, stats = self.ensemble.decode(
                    prompts,
                    [until] * len(chunk),
                    sampling,
                    max_new_tokens,
                    seed,
                    recorder=recorder,
                    finished=bar.update,
                )
                self.speed_stats.add(stats)
                log.debug(
                    "batch %d of group %d: %d prompts, seed %d, %d tokens in %.2f s",
                    batch_index, group_index, len(chunk), seed, stats.tokens_generated, stats.wall_seconds,
                )  # fmt: skip
                done = {"texts": chunk_texts, "tokens": [asdict(r) for r in recorder.records] if recorder else None}
                if self.journal is not None:
                    self.journal.put(entry, done)
            else:
                log.debug("batch %d of group %d: %d prompts from the journal", batch_index, group_index, len(chunk))
                bar.update(len(chunk))
            for request, text in zip(chunk, done["texts"]):
                self.cache_hook.add_partial("generate_until", request, text)
            texts.extend(done["texts"])
            records.extend(done["tokens"] or [])
        bar.close()
        if self.record_tokens:  # back in the requests' order, filed by task and document
            for request, record in zip(requests, batches.get_original(records)):
                self.token_records.setdefault(request.task_name, {}).setdefault(request.doc_id, []).append(record)
        return batches.get_original(texts)

    def _generation_settings(self, gen_kwargs: dict) -> tuple[Sampling, int, tuple[str, ...]]:
        """lm-eval's generation kwargs as (sampling, max new tokens, stop strings); unknown keys are an
        error, not ignored."""
        if not isinstance(gen_kwargs, dict):
            raise ConfigError(f"generation kwargs must be a dict, got {type(gen_kwargs).__name__}.")
        unknown = sorted(set(gen_kwargs) - set(GEN_KWARGS))
        if unknown:
            raise ConfigError(
                f"generation kwargs {unknown} are not supported by the mixens model (it honours {list(GEN_KWARGS)}); "
                "remove them from the task's generation_kwargs or --gen_kwargs."
            )
        until = gen_kwargs.get("until")
        if not (until is None or isinstance(until, str) or all(isinstance(s, str) for s in until)):
            raise ConfigError(f"until must be a string or a list of strings, got {until!r}.")
        # lm-eval's own rules for the max-token aliases and the stop list
        normalized = normalize_gen_kwargs({**gen_kwargs, "until": list(until) if until else []}, self.max_gen_toks)
        stops = normalized["until"]
        for eos in self._eos_texts():  # as lm-eval's HF model does: EOS text is always a stop string
            stops = handle_stop_sequences(stops, eos)
        # Sampling as transformers reads it: do_sample unset means sampling iff temperature > 0, and a
        # sampler with no temperature samples at 1 (lm-eval's normaliser would make that greedy).
        temperature = gen_kwargs.get("temperature")
        do_sample = gen_kwargs.get("do_sample")
        if do_sample is None:
            do_sample = temperature is not None and float(temperature) > 0
        greedy = not do_sample or (temperature is not None and float(temperature) == 0.0)
        top_k, top_p = gen_kwargs.get("top_k"), gen_kwargs.get("top_p")
        sampling = Sampling(
            do_sample=not greedy,
            temperature=1.0 if greedy or temperature is None else float(temperature),
            top_k=int(top_k) if top_k is not None else 0,
            top_p=float(top_p) if top_p is not None else 1.0,
        )
        max_new_tokens = normalized["max_gen_toks"]
        check_decoding_budget(max_new_tokens, self.seed)
        return sampling, max_new_tokens, tuple(stops)

    def _eos_texts(self) -> list[str]:
        texts = []
        for m in self.members:
            if m.tokenizer.eos_token_id is not None:
                text = m.tokenizer.decode([m.tokenizer.eos_token_id], skip_special_tokens=False)
                if text and text not in texts:
                    texts.append(text)
        return texts

    # ------------------------------------------------------------------ likelihood

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [req.args for req in requests]
        pieces = [[[enc.pair(context, continuation)] for context, continuation in pairs] for enc in self.encoders]
        scores = self._score(pieces, "loglikelihood", disable_tqdm)
        for pair, score in zip(pairs, scores):
            self.cache_hook.add_partial("loglikelihood", pair, score)
        return scores

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        texts = [req.args[0] for req in requests]
        pieces = [[enc.rolling_windows(text) for text in texts] for enc in self.encoders]
        scores = [logp for logp, _ in self._score(pieces, "loglikelihood_rolling", disable_tqdm)]
        for text, score in zip(texts, scores):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), score)
        return scores

    def _score(self, pieces, what: str, disable_tqdm: bool) -> list[tuple[float, bool]]:
        """Scores in slices of SCORE_SLICE requests, each kept in the journal as it finishes."""
        count = len(pieces[0])
        weights, shared = self.ensemble.weights, self.ensemble.shared_vocabulary
        bar = tqdm(total=count_pieces(weights, shared, pieces), desc=f"mixens {what}", disable=disable_tqdm)
        scores = []
        for start in range(0, count, SCORE_SLICE):
            raise_if_stopped()
            part = [member_pieces[start : start + SCORE_SLICE] for member_pieces in pieces]
            entry = RequestJournal.key(what, part)
            done = self.journal.get(entry, len(part[0])) if self.journal is not None else None
            if done is None:
                done = mixture_scores(self.members, weights, shared, part, self.batch_size, bar)
                if self.journal is not None:
                    self.journal.put(entry, done)
            else:
                bar.update(count_pieces(weights, shared, part))
            scores.extend((float(logp), bool(greedy)) for logp, greedy in done)
        bar.close()
        return scores


# ---------------------------------------------------------------------- model_args


def _member_specs(
    models, *, weights, names, dtype, device, device_map, revision, chat_template, trust_remote_code
) -> list[dict]:
    paths = _items(models)
    if not paths:
        raise ConfigError("models is missing: give model paths separated by '|', e.g. models=org/a|./b.")
    count = len(paths)
    columns = {
        "weight": _per_member(weights, count, "weights", float),
        "name": _per_member(names, count, "names", str),
        "dtype": _per_member(dtype, count, "dtype", str),
        "device": _per_member(device, count, "device", str),
        "device_map": _per_member(device_map, count, "device_map", str),
        "revision": _per_member(revision, count, "revision", str),
        "chat_template": _per_member(chat_template, count, "chat_template", _template_flag),
        "trust_remote_code": _per_member(trust_remote_code, count, "trust_remote_code", _bool),
    }
    specs = []
    for i, path in enumerate(paths):
        spec = {"path": str(path).strip()}
        spec.update({key: values[i] for key, values in columns.items() if values[i] is not None})
        specs.append(spec)
    return specs


def _items(value) -> list | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [v for v in value.split("|")]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _per_member(value, count: int, field: str, convert) -> list:
    items = _items(value)
    if items is None:
        return [None] * count
    if len(items) == 1:
        items = items * count
    if len(items) != count:
        raise ConfigError(f"{field} has {len(items)} values for {count} models; give one value or one per model ('|').")
    try:
        return [convert(handle_arg_string(v) if isinstance(v, str) else v) for v in items]
    except (TypeError, ValueError):
        raise ConfigError(f"{field} has a value that is not valid: {value!r}.") from None


def _bool(value) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(value)


def _template_flag(value) -> bool | str:
    return value if isinstance(value, (bool, str)) else str(value)


AUTO = "auto"


def _batch_size(value) -> int | str | None:
    """An int, a digit string, or lm-eval's 'auto' ('auto:N', which lm-eval re-runs N times, searches once)."""
    if value is None:
        return None
    if isinstance(value, str):
        if value == AUTO or value.startswith(AUTO + ":"):
            return AUTO
        if not value.strip().isdigit():
            raise ConfigError(f"batch_size must be a positive integer or 'auto', got {value!r}.")
        value = int(value)
    if not isinstance(value, int) or value < 1:
        raise ConfigError(f"batch_size must be a positive integer or 'auto', got {value!r}.")
    return value


def _max_batch(value) -> int:
    if value is None:
        return MAX_BATCH_SIZE
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or value < 1:
        raise ConfigError(f"max_batch_size must be a positive integer, got {value!r}.")
    return value


def _available_or_auto(device: str) -> str:
    try:
        validate_device(device, "--device")
    except ConfigError as err:
        log.warning("%s Using 'auto' instead.", err)
        return "auto"
    return device


def output_name(strategy: str, member_names: Sequence[str]) -> str:
    return f"mixens-{strategy}-{'+'.join(member_names)}"


def _kwargs_key(gen_kwargs) -> str:
    return json.dumps(gen_kwargs, sort_keys=True, default=str)


def _batch_seed(seed: int, group: int, batch: int, replicas: Replicas) -> int:
    """Independent streams for every batch, and for every replica when several share the documents."""
    entropy = [seed, group, batch] + ([replicas.rank] if replicas.world_size > 1 else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])
