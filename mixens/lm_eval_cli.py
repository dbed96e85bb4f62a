"""lm-eval's own command line with the mixens model registered and mixens' tasks on the include path.

    mixens-lm-eval run --model mixens --tasks gsm8k_paper --model_args "models=a|b,strategy=mixture"
    python -m mixens.lm_eval_cli run ...   (the same)

Every argument is lm-eval's. lm-eval knows only models whose module was imported, so this entry
imports mixens.harness first. Without --include_path, mixens' own tasks (gsm8k_paper, mmlu_paper,
...) are added to lm-eval's; with one, give mixens/tasks there too if they are wanted.
"""

from __future__ import annotations

import sys

SUBCOMMANDS_WITH_TASKS = ("run", "ls", "validate")


def with_mixens_tasks(argv: list[str]) -> list[str]:
    """The arguments, with mixens' task folder as --include_path when the user named none."""
    from mixens.tasks import TASKS_DIR

    named = any(a == "--include_path" or a.startswith("--include_path=") for a in argv)
    if named or not argv or argv[0] not in SUBCOMMANDS_WITH_TASKS:
        return argv
    return [*argv, "--include_path", str(TASKS_DIR)]


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    import mixens.harness  # noqa: F401  registers the "mixens" model

    sys.argv = [sys.argv[0], *with_mixens_tasks(sys.argv[1:])]
    cli_evaluate()


if __name__ == "__main__":
    main()
