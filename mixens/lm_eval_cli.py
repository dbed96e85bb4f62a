"""lm-eval's own command line with the mixens model registered and mixens' tasks on the include path.

    mixens-lm-eval run --model mixens --tasks gsm8k_paper --model_args "models=a|b,strategy=mixture"
    python -m mixens.lm_eval_cli run ...   (the same)

Every argument is lm-eval's. lm-eval knows only models whose module was imported, so this entry
imports mixens.harness first. Without --include_path, mixens' own tasks (gsm8k_paper, mmlu_paper,
...) are added to lm-eval's; with one, give mixens/tasks there too if they are wanted.

Results under --output_path go to a folder named for the ensemble (mixens-<strategy>-<member names>)
rather than lm-eval's random one (it looks for pretrained= in --model_args, which mixens has not).

lm-eval's request cache (--use_cache PATH) is keyed by the requests alone, so a cache written by one
ensemble would answer for another (another strategy, weights or members). Here the cache path gets a
digest of --model and --model_args: each ensemble reads and writes its own cache.
"""

from __future__ import annotations

import hashlib
import sys

SUBCOMMANDS_WITH_TASKS = ("run", "ls", "validate")


def with_mixens_tasks(argv: list[str]) -> list[str]:
    """The arguments, with mixens' task folder as --include_path when the user named none."""
    from mixens.tasks import TASKS_DIR

    named = any(a == "--include_path" or a.startswith("--include_path=") for a in argv)
    if named or not argv or argv[0] not in SUBCOMMANDS_WITH_TASKS:
        return argv
    return [*argv, "--include_path", str(TASKS_DIR)]


def cache_keyed_by_model(argv: list[str]) -> list[str]:
    """The arguments, with --use_cache's path made specific to --model and --model_args."""
    values = _option_values(argv)
    if "--use_cache" not in values:
        return argv
    identity = f"{values.get('--model', '')}|{values.get('--model_args', '')}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    keyed = f"{values['--use_cache']}_{digest}"
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg == "--use_cache" and i + 1 < len(argv):
            out += [arg, keyed]
            skip = True
        elif arg.startswith("--use_cache="):
            out.append(f"--use_cache={keyed}")
        else:
            out.append(arg)
    return out


def _option_values(argv: list[str]) -> dict[str, str]:
    values = {}
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if not name.startswith("--"):
            continue
        if eq:
            values[name] = value
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            values[name] = argv[i + 1]
    return values


def ensemble_name(model_args) -> str | None:
    """A readable name for a mixens ensemble from its model_args (None for other models' arguments)."""
    from lm_eval.utils import simple_parse_args_string

    from mixens.harness import output_name

    values = simple_parse_args_string(model_args) if isinstance(model_args, str) else dict(model_args or {})
    if not values.get("models"):
        return None
    paths = str(values["models"]).split("|")
    names = str(values["names"]).split("|") if values.get("names") else [p.rstrip("/").split("/")[-1] for p in paths]
    return output_name(values.get("strategy") or "mixture", names)


def main() -> None:
    from lm_eval.__main__ import cli_evaluate
    from lm_eval.loggers.evaluation_tracker import GeneralConfigTracker

    import mixens.harness  # noqa: F401  registers the "mixens" model

    lm_evals_own = GeneralConfigTracker._get_model_name
    GeneralConfigTracker._get_model_name = staticmethod(lambda args: ensemble_name(args) or lm_evals_own(args))

    sys.argv = [sys.argv[0], *cache_keyed_by_model(with_mixens_tasks(sys.argv[1:]))]
    cli_evaluate()


if __name__ == "__main__":
    main()
