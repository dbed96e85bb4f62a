"""Writing the study: results.json (raw timings and derived figures), results.md (tables) and speed.png."""

from __future__ import annotations

import json
from pathlib import Path

from mixens.files import atomic_path, write_atomic


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def markdown(study: dict, analysis: dict) -> str:
    cfg = study["config"]
    shapes = ", ".join(f"{name} ({info['parameters'] / 1e6:.0f}M parameters)" for name, info in study["shapes"].items())
    lines = [
        f"Machine: {study['machine']}; torch {study['torch']}; {cfg['device']}, {cfg['dtype']}.",
        f"Members: random weights, shapes {shapes}; prompt {cfg['prompt_tokens']} tokens, "
        f"{cfg['new_tokens']} new tokens, sampling at temperature 1; {cfg['repeats']} interleaved rounds.",
        "",
        "| scenario | batch | variant | tok/s | decode ms/step | ideal ms/step | vs ideal | ideal for its draws | fwd/step | catch-up k | prefill s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in analysis["rows"]:
        lines.append(
            f"| {row['scenario']} | {row['batch']} | {row['variant']} | {_num(row['tokens_per_second'], '.1f')} | "
            f"{_ms(row['decode_seconds_per_step'])} | {_ms(row['ideal_decode_seconds_per_step'])} | "
            f"{_num(row['decode_vs_ideal'])} | {_ms(row['realised_ideal_decode_seconds_per_step'])} | "
            f"{_num(row['forward_passes_per_step'])} | "
            f"{_num(row['mean_catchup_length'])} | {_num(row['prefill_seconds'])} |"
        )
    lines += [
        "",
        "| scenario | batch | mixture | ME/averaging speedup | ideal | fraction of ideal | ME/single speed | "
        "ME vs ideal | ME vs ideal / single vs c(1) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in analysis["ratios"]:
        lines.append(
            f"| {r['scenario']} | {r['batch']} | {r['variant']} | {r['mixture_vs_averaging_speedup']:.2f}x | "
            f"{r['ideal_speedup']:.2f}x | {r['fraction_of_ideal_speedup']:.2f} | {r['mixture_vs_single_speed']:.2f} | "
            f"{r['mixture_vs_ideal']:.2f} | {r['mixture_vs_ideal_over_single']:.2f} |"
        )
    lines += ["", "| target | scenario | batch | variant | value | met |", "|---|---|---|---|---|---|"]
    for t in analysis["targets"]:
        lines.append(
            f"| {t['target']} | {t['scenario']} | {t['batch']} | {t['variant']} | {t['value']:+.3f} | "
            f"{'yes' if t['met'] else 'NO'} |"
        )
    lines += [
        "",
        "ideal: from c(k) with geometric catch-up lengths; ideal for its draws: mean c_i(k) over the "
        "catch-ups this run actually made.",
        "",
    ]
    lines += ["", "Catch-up micro-benchmark, c(k) / c(1) (k tokens fed in one forward against a 1-token step):", ""]
    ks = range(1, cfg["max_k"] + 1)
    lines.append("| shape | batch | c(1) ms | " + " | ".join(f"k={k}" for k in ks) + " |")
    lines.append("|---|---|---|" + "---|" * len(ks))
    for shape, per_batch in study["catchup_seconds"].items():
        for batch, costs in per_batch.items():
            lines.append(
                f"| {shape} | {batch} | {_ms(costs[0])} | " + " | ".join(f"{c / costs[0]:.2f}" for c in costs) + " |"
            )
    return "\n".join(lines) + "\n"


def plot(study: dict, analysis: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    for shape, per_batch in study["catchup_seconds"].items():
        for batch, costs in per_batch.items():
            left.plot(
                range(1, len(costs) + 1),
                [c / costs[0] for c in costs],
                marker="o",
                ms=3,
                label=f"{shape}, batch {batch}",
            )
    left.set_xlabel("k (tokens fed in one forward)")
    left.set_ylabel("c(k) / c(1)")
    left.set_title("Catch-up cost against a one-token step")
    left.grid(alpha=0.3)
    left.legend(fontsize=7)

    ratios = analysis["ratios"]
    labels = [
        f"{r['scenario']} {r['variant'].replace('mixture@', 'w=').replace('mixture', '')} b={r['batch']}".replace(
            "  ", " "
        )
        for r in ratios
    ]
    xs = range(len(ratios))
    right.bar(
        [x - 0.2 for x in xs],
        [r["ideal_speedup"] for r in ratios],
        width=0.4,
        label="ideal (from c(k))",
        color="#bbbbbb",
    )
    right.bar(
        [x + 0.2 for x in xs],
        [r["mixture_vs_averaging_speedup"] for r in ratios],
        width=0.4,
        label="measured",
        color="#3366aa",
    )
    right.axhline(1.0, color="black", lw=0.8)
    right.set_xticks(list(xs))
    right.set_xticklabels(labels, fontsize=7, rotation=60, ha="right")
    right.set_ylabel("averaging time / mixture time")
    right.set_title("Mixture speed-up over averaging (decoding)")
    right.legend(fontsize=8)
    title = study["machine"]
    if study["config"]["size"].startswith("tiny"):  # the smoke preset: timings of toy models mean nothing
        title += " | smoke test on toy shapes: not a measurement"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def write(study: dict, analysis: dict, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "plot": out / "speed.png"}
    write_atomic(paths["json"], json.dumps({"study": study, "analysis": analysis}, indent=1))
    write_atomic(paths["markdown"], markdown(study, analysis))
    plot(study, analysis, paths["plot"])
    return paths
