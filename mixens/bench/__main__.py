"""`python -m mixens.bench`: the speed study from one command.

python -m mixens.bench                       # the CPU study (random-weight Llama shapes, ~20M/50M)
python -m mixens.bench --preset gpu          # Qwen2.5 0.5B/1.5B shapes in bf16 on CUDA
python -m mixens.bench --preset tiny         # seconds: the smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from mixens.bench.analysis import analyse
from mixens.bench.members import SHAPES
from mixens.bench.report import write
from mixens.bench.study import StudyConfig, run_study

PRESETS = {
    "cpu": StudyConfig(),
    "gpu": StudyConfig(
        size="qwen2.5-1.5b",
        small_size="qwen2.5-0.5b",
        device="cuda",
        dtype="bfloat16",
        prompt_tokens=64,
        new_tokens=128,
        repeats=3,
        catchup_repeats=10,
    ),
    "tiny": StudyConfig(
        size="tiny-2x",
        small_size="tiny",
        batch_sizes=(1, 4),
        prompt_tokens=6,
        new_tokens=8,
        repeats=1,
        max_k=4,
        catchup_repeats=1,
        small_weights=(0.3, 0.7),
    ),
}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",")) if text else ()


def parse(argv: list[str]) -> tuple[StudyConfig, Path]:
    parser = argparse.ArgumentParser(
        prog="python -m mixens.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument(
        "--size", choices=sorted(SHAPES), help="shape of the equal members (and the larger of the pair)"
    )
    parser.add_argument("--small-size", choices=sorted(SHAPES), help="the smaller member of the unequal pair")
    parser.add_argument("--members", type=_ints, help="equal-member counts, e.g. 2,3")
    parser.add_argument(
        "--small-weights",
        type=_floats,
        help="weight sweep of the smaller member, e.g. 0.25,0.5,0.75 ('' skips the pair)",
    )
    parser.add_argument("--batch-sizes", type=_ints, help="e.g. 1,8,32")
    parser.add_argument("--prompt-tokens", type=int)
    parser.add_argument("--new-tokens", type=int)
    parser.add_argument("--repeats", type=int, help="interleaved rounds per strategy")
    parser.add_argument("--max-k", type=int, help="largest catch-up measured by the micro-benchmark")
    parser.add_argument("--catchup-repeats", type=int)
    parser.add_argument("--device", help="cpu, cuda, cuda:1")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    parser.add_argument(
        "--no-transformers", action="store_true", help="skip the comparison with transformers' generate"
    )
    parser.add_argument("--out", type=Path, default=None, help="folder for results.json/.md and speed.png")
    args = parser.parse_args(argv)
    config = PRESETS[args.preset]
    names = {
        "size": "size",
        "small_size": "small_size",
        "members": "equal_counts",
        "small_weights": "small_weights",
        "batch_sizes": "batch_sizes",
        "prompt_tokens": "prompt_tokens",
        "new_tokens": "new_tokens",
        "repeats": "repeats",
        "max_k": "max_k",
        "catchup_repeats": "catchup_repeats",
        "device": "device",
        "dtype": "dtype",
    }
    changes = {field: getattr(args, arg) for arg, field in names.items() if getattr(args, arg) is not None}
    if args.no_transformers:
        changes["compare_transformers"] = False
    config = dataclasses.replace(config, **changes)
    _validate(config, parser)
    out = args.out or Path("outputs") / "bench" / time.strftime("%Y-%m-%d_%H-%M-%S")
    return config, out


def _validate(config: StudyConfig, parser) -> None:
    import torch

    if config.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {config.device}: no CUDA device is visible; use --device cpu")
    if SHAPES[config.size].vocab < 2 or min(SHAPES[config.size].vocab, SHAPES[config.small_size].vocab) < 300:
        parser.error("--size/--small-size: shapes need a vocabulary of at least 300 ids (256 byte symbols + merges)")
    if any(not 0.0 < w < 1.0 for w in config.small_weights):
        parser.error("--small-weights: each weight must lie strictly between 0 and 1")
    if config.new_tokens < 2 or config.prompt_tokens < 1 or config.repeats < 1 or config.max_k < 1:
        parser.error("--new-tokens must be >= 2, --prompt-tokens, --repeats and --max-k >= 1")
    if any(n < 1 for n in config.equal_counts) or any(b < 1 for b in config.batch_sizes):
        parser.error("--members and --batch-sizes take positive integers")


def main(argv: list[str] | None = None) -> int:
    config, out = parse(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    study = run_study(config, progress=lambda msg: print(f"[{time.perf_counter() - started:7.1f}s] {msg}", flush=True))
    study["study_seconds"] = time.perf_counter() - started
    analysis = analyse(study)
    paths = write(study, analysis, out)
    print((out / "results.md").read_text())
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
