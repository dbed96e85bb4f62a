"""The Hydra app: composition, validation before loading, and real runs of `python -m mixens`."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HUB_FIXTURE, REPO
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from wandb_records import offline_run

from mixens.cli import CONF_DIR
from mixens.config import validate_run
from mixens.errors import ConfigError


def composed(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_default_compares_the_packaged_pair_alone_averaged_and_mixed_under_sampling(monkeypatch):
    monkeypatch.delenv("MIXENS_HUB_MIRROR", raising=False)
    cfg = composed()
    assert [m.path for m in cfg.models.values()] == ["packaged:smollm2-135m-instruct", "packaged:gemma-3-270m"]
    assert cfg.ensemble.strategy == "mixture"
    assert list(cfg.compare) == ["members", "averaging"]
    assert cfg.benchmark.tasks == ["sciq_gen"] and cfg.benchmark.limit == 100
    # The paper's sampling protocol, not greedy decoding (under which mixture is a different decoder).
    assert cfg.benchmark.do_sample is True and cfg.benchmark.temperature == 1.0 and cfg.benchmark.top_k == 5
    assert cfg.benchmark.member_chat_templates is False  # few-shot completion prompts
    assert cfg.data.hub_mirror == "packaged"
    plan = validate_run(cfg)
    assert [s.chat_template for s in plan.specs] == [False, False]
    assert plan.strategy.name == "mixture"


@pytest.mark.slow
def test_the_default_run_reduced_to_a_few_problems_prints_and_records_its_comparison(tmp_path):
    """The embedded default end to end on the real packaged models and packaged SciQ rows."""
    done = run_cli(tmp_path, "data.hub_mirror=packaged", "benchmark.limit=3", "benchmark.max_gen_toks=4", "logger=none")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fatal: not a git repository" not in done.stderr
    assert "Ensure 'do_sample=True'" not in done.stdout + done.stderr  # it samples: lm-eval's warning is noise
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    rows = {row["label"]: row for row in record["comparison"]}
    assert list(rows) == ["smollm2-135m-instruct", "gemma-3-270m", "averaging", "mixture"]
    assert [rows[k]["member_runs_per_token"] for k in rows] == [1.0, 1.0, 2.0, 1.0]
    for row in rows.values():
        score = row["scores"]["sciq_gen"]
        assert score["n"] == 3 and 0.0 <= score["low"] <= score["mean"] <= score["high"] <= 1.0
        assert row["tokens_generated"] > 0
    assert rows["averaging"]["speedup_over_averaging"] == 1.0
    table = done.stdout[done.stdout.index("strategy") :]
    assert all(label in table for label in rows) and "decode tokens/s" in table
    for label in list(rows)[:3]:  # every compared strategy keeps its per-problem outputs
        assert (tmp_path / "run" / "compare" / label / "samples_sciq_gen.jsonl").is_file()


def test_several_models_weights_and_strategy():
    cfg = composed(
        "models=[qwen2_5-3b-instruct,qwen2_5-math-1_5b-instruct]",
        "models.qwen2_5-3b-instruct.weight=0.7",
        "ensemble=averaging",
        "benchmark=mmlu_paper",
        "benchmark.limit=5",
        "benchmark.top_k=5",
    )
    assert {k: m.weight for k, m in cfg.models.items()} == {
        "qwen2_5-3b-instruct": 0.7,
        "qwen2_5-math-1_5b-instruct": 1.0,
    }
    assert cfg.models["qwen2_5-3b-instruct"].path == "Qwen/Qwen2.5-3B-Instruct"
    assert cfg.ensemble.strategy == "averaging"
    assert cfg.benchmark.tasks == ["mmlu_paper"] and cfg.benchmark.limit == 5 and cfg.benchmark.top_k == 5
    assert cfg.data.hub_mirror is None  # only the embedded benchmark reads packaged data


@pytest.mark.parametrize("group", ["models", "ensemble", "benchmark"])
def test_every_config_file_composes(group):
    for path in sorted((Path(CONF_DIR) / group).glob("*.yaml")):
        choice = f"[{path.stem}]" if group == "models" else path.stem
        cfg = composed(f"{group}={choice}")
        assert OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


@pytest.mark.parametrize(
    ("launcher", "target"),
    [
        ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
        ("submitit_slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ],
)
def test_parallel_and_slurm_launchers_compose(launcher, target):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == target
    assert cfg.logger.name == "wandb" and cfg.logger.mode == "offline"  # the default logger, offline in tests


def test_the_schema_rejects_a_mistyped_value():
    with pytest.raises(Exception, match="seed"):
        composed("seed=many")


def test_unknown_benchmark_lists_the_available_ones():
    with pytest.raises(Exception, match="Available options") as err:
        composed("benchmark=gsm9k")
    assert "gsm8k_paper" in str(err.value)


def test_validation_names_the_field_before_loading():
    cfg = composed("models.smollm2-135m-instruct.weight=-1")
    with pytest.raises(ConfigError, match=r"models\[0\]\.weight .* negative"):
        validate_run(cfg)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seed=-1", r"^seed must be >= 0, got -1"),
        ("benchmark.num_fewshot=-1", r"^benchmark\.num_fewshot must be >= 0"),
        ("benchmark.limit=1.5", r"^benchmark\.limit must be a whole number"),
        ("benchmark.temperature=0", r"^benchmark\.temperature must be > 0 when sampling"),
        ("benchmark.top_p=0", r"^benchmark\.top_p must be in \(0, 1\]"),
        ("benchmark.top_k=-3", r"^benchmark\.top_k must be an integer >= 0"),
        ("threads=0", r"^threads must be >= 1"),
        ("compare=[avergaing]", r"^compare has 'avergaing'"),
    ],
)
def test_run_settings_are_checked_before_any_model_loads(override, message):
    with pytest.raises(ConfigError, match=message):
        validate_run(composed(override))  # the default samples (do_sample=true): temperature 0 is a mistake


def test_every_shipped_model_takes_its_own_device_as_the_readme_writes_it():
    names = [path.stem for path in (Path(CONF_DIR) / "models").glob("*.yaml")]
    cfg = composed(f"models=[{','.join(names)}]", *(f"models.{name}.device=cpu:0" for name in names))
    assert {name: cfg.models[name].device for name in names} == dict.fromkeys(names, "cpu:0")
    plan = validate_run(composed("models.gemma-3-270m.device=cpu:0"))
    assert [s.device for s in plan.specs] == ["auto", "cpu:0"]  # the other model keeps the run's device


def test_every_shipped_model_can_be_put_in_a_ray_actor_from_the_command_line():
    names = [path.stem for path in (Path(CONF_DIR) / "models").glob("*.yaml")]
    cfg = composed(f"models=[{','.join(names)}]", *(f"models.{name}.ray_actor={{num_gpus:1}}" for name in names))
    assert {name: cfg.models[name].ray_actor for name in names} == dict.fromkeys(names, {"num_gpus": 1})
    plan = validate_run(composed("models.gemma-3-270m.ray_actor={num_cpus:2}"))
    assert [s.ray_actor for s in plan.specs] == [None, {"num_cpus": 2}]


def test_a_fraction_and_a_whole_limit_are_both_fine():
    validate_run(composed("benchmark.limit=0.5"))
    validate_run(composed("benchmark.limit=20"))


def run_cli(tmp_path: Path, *overrides: str, multirun: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "MIXENS_HUB_MIRROR": str(HUB_FIXTURE)}
    args = [sys.executable, "-m", "mixens", *(["-m"] if multirun else []), *overrides]
    args += [f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep"]
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def tiny_overrides(tiny_models, names=("bpe_a", "bpe_b")) -> list[str]:
    added = [f"+models.{n}={{name:{n},path:'{tiny_models[n]}',weight:1.0}}" for n in names]
    return ["models=[]", *added, "device=cpu", "batch_size=4"]


def test_a_dataset_that_is_not_reachable_says_how_to_point_at_a_copy(tiny_models, tmp_path):
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    done = run_cli(
        tmp_path, *tiny_overrides(tiny_models), "benchmark=arc_paper", "benchmark.limit=2", f"data.hub_mirror={empty}"
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "data.hub_mirror=PATH" in done.stderr
    assert "Loading weights" not in done.stderr  # failed before any model was loaded


def test_unknown_task_name_suggests_close_names(tiny_models, tmp_path):
    done = run_cli(tmp_path, *tiny_overrides(tiny_models), "benchmark.tasks=[gsm8k_papr]")
    assert done.returncode == 2
    assert "gsm8k_paper" in done.stderr


def test_a_run_writes_results(tiny_models, tmp_path):
    done = run_cli(
        tmp_path, *tiny_overrides(tiny_models), "benchmark=gsm8k_paper", "benchmark.limit=3", "benchmark.max_gen_toks=8"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(record) >= {"config", "metrics", "speed", "versions", "seed", "git_commit"}
    assert "exact_match,extract" in record["metrics"]["gsm8k_paper"]
    assert record["speed"]["tokens_generated"] > 0
    assert record["config"]["ensemble"]["strategy"] == "mixture"
    samples = (tmp_path / "run" / record["samples"]["gsm8k_paper"]).read_text().splitlines()
    assert len(samples) == 3
    assert "results:" in done.stdout and re.search(r"\|gsm8k_paper *\|.*\|exact_match *\|.*± *\|", done.stdout)


def test_a_run_writes_lm_evals_own_files_that_lm_evals_readers_load(tiny_models, tmp_path):
    """results_<date>.json and samples_<task>_<date>.jsonl where lm-eval's CLI puts them, with standard errors."""
    import datasets
    from lm_eval.utils import get_latest_filename, get_results_filenames, get_sample_results_filenames, make_table

    done = run_cli(
        tmp_path, *tiny_overrides(tiny_models), "benchmark=gsm8k_paper", "benchmark.limit=3", "benchmark.max_gen_toks=8",
        "benchmark.log_tokens=true", "batch_size=auto",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "batch_size=auto: 64 sequences" in done.stdout  # tiny models: the first size tried fits
    files = [str(p) for p in (tmp_path / "run" / "lm_eval").rglob("*.json*")]
    latest = Path(get_latest_filename(get_results_filenames(files)))
    assert latest.parent.name == "mixens-mixture-bpe_a+bpe_b"  # the ensemble's name, as mixens-lm-eval names it
    results = json.loads(latest.read_text())
    scores = results["results"]["gsm8k_paper"]
    assert isinstance(scores["exact_match_stderr,extract"], float)  # standard errors by default
    assert results["n-shot"]["gsm8k_paper"] == 0 and results["higher_is_better"]["gsm8k_paper"]["exact_match"]
    assert results["configs"]["gsm8k_paper"]["task"] == "gsm8k_paper" and results["model_name"] == latest.parent.name
    assert "gsm8k_paper" in make_table(results)
    (samples,) = get_sample_results_filenames(files)
    rows = datasets.load_dataset("json", data_files=samples, split="train")  # how lm-eval's hub upload reads them
    assert rows.num_rows == 3 and set(rows.column_names) >= {"doc_id", "resps", "filtered_resps", "exact_match"}
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["lm_eval"]["results"]["gsm8k_paper"] == scores  # the same numbers in mixens' own record

    # benchmark.log_tokens: which member wrote each token of each answer, with its log-probability
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["bpe_a"])  # bpe_a and bpe_b share it
    outputs = {row["doc_id"]: row["resps"][0][0] for row in rows}
    tokens = [
        json.loads(line) for line in (tmp_path / "run" / record["tokens"]["gsm8k_paper"]).read_text().splitlines()
    ]
    assert sorted(row["doc_id"] for row in tokens) == [0, 1, 2]
    for row in tokens:
        (generation,) = row["generations"]
        assert tokenizer.decode(generation["ids"], skip_special_tokens=True).startswith(outputs[row["doc_id"]])
        assert {tuple(m) for m in generation["members"]} <= {("bpe_a",), ("bpe_b",)}  # one member per token
        assert all(lp <= 0 for lp in generation["logprobs"]) and len(generation["ids"]) <= 8


def test_multirun_of_two_strategies_and_two_seeds_writes_four_results_and_four_wandb_runs(tiny_models, tmp_path):
    done = run_cli(
        tmp_path,
        *tiny_overrides(tiny_models),
        "ensemble=mixture,averaging",
        "seed=1,2",
        "benchmark=gsm8k_paper",
        "benchmark.limit=2",
        "benchmark.max_gen_toks=4",
        "logger=wandb",
        multirun=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted(p.parent for p in (tmp_path / "sweep").glob("*/results.json"))
    assert len(jobs) == 4
    console = (done.stdout + done.stderr).splitlines()
    banners = [line for line in console if line.startswith("wandb:")]
    assert len(banners) <= 3 * len(jobs), banners  # quiet: where each run went, not a banner per job
    seen = set()
    for job in jobs:
        record = json.loads((job / "results.json").read_text())
        strategy, seed = record["config"]["ensemble"]["strategy"], record["seed"]
        seen.add((strategy, seed))
        (run_dir,) = (job / "wandb").glob("offline-run-*")
        run = offline_run(run_dir)
        # One finished run per job, grouped by sweep, typed by strategy, with the job's own config and numbers.
        assert run["exit_code"] == 0 and run["project"] == "mixens"
        assert run["group"] == "sweep" and run["job_type"] == strategy and run["name"] == job.name
        assert run["config"]["ensemble"]["strategy"] == strategy and run["config"]["seed"] == seed
        accuracy = record["metrics"]["gsm8k_paper"]["exact_match,extract"]
        assert run["summary"]["gsm8k_paper/exact_match,extract"] == accuracy
        assert run["summary"]["speed/tokens_generated"] == record["speed"]["tokens_generated"]
        (table,) = (run_dir / "files" / "media" / "table").glob("samples_*.table.json")
        rows = json.loads(table.read_text())
        assert rows["columns"][:3] == ["task", "doc_id", "prompt"] and len(rows["data"]) == 2
        assert {row[-1] for row in rows["data"]} <= {0.0, 1.0}  # correct, from the task's metric
    assert seen == {("mixture", 1), ("mixture", 2), ("averaging", 1), ("averaging", 2)}


def test_a_failing_job_leaves_the_other_jobs_and_skip_existing_reuses_them(tiny_models, tmp_path):
    args = [*tiny_overrides(tiny_models), "benchmark=gsm8k_paper", "benchmark.limit=2", "logger=none"]
    # The first job fails (no token may be generated); the second still runs and keeps its results.
    done = run_cli(tmp_path, *args, "benchmark.max_gen_toks=0,3", multirun=True)
    assert done.returncode != 0
    assert "benchmark.max_gen_toks must be >= 1" in done.stderr
    (failed,) = [p.parent for p in (tmp_path / "sweep").glob("*/failed.json")]
    assert "max_gen_toks" in json.loads((failed / "failed.json").read_text())["error"]
    assert not (failed / "results.json").exists()
    (finished,) = [p.parent for p in (tmp_path / "sweep").glob("*/results.json")]
    first = (finished / "results.json").read_text()
    assert json.loads(first)["config"]["benchmark"]["max_gen_toks"] == 3

    # Re-running the sweep with skip_existing: the finished job is reused as it is, a new one runs.
    again = run_cli(tmp_path, *args, "benchmark.max_gen_toks=3,5", "skip_existing=true", multirun=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skipping, this config already has results") == 1
    assert (finished / "results.json").read_text() == first
    results = (tmp_path / "sweep").glob("*/results.json")
    assert sorted(json.loads(p.read_text())["config"]["benchmark"]["max_gen_toks"] for p in results) == [3, 5]


def test_results_that_never_reached_wandb_are_logged_by_skip_existing_not_skipped(tiny_models, tmp_path):
    """A job stopped after writing results.json but before logging them: the rerun logs them, runs nothing."""
    import shutil

    args = [*tiny_overrides(tiny_models), "benchmark=gsm8k_paper", "benchmark.limit=2", "benchmark.max_gen_toks=3",
            "logger=wandb", "skip_existing=true"]  # fmt: skip
    assert run_cli(tmp_path, *args).returncode == 0
    results = tmp_path / "run" / "results.json"
    record = json.loads(results.read_text())
    assert record["logged"]["wandb"]["id"]
    del record["logged"]  # as if killed between the two writes
    results.write_text(json.dumps(record))
    shutil.rmtree(tmp_path / "run" / "wandb")

    again = run_cli(tmp_path, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "never reached the wandb run; logging it now" in again.stdout
    assert "generate_until" not in again.stderr + again.stdout  # nothing was decoded again
    (run_dir,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    accuracy = record["metrics"]["gsm8k_paper"]["exact_match,extract"]
    assert offline_run(run_dir)["summary"]["gsm8k_paper/exact_match,extract"] == accuracy
    assert json.loads(results.read_text())["logged"]["wandb"]["id"]
    assert "skipping, this config already has results" in run_cli(tmp_path, *args).stdout


def test_a_relative_model_folder_loads_from_where_the_user_is_with_a_data_mirror_set(tiny_models, tmp_path):
    import shutil

    shutil.copytree(tiny_models["bpe_a"], tmp_path / "models" / "mine")
    args = [sys.executable, "-m", "mixens", "models=[]", "+models.mine={name:mine,path:models/mine,weight:1.0}",
            "ensemble=single", "device=cpu", "benchmark=gsm8k_paper", "benchmark.limit=1", "benchmark.max_gen_toks=2",
            f"data.hub_mirror={HUB_FIXTURE}", "logger=none", f"hydra.run.dir={tmp_path}/run"]  # fmt: skip
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["members"][0]["name"] == "mine" and record["speed"]["tokens_generated"] > 0
    missing = subprocess.run([*args[:4], "+models.mine={name:mine,path:models/other,weight:1.0}", *args[5:]],
                             cwd=tmp_path, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert missing.returncode == 2 and "models/other" in missing.stderr and "Loading weights" not in missing.stderr


def test_a_config_holds_only_its_strategys_options_and_its_job_key_only_what_it_runs(tmp_path):
    """Changing a router default moves no mixture job to another folder, so skip_existing still finds it."""
    import shutil

    from mixens.config import job_key

    def key_and_ensemble(conf_dir, *overrides):
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
        return job_key(_root_=cfg), OmegaConf.to_container(cfg.ensemble)

    changed = tmp_path / "conf"
    shutil.copytree(CONF_DIR, changed)
    router = changed / "ensemble" / "router.yaml"
    router.write_text(router.read_text().replace("threshold: 0.5", "threshold: 0.7"))
    key, ensemble = key_and_ensemble(CONF_DIR, "ensemble=mixture")
    assert ensemble == {"strategy": "mixture", "options": {"draw": "batch"}}  # no router option recorded
    assert key_and_ensemble(changed, "ensemble=mixture") == (key, ensemble)
    # ... while the router job whose default changed does move, and so does a changed mixture option.
    assert key_and_ensemble(changed, "ensemble=router")[0] != key_and_ensemble(CONF_DIR, "ensemble=router")[0]
    assert key_and_ensemble(CONF_DIR, "ensemble=mixture", "ensemble.options.draw=sequence")[0] != key


def test_the_engine_is_in_the_job_key_only_when_it_is_not_the_default():
    """A run on transformers keeps the key (and matches the results files) it had before the engine was a
    choice; a run on vLLM is another job, and so is one with other vLLM options."""
    from mixens.config import job_key, result_defining

    def key(*overrides):
        return job_key(_root_=composed(*overrides))

    legacy = OmegaConf.to_container(composed(), resolve=False)
    del legacy["engine"], legacy["vllm"]
    assert result_defining(OmegaConf.to_container(composed(), resolve=False)) == result_defining(legacy)
    assert key("vllm.enforce_eager=true") == key()  # vLLM's options do not count on transformers
    assert key("engine=vllm") != key()
    assert key("engine=vllm", "vllm.enforce_eager=true") != key("engine=vllm")


def test_the_config_schema_offers_every_vllm_option_the_engine_takes():
    from dataclasses import asdict, fields

    from mixens.config import VllmConfig
    from mixens.vllm_engine import VllmOptions

    assert [f.name for f in fields(VllmConfig)] == [f.name for f in fields(VllmOptions)]
    assert asdict(VllmConfig()) == asdict(VllmOptions())  # the same defaults


def test_a_strategy_option_it_does_not_have_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"strategy 'averaging' has no option \['threshold'\]"):
        validate_run(composed("ensemble=averaging", "+ensemble.options.threshold=0.3"))
    with pytest.raises(ConfigError, match="threshold 1.5 is out of range"):
        validate_run(composed("ensemble=router", "ensemble.options.threshold=1.5"))


def test_sigterm_marks_the_job_interrupted_and_skip_existing_reruns_it(tiny_models, tmp_path):
    """What a scheduler's time limit does: failed.json says so, no results file, and the job runs again."""
    import signal

    added = [f"+models.{n}={{name:{n},path:'{tiny_models[p]}',weight:1.0}}" for n, p in (("a", "bpe_a"), ("c", "sp_c"))]
    args = [sys.executable, "-m", "mixens", "models=[]", *added, "device=cpu", "batch_size=8", "benchmark=gsm8k_paper",
            "benchmark.limit=8", f"data.hub_mirror={HUB_FIXTURE}", "logger=none", f"hydra.run.dir={tmp_path}/run",
            "skip_existing=true"]  # fmt: skip
    log = tmp_path / "stderr.txt"
    with log.open("w") as errors:
        job = subprocess.Popen(
            [*args, "benchmark.max_gen_toks=1000"], cwd=REPO, stdout=subprocess.PIPE, stderr=errors, text=True
        )
        for line in job.stdout:  # Hydra logs to stdout; once generation has started, stop the job
            if "Running generate_until requests" in line:
                break
        job.send_signal(signal.SIGTERM)
        job.stdout.read()
        code = job.wait(timeout=120)
    stderr = log.read_text()
    assert code == 128 + signal.SIGTERM, stderr[-3000:]
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    failure = json.loads((tmp_path / "run" / "failed.json").read_text())
    assert failure["interrupted"] and "SIGTERM" in failure["error"]
    assert not (tmp_path / "run" / "results.json").exists()
    again = subprocess.run([*args, "benchmark.max_gen_toks=2"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "skipping" not in again.stdout and (tmp_path / "run" / "results.json").is_file()
    assert not (tmp_path / "run" / "failed.json").exists()


def test_a_job_killed_mid_run_resumes_from_its_journal_with_the_texts_of_a_job_never_stopped(tiny_models, tmp_path):
    """kill -9 after a few batches, run again: the finished batches come from the journal, the rest is decoded
    with the seeds it would have had, so the outputs equal those of an uninterrupted job."""
    import signal
    import sqlite3

    def args(folder: Path) -> list[str]:
        each_alone = [o for o in tiny_overrides(tiny_models) if not o.startswith("batch_size=")] + ["batch_size=1"]
        return [sys.executable, "-m", "mixens", *each_alone, "benchmark=gsm8k_paper",
                "benchmark.limit=8", "benchmark.max_gen_toks=64", "benchmark.do_sample=true", "seed=3",
                f"data.hub_mirror={HUB_FIXTURE}", "logger=none", f"hydra.run.dir={folder}"]  # fmt: skip

    def texts(folder: Path) -> list[str]:
        record = json.loads((folder / "results.json").read_text())
        rows = [json.loads(line) for line in (folder / record["samples"]["gsm8k_paper"]).read_text().splitlines()]
        return [row["resps"][0][0] for row in sorted(rows, key=lambda row: row["doc_id"])]

    whole = subprocess.run(args(tmp_path / "whole"), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert not (tmp_path / "whole" / "journal").exists()  # a finished job keeps no journal

    journal = tmp_path / "killed" / "journal" / "mixture.sqlite"
    job = subprocess.Popen(args(tmp_path / "killed"), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finished, deadline = 0, time.monotonic() + 300
    while finished < 2 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        if journal.is_file():
            with contextlib.suppress(sqlite3.OperationalError), contextlib.closing(sqlite3.connect(journal)) as db:
                finished = db.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=60)
    assert 2 <= finished < 8, f"{finished} batches were journaled before the kill"

    again = subprocess.run(args(tmp_path / "killed"), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = int(re.search(r"resuming mixture: (\d+) finished batches", again.stderr).group(1))
    assert finished <= resumed < 8  # some batches were left to decode
    record = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert record["resumed_requests"] == resumed  # one request per batch at batch_size=1
    assert texts(tmp_path / "killed") == texts(tmp_path / "whole")
    assert not journal.exists()


def test_why_a_job_stopped_is_written_before_its_tracker_run_is_finished(tmp_path, monkeypatch):
    """A stop or a hang while the tracker's run finishes (wandb, on a slow or dying machine) must not lose
    failed.json: it is written as the job's exception leaves the evaluation, before the tracker closes."""
    from mixens import cli
    from mixens.faults import Interrupted

    seen_when_closing = []

    @contextlib.contextmanager
    def tracker(*args):
        try:
            yield object()
        finally:
            seen_when_closing.append((tmp_path / "failed.json").exists())

    def evaluate(*args):
        raise Interrupted(15)

    monkeypatch.setattr(cli, "tracker", tracker)
    monkeypatch.setattr(cli, "evaluate", evaluate)
    with pytest.raises(Interrupted):
        cli.run_job(composed("logger=wandb"), tmp_path, None)
    assert seen_when_closing == [True]
    assert json.loads((tmp_path / "failed.json").read_text())["interrupted"] is True


def test_a_parallel_sweep_killed_hard_leaves_no_worker_behind_and_marks_its_jobs_interrupted(tiny_models, tmp_path):
    """kill -9 of a joblib sweep: its workers (models loaded, wandb beside them) stop within seconds instead of
    running on, and each unfinished job says it was interrupted, so skip_existing reruns it."""
    import signal
    import threading

    args = [sys.executable, "-m", "mixens", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=1,2",
            *tiny_overrides(tiny_models), "benchmark=gsm8k_paper", "benchmark.limit=8", "benchmark.max_gen_toks=1000",
            f"data.hub_mirror={HUB_FIXTURE}", "logger=wandb", f"hydra.sweep.dir={tmp_path}/sweep"]  # fmt: skip
    sweep = subprocess.Popen(
        args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    lines, both_generating = [], threading.Event()

    def read() -> None:  # keep reading after the kill: the workers still write to the pipe
        for line in sweep.stdout:
            lines.append(line)
            if sum("Running generate_until requests" in seen for seen in lines) >= 2:
                both_generating.set()

    threading.Thread(target=read, daemon=True).start()
    assert both_generating.wait(timeout=300), "".join(lines)[-3000:]

    def in_sweep() -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            with contextlib.suppress(OSError, ValueError):
                if entry.name.isdigit() and os.getsid(int(entry.name)) == sweep.pid:
                    if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                        pids.append(int(entry.name))
        return pids

    assert len(in_sweep()) >= 3  # the sweep and its two workers
    sweep.send_signal(signal.SIGKILL)
    sweep.wait(timeout=30)
    deadline = time.monotonic() + 90
    while in_sweep() and time.monotonic() < deadline:
        time.sleep(0.5)
    left = in_sweep()
    for pid in left:  # not for the test's sake: a failing run must not leave them either
        os.kill(pid, signal.SIGKILL)
    assert left == [], "".join(lines)[-3000:]
    failures = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/failed.json")]
    jobs = {job.name: sorted(p.name for p in job.iterdir()) for job in (tmp_path / "sweep").iterdir() if job.is_dir()}
    assert [f["interrupted"] for f in failures] == [True, True], (jobs, "".join(lines)[-3000:])


def test_an_installed_wheel_carries_its_configs_and_runs_outside_the_checkout(tmp_path):
    """The Hydra configs live in the package, so `python -m mixens` works from a wheel, not only a checkout."""
    import shutil

    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(REPO / "mixens", source / "mixens", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("mixens-*.whl")
    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = [sys.executable, "-c", "import mixens.cli; print(mixens.cli.CONF_DIR)"]
    where = subprocess.run(probe, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert where.stdout.strip().startswith(str(site)), where.stderr[-2000:]
    shown = subprocess.run([sys.executable, "-m", "mixens", "--cfg", "job"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "strategy: mixture" in shown.stdout and "sciq_gen" in shown.stdout


def in_private_mount(command: str) -> list[str]:
    """`command` run by sh in a mount namespace of its own (unprivileged: a user namespace), where it may
    mount a tmpfs that nothing else sees."""
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("this machine does not allow mount namespaces (unshare -rm), needed for a real small disk")
    return ["unshare", "-rm", "sh", "-c", command]


def test_a_real_full_disk_loses_nothing_the_console_can_still_show(tiny_models, tmp_path):
    """A 16 KiB tmpfs: Hydra's own files fill it, so the journal, the samples and results.json do not fit.
    The job goes on without its journal, prints the metrics and says in one sentence where writing failed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    job = " ".join(
        f"'{arg}'"
        for arg in [
            sys.executable,
            "-m",
            "mixens",
            *tiny_overrides(tiny_models),
            "benchmark=gsm8k_paper",
            "benchmark.limit=4",
            "benchmark.max_gen_toks=16",
            f"data.hub_mirror={HUB_FIXTURE}",
            "logger=none",
            f"hydra.run.dir={disk}/run",
        ]  # fmt: skip
    )
    done = subprocess.run(
        in_private_mount(f"mount -t tmpfs -o size=16k tmpfs {disk} && exec {job}"),
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr + done.stdout and "No space left on device" in done.stderr
    assert re.search(r"journal .* cannot be written .* going on without it", done.stdout)  # Hydra logs to stdout
    assert "cli.log cannot be written" in done.stderr and done.stderr.count("mixens: the log file") == 1
    assert re.search(r"\|gsm8k_paper *\|.*\|extract *\|.*\|exact_match *\|.*\| *\d", done.stderr)  # the metrics
    assert done.stderr.strip().splitlines()[-1].startswith("mixens: results could not be written")


def test_a_read_only_output_folder_is_one_sentence_before_anything_runs(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    job = f"'{sys.executable}' -m mixens logger=none hydra.run.dir={disk}/run"
    done = subprocess.run(
        in_private_mount(f"mount -t tmpfs tmpfs {disk} && mount -o remount,ro {disk} && exec {job}"),
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip() == (
        f"mixens: {disk}/run cannot be written (Read-only file system in {disk}); "
        "set hydra.run.dir=PATH to a writable folder."
    )


def test_a_disk_that_fails_at_the_end_loses_only_what_it_cannot_hold(tmp_path, monkeypatch, capsys):
    """No room for the per-problem outputs: the metrics are still saved; no room at all: they are printed."""
    import errno
    from types import SimpleNamespace

    from mixens import cli, results_files
    from mixens.decoding import GenerationStats
    from mixens.errors import OutputError

    cfg = composed("compare=[]", "benchmark=gsm8k_paper")
    results = {
        "results": {"gsm8k_paper": {"exact_match,extract": 0.25}},
        "versions": {"gsm8k_paper": 1},
        "samples": {"gsm8k_paper": [{"doc": 1}]},
    }
    lm = SimpleNamespace(
        speed_stats=GenerationStats(), ensemble=SimpleNamespace(members=[], weights=()), journal=None, token_records={}
    )
    full = OSError(errno.ENOSPC, "No space left on device")

    def no_room(*args, **kwargs):
        raise full

    monkeypatch.setattr(results_files, "write_samples", no_room)
    record = cli.record_run(cfg, tmp_path / "a", [("mixture", results, lm)], 1.0)
    saved = json.loads(Path(record["path"]).read_text())
    assert saved["metrics"]["gsm8k_paper"]["exact_match,extract"] == 0.25 and "No space left" in saved["samples_error"]
    monkeypatch.setattr(results_files, "write_results", no_room)
    with pytest.raises(OutputError, match="results could not be written .* the metrics are printed above"):
        cli.record_run(cfg, tmp_path / "b", [("mixture", results, lm)], 1.0)
    assert re.search(r"\|gsm8k_paper *\|.*\|exact_match *\|.*\| *0\.25 *\|", capsys.readouterr().err)  # on the console
