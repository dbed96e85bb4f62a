"""A hub id whose hub does not answer: one clear error in seconds (not minutes of silent retries), and a copy
already in the local cache loads without waiting on the hub for every file."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO

HUB_ID = "someorg/tiny-model"
CACHED_ID = "someorg/cached-tiny-model"
BOUND_S = 60  # the whole child process, two failed loads and one load from the cache included

CHILD = """
import json, logging, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
import mixens
from mixens.members import load_member
from mixens.spec import ModelSpec

hub_id, cached_id = sys.argv[1:3]
report = {}
for how in ("load_ensemble", "load_member", "cached"):
    started = time.monotonic()
    try:
        if how == "load_ensemble":  # every hub member is probed before any weights load
            mixens.load_ensemble([{"name": "m", "path": hub_id, "device": "cpu"}], "single")
        elif how == "load_member":  # loading without validation probes it too
            load_member(ModelSpec(name="m", path=hub_id, device="cpu"), 0)
        else:
            ensemble = mixens.load_ensemble([{"name": "c", "path": cached_id, "device": "cpu"}], "single")
            ensemble.generate("Hi", max_new_tokens=2, do_sample=False)
        outcome = "loaded"
    except mixens.ConfigError as err:
        outcome = "ConfigError: " + str(err)
    report[how] = {"outcome": outcome, "seconds": time.monotonic() - started}
print(json.dumps(report))
"""


@pytest.fixture
def silent_hub():
    """An endpoint that accepts connections and never answers, like a stalled network."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    server.close()
    for conn in held:
        conn.close()


def _put_in_hub_cache(folder: str, hub_cache: Path, repo_id: str) -> None:
    """The layout huggingface_hub writes: a snapshot per commit and refs/main naming it."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_a_silent_hub_fails_fast_with_one_clear_error(silent_hub, tiny_models, tmp_path):
    hf_home = tmp_path / "hf-home"
    _put_in_hub_cache(tiny_models["bpe_a"], hf_home / "hub", CACHED_ID)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(
        HF_ENDPOINT=silent_hub,  # read when huggingface_hub is imported, hence a child process
        HF_HOME=str(hf_home),
        HF_HUB_ETAG_TIMEOUT="2",
        HF_HUB_DOWNLOAD_TIMEOUT="2",
        HF_HUB_DISABLE_TELEMETRY="1",
        TOKENIZERS_PARALLELISM="false",
    )
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, HUB_ID, CACHED_ID],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=BOUND_S,
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"loading a hub id from a silent hub took over {BOUND_S} s:\n{(err.stderr or b'')[-3000:]!r}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert time.monotonic() - started < BOUND_S
    report = json.loads(done.stdout.strip().splitlines()[-1])

    for how in ("load_ensemble", "load_member"):
        outcome = report[how]["outcome"]
        assert outcome.startswith("ConfigError: "), (how, outcome)
        assert f"'{HUB_ID}'" in outcome and silent_hub in outcome, outcome
        assert f"hf download {HUB_ID}" in outcome and "HF_HUB_OFFLINE=1" in outcome, outcome
        assert report[how]["seconds"] < 15, report  # one request of 2 s, not huggingface_hub's retries
    # The line said before fetching: which member, from where, with what timeout.
    assert f"models[0] (m): fetching '{HUB_ID}' from the hub at {silent_hub} (2 s per request" in done.stderr

    # A cached copy: one warning, then every file from the cache, without a request per file.
    assert report["cached"]["outcome"] == "loaded", report
    assert report["cached"]["seconds"] < 20, report
    assert f"loading '{CACHED_ID}' from the local cache only" in done.stderr
