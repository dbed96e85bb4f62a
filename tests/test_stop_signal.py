"""A SIGTERM whose exception Python drops (the handler ran inside a finalizer) still stops the next step."""

from __future__ import annotations

import gc
import os
import signal
import sys

import pytest
from conftest import spec

import mixens
from mixens import faults


@pytest.fixture
def stop_handlers(monkeypatch):
    """mixens' stop handlers for one test, over a hook that records what Python would print as "Exception
    ignored"; the process's own handlers, hook and state come back after it."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    monkeypatch.setattr(faults, "_stop_signal", None)
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: reported.append(unraisable.exc_value))
    faults.stop_on_signals()
    yield reported
    for stop, handler in before.items():
        signal.signal(stop, handler)


class SignalledWhileFinalized:
    """Receives SIGTERM inside __del__: the handler's Interrupted is printed as 'Exception ignored' and lost."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)


def test_a_stop_dropped_in_a_finalizer_is_raised_at_the_next_decoding_step(tiny_models, stop_handlers):
    ensemble = mixens.load_ensemble([spec(tiny_models["bpe_a"], "a"), spec(tiny_models["bpe_b"], "b")], "mixture")
    assert ensemble.generate(["Hi"], max_new_tokens=2, do_sample=False).texts  # runs while no stop was asked

    SignalledWhileFinalized()  # dropped at once: __del__ runs here and swallows the Interrupted
    gc.collect()
    assert stop_handlers == []  # not printed as "Exception ignored ... Traceback": it is not lost
    with pytest.raises(faults.Interrupted, match="SIGTERM"):
        ensemble.generate(["Hi"], max_new_tokens=2, do_sample=False)


class FailingWhileFinalized:
    def __del__(self):
        raise ValueError("a finalizer's own error")


def test_other_errors_in_finalizers_are_still_reported(stop_handlers):
    FailingWhileFinalized()
    gc.collect()
    assert [type(e) for e in stop_handlers] == [ValueError]


def test_without_a_stop_the_check_passes(stop_handlers):
    faults.raise_if_stopped()  # nothing was asked: no exception
    with pytest.raises(faults.Interrupted, match="SIGINT"):
        faults._interrupt(signal.SIGINT, None)
    with pytest.raises(faults.Interrupted, match="SIGINT"):
        faults.raise_if_stopped()  # sticky: asked once, raised at every later check
