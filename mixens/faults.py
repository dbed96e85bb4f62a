"""What a job does when its process is told to stop, loses its parent, or meets a disk it cannot write:
it ends in one sentence and marks itself for rerunning, instead of a traceback or a process left behind."""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class Interrupted(BaseException):
    """The process was told to stop (SIGTERM, SIGINT) while a job ran."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def stop_on_signals() -> None:
    """SIGTERM (a scheduler's time limit) and SIGINT (Ctrl-C) raise Interrupted in the job."""
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, _interrupt)
    if not isinstance(sys.unraisablehook, _QuietAboutStops):
        sys.unraisablehook = _QuietAboutStops(sys.unraisablehook)


class _QuietAboutStops:
    """Python prints "Exception ignored in ..." with a traceback for an exception raised in a finalizer. An
    Interrupted dropped there is not lost (raise_if_stopped raises it again at the next step), so it is
    not printed; anything else goes to the hook that was there before."""

    def __init__(self, before):
        self.before = before

    def __call__(self, unraisable) -> None:
        if not isinstance(unraisable.exc_value, Interrupted):
            self.before(unraisable)


_stop_signal: int | None = None  # the signal that asked this process to stop, once one has


def _interrupt(signum: int, frame) -> None:
    global _stop_signal
    _stop_signal = signum
    raise Interrupted(signum)


def raise_if_stopped() -> None:
    """Called between steps of long work. A signal's Python handler runs wherever the interpreter happens to
    be, and an exception raised inside a finalizer or a library's catch-all is dropped: the stop is raised
    again here, so a job told to stop always stops."""
    if _stop_signal is not None:
        raise Interrupted(_stop_signal)


def console_when_log_file_fails() -> None:
    """Hydra's log file (<job>/<app>.log) on a full disk: one line, then the console only, instead of
    logging's traceback for every record."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handleError = functools.partial(_log_file_failed, handler)


def _log_file_failed(handler: logging.FileHandler, record: logging.LogRecord) -> None:
    logging.getLogger().removeHandler(handler)
    error = sys.exc_info()[1]  # handleError runs inside emit's except block
    print(f"mixens: the log file {handler.baseFilename} cannot be written ({error}); logging to the console only.",
          file=sys.stderr)  # fmt: skip


_watching = threading.Event()


def stop_when_orphaned(every: float = 1.0) -> None:
    """In a worker of a parallel sweep (joblib's loky processes), stop the job when the sweep's process is
    gone (kill -9): the worker sends itself SIGTERM, so the job is marked interrupted and nothing is left
    running with the models loaded. The sweep's own process, whose parent may exit (nohup), is not watched."""
    parent = multiprocessing.parent_process()
    if parent is None or _watching.is_set():
        return
    _watching.set()

    def watch() -> None:
        while os.getppid() == parent.pid:
            time.sleep(every)
        print(f"mixens: the sweep's process {parent.pid} is gone; stopping this worker.", file=sys.stderr)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)  # the job had a minute to record that it was stopped
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="mixens-orphan-watch", daemon=True).start()


class OutputFolderCheck(Callback):
    """Before Hydra creates the run's (or sweep's) folder: a folder that cannot be written is one sentence
    here, not the traceback of Hydra's own mkdir."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        check_writable(Path(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        check_writable(Path(config.hydra.sweep.dir), "hydra.sweep.dir")


def check_writable(folder: Path, field: str) -> None:
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the folder itself is made later, by Hydra
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        print(f"mixens: {folder} cannot be written ({err.strerror} in {existing}); set {field}=PATH to a "
              "writable folder.", file=sys.stderr)  # fmt: skip
        sys.exit(2)  # SystemExit passes through Hydra's error report untouched
