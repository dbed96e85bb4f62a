"""Writes the per-subject MMLU and per-subtask BBH YAMLs and their two groups from paper.py's lists.

Run `python -m mixens.tasks._generate` after editing MMLU_SUBJECTS or BBH_ANSWER_TYPES; a test
checks that the files on disk match what this renders.
"""

from __future__ import annotations

from pathlib import Path

from mixens.tasks.paper import BBH_ANSWER_TYPES, MMLU_SUBJECTS

HERE = Path(__file__).resolve().parent
HEADER = "# Written by mixens/tasks/_generate.py from paper.py; edit there, not here.\n"

# Groups score the pooled samples: each subtask weighs by its number of questions.
_AGGREGATE = """aggregate_metric_list:
  - metric: exact_match
    aggregation: mean
    weight_by_size: true
    filter_list: extract
metadata:
  version: 1.0
"""


def _mmlu_subject(subject: str) -> str:
    return (
        f"{HEADER}include: _mmlu_paper_template_yaml\n"
        f"task: mmlu_paper_{subject}\ntask_alias: {subject}\ndataset_name: {subject}\n"
    )


def _bbh_subtask(subtask: str) -> str:
    # The filter sits here, not in the template: it needs the subtask's name, and an include
    # merges top-level keys only.
    return (
        f"{HEADER}include: _bbh_paper_template_yaml\n"
        f"task: bbh_paper_{subtask}\ntask_alias: {subtask}\ndataset_name: {subtask}\n"
        "filter_list:\n  - name: extract\n    filter:\n"
        f"      - function: !function paper.AnswerFilter\n        subtask: {subtask}\n"
        "      - function: take_first\n"
    )


def _group(name: str, alias: str, tasks: list[str]) -> str:
    members = "".join(f"  - {task}\n" for task in tasks)
    return f"{HEADER}group: {name}\ngroup_alias: {alias}\ntask:\n{members}{_AGGREGATE}"


def render() -> dict[str, str]:
    """File name -> content of every generated YAML."""
    files = {f"mmlu_paper_{s}.yaml": _mmlu_subject(s) for s in MMLU_SUBJECTS}
    files["mmlu_paper.yaml"] = _group("mmlu_paper", "mmlu (paper protocol)", [f"mmlu_paper_{s}" for s in MMLU_SUBJECTS])
    files |= {f"bbh_paper_{s}.yaml": _bbh_subtask(s) for s in BBH_ANSWER_TYPES}
    files["bbh_paper.yaml"] = _group("bbh_paper", "bbh (paper protocol)", [f"bbh_paper_{s}" for s in BBH_ANSWER_TYPES])
    return files


def main() -> None:
    for name, text in render().items():
        (HERE / name).write_text(text)


if __name__ == "__main__":
    main()
