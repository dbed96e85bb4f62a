"""How often the paper's extraction found an option letter (A-D) in the answers of an MMLU sweep.

    python experiments/letter_rate.py outputs/sweeps/mmlu_small

Per strategy (the run's own and each compared one), over every job and subject of the sweep.
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path


def letter_rates(sweep: Path) -> dict[str, tuple[int, int]]:
    found, total = collections.Counter(), collections.Counter()
    for results in sweep.glob("*/results.json"):
        job = results.parent
        own = json.loads(results.read_text())["config"]["ensemble"]["strategy"]
        folders = [(own, job)] + [(d.name, d) for d in sorted((job / "compare").glob("*")) if d.is_dir()]
        for label, folder in folders:
            for path in folder.glob("samples_mmlu_paper_*.jsonl"):
                for line in path.read_text().splitlines():
                    answer = json.loads(line)["filtered_resps"]
                    answer = answer[0] if isinstance(answer, list) else answer
                    total[label] += 1
                    found[label] += answer in ("A", "B", "C", "D")
    return {label: (found[label], total[label]) for label in total}


if __name__ == "__main__":
    for label, (hits, n) in sorted(letter_rates(Path(sys.argv[1])).items()):
        print(f"{label}: {hits}/{n} answers with a letter ({100 * hits / n:.1f}%)")
