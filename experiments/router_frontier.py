"""The accuracy-cost frontier of single members, mixture, averaging and token routers.

    python experiments/router_frontier.py                     # the packaged SmolLM2-135M + Gemma-3-270M pair
    python experiments/router_frontier.py --model a=PATH --model b=PATH --problems 4   # any pair

Every configuration scores the same GSM8K test answers under teacher forcing (mixens.teacher_forcing):
the strategy routes and combines at each step exactly as when generating, then the reference token is
appended. Quality: the probability the strategy gives the reference token (the chance a sampled token
matches it) and the greedy decoder's next-token accuracy. Small models almost never finish a GSM8K
problem correctly (exact match ~0 for this pair), so the answer's tokens are the informative signal.
Cost: members run per token, counted per sequence (FeedStats.row_passes), and tokens per second.

Configurations: each member alone; mixture over a weight sweep; averaging; the random router (the
mixture as a router: same numbers as mixture at equal weights); the confidence cascade over a threshold
sweep; the learned cascade (trained here on GSM8K train problems) over a threshold sweep. The first
--model is the designated member of the cascades, the second the one they hand over to.
Only the first 200 characters of each answer are scored by default (--answer-chars), which keeps the
default run (16 problems, 32 calibration problems) to about 13 minutes on a 2-core CPU.
Writes frontier.csv, frontier.md, frontier.png and router.pt (with router.json) under --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ["smol=packaged:smollm2-135m-instruct", "gemma=packaged:gemma-3-270m"]
MIXTURE_WEIGHTS = (0.25, 0.5, 0.75)  # weight of the first member
CONFIDENCE_THRESHOLDS = (0.2, 0.4, 0.6, 0.8)
LEARNED_THRESHOLDS = (0.3, 0.5, 0.7)
COLUMNS = ("family", "config", "member_runs_per_token", "reference_prob", "greedy_accuracy",
           "forward_passes_per_step", "tokens_per_second", "tokens")  # fmt: skip


def configurations(names: list[str]) -> list[tuple[str, str, tuple[float, float], str, dict]]:
    """(family, label, weights, strategy, options) for a pair: names[0] designated, names[1] handover."""
    first, second = names
    configs = [
        ("single", first, (1.0, 1.0), "single", {"member": first}),
        ("single", second, (1.0, 1.0), "single", {"member": second}),
    ]
    configs += [("mixture", f"w={w}", (w, 1 - w), "mixture", {}) for w in MIXTURE_WEIGHTS]
    configs.append(("averaging", "w=0.5", (0.5, 0.5), "averaging", {}))
    configs.append(("router random", "w=0.5", (0.5, 0.5), "router", {"policy": "random"}))
    configs += [
        (
            "router confidence",
            f"t={t}",
            (0.5, 0.5),
            "router",
            {"policy": "confidence", "threshold": t, "handover": second},
        )
        for t in CONFIDENCE_THRESHOLDS
    ]
    configs += [
        ("router learned", f"t={t}", (0.5, 0.5), "router", {"policy": "learned", "threshold": t, "handover": second})
        for t in LEARNED_THRESHOLDS
    ]
    return configs


def configured(base, weights, strategy: str, options: dict):
    """The loaded ensemble with other weights and another strategy; members and vocabulary are shared."""
    return base.with_weights(weights).with_strategy(strategy, **options)


def run(args) -> list[dict]:
    from mixens.ensemble import load_ensemble
    from mixens.files import write_atomic
    from mixens.router_model import save_router
    from mixens.teacher_forcing import teacher_force
    from mixens.train_router import gsm8k_pairs, train_router

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    specs = []
    for text in args.model:
        name, _, path = text.partition("=")
        specs.append({"name": name, "path": path, "weight": 1.0, "device": args.device})
    if len(specs) != 2:
        sys.exit("router_frontier: give exactly two --model NAME=PATH (designated first).")
    base = load_ensemble(specs, "averaging", batch_size=args.batch_size)
    names = [s["name"] for s in specs]
    test = gsm8k_pairs(args.hub_mirror, "test", args.problems)
    prompts, references = [p for p, _ in test], [r[: args.answer_chars or None] for _, r in test]

    started = time.perf_counter()
    calibration = [
        (p, r[: args.answer_chars or None]) for p, r in gsm8k_pairs(args.hub_mirror, "train", args.calibration)
    ]
    router = train_router(base, calibration, designated=0,
                          batch_size=args.batch_size, seed=args.seed)  # fmt: skip
    router.info["seconds"] = time.perf_counter() - started
    router_path = save_router(out / "router.pt", router)
    write_atomic(out / "router.json", json.dumps(router.info, indent=2))
    print(f"learned router: {json.dumps(router.info)}", flush=True)

    rows = []
    for family, label, weights, strategy, options in configurations(names):
        if options.get("policy") == "learned":
            options = {**options, "router_path": str(router_path)}
        ensemble = configured(base, weights, strategy, options)
        summary = teacher_force(ensemble, prompts, references, batch_size=args.batch_size, seed=args.seed).summary()
        rows.append({"family": family, "config": label, **summary})
        print(_line(rows[-1]), flush=True)
    write_table(rows, out)
    plot(rows, out / "frontier.png", title=" + ".join(names))
    return rows


def _line(row: dict) -> str:
    return " | ".join(_fmt(row[c]) for c in COLUMNS)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if value < 100 else f"{value:.0f}"
    return str(value)


def write_table(rows: list[dict], out: Path) -> None:
    from mixens.files import atomic_path, write_atomic

    with atomic_path(out / "frontier.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + _line(row) + " |" for row in rows]
    write_atomic(out / "frontier.md", "\n".join(lines) + "\n")


def annotate_apart(ax, labels: dict[tuple[float, float], list[str]]) -> None:
    """One label per point, moved down in steps until its box overlaps no label placed before it."""
    renderer = ax.figure.canvas.get_renderer()
    placed = []
    for (x, y), names in sorted(labels.items(), key=lambda item: (item[0][0], -item[0][1])):
        text = " / ".join(dict.fromkeys(names))
        for lift in range(0, 60, 7):
            note = ax.annotate(text, (x, y), fontsize=6, xytext=(4, 2 - lift), textcoords="offset points")
            box = note.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed) or lift + 7 >= 60:
                break  # a free place, or the last try: a label is never dropped
            note.remove()
        placed.append(box)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    from mixens.files import atomic_path

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    labelled = {}
    for ax, metric, ylabel in (
        (axes[0], "reference_prob", "P(reference token), mean"),
        (axes[1], "greedy_accuracy", "greedy next-token accuracy"),
    ):
        labels = labelled[ax] = {}
        for family in dict.fromkeys(r["family"] for r in rows):
            points = sorted((r["member_runs_per_token"], r[metric], r["config"]) for r in rows if r["family"] == family)
            xs, ys, _ = zip(*points)
            style = "o" if family == "single" else "o-"
            ax.plot(xs, ys, style, label=family, alpha=0.8)
            for x, y, config in points:  # points that coincide (mixture and the random router) get one label
                labels.setdefault((round(x, 6), round(y, 6)), []).append(config)
        ax.set_xlabel("members run per token (per sequence)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"accuracy-cost frontier, teacher-forced GSM8K answers: {title}")
    fig.tight_layout()
    fig.canvas.draw()  # final limits and layout, so that label boxes are where they will be drawn
    for ax, labels in labelled.items():
        annotate_apart(ax, labels)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="NAME=PATH, twice: designated member first")
    parser.add_argument("--problems", type=int, default=16, help="GSM8K test problems scored")
    parser.add_argument("--calibration", type=int, default=32, help="GSM8K train problems for the learned router")
    parser.add_argument(
        "--answer-chars", type=int, default=200, help="score the first characters of each answer (0: all)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--hub-mirror",
        default=os.environ.get("MIXENS_HUB_MIRROR"),
        help="a folder laid out like the hub holding openai/gsm8k train and test (default: $MIXENS_HUB_MIRROR)",
    )
    parser.add_argument("--out", default=str(REPO / "outputs" / "router_frontier"))
    args = parser.parse_args(argv)
    args.model = args.model or DEFAULT_MODELS
    return run(args)


if __name__ == "__main__":
    main()
