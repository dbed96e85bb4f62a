"""lm-eval tasks for the paper's zero-shot protocol: gsm8k_paper, arc_paper, mmlu_paper, bbh_paper.

Load them with `lm_eval.tasks.TaskManager(include_path=TASKS_DIR)` (or lm-eval's
`--include_path mixens/tasks`); the YAMLs get their prompts and answer extraction from paper.py.
"""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
