"""A SIGTERM whose exception Python drops (the handler ran inside a finalizer) still stops the next step."""

from __future__ import annotations

import gc
import os
import signal

import pytest
from conftest import spec

import mixens
from mixens import faults


@pytest.fixture
def stop_handlers(monkeypatch):
    """mixens' stop handlers for one test; the process's own handlers and state come back after it."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    monkeypatch.setattr(faults, "_stop_signal", None)
    faults.stop_on_signals()
    yield
    for stop, handler in before.items():
        signal.signal(stop, handler)


class SignalledWhileFinalized:
    """Receives SIGTERM inside __del__: the handler's Interrupted is printed as 'Exception ignored' and lost."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped exception, expected
def test_a_stop_dropped_in_a_finalizer_is_raised_at_the_next_decoding_step(tiny_models, stop_handlers):
    ensemble = mixens.load_ensemble([spec(tiny_models["bpe_a"], "a"), spec(tiny_models["bpe_b"], "b")], "mixture")
    assert ensemble.generate(["Hi"], max_new_tokens=2, do_sample=False).texts  # runs while no stop was asked

    SignalledWhileFinalized()  # dropped at once: __del__ runs here and swallows the Interrupted
    gc.collect()
    with pytest.raises(faults.Interrupted, match="SIGTERM"):
        ensemble.generate(["Hi"], max_new_tokens=2, do_sample=False)


def test_without_a_stop_the_check_passes(stop_handlers):
    faults.raise_if_stopped()  # nothing was asked: no exception
    with pytest.raises(faults.Interrupted, match="SIGINT"):
        faults._interrupt(signal.SIGINT, None)
    with pytest.raises(faults.Interrupted, match="SIGINT"):
        faults.raise_if_stopped()  # sticky: asked once, raised at every later check
