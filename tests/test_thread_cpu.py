"""The bench's CPU by thread: the thread that works is the one that shows it."""

from __future__ import annotations

import sys
import threading

import pytest

from engine.benchmark.threads import LOOP_THREAD, cpu_by_thread, per_turn_ms, thread_cpu

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


def _spin(spun: threading.Event, release: threading.Event) -> None:
    n = 0
    while n < 2_000_000:  # a fixed amount of work
        n += 1
    spun.set()
    release.wait()  # alive until sampled


def test_the_busy_thread_has_the_cpu_and_the_caller_is_the_loop() -> None:
    spun, release = threading.Event(), threading.Event()
    busy = threading.Thread(target=_spin, args=(spun, release), name="busy")
    idle = threading.Thread(target=release.wait, name="idle")
    idle.start()
    before = thread_cpu()
    busy.start()  # started after the first sample: counted from zero
    spun.wait()
    after = thread_cpu()
    release.set()
    busy.join()
    idle.join()

    spent = cpu_by_thread(before, after)
    assert spent is not None
    assert spent["busy"] > spent["idle"] >= 0.0
    assert LOOP_THREAD in spent  # the calling thread, under the loop's name
    assert "MainThread" not in spent
    assert list(spent.values()) == sorted(spent.values(), reverse=True)
    # as ms a turn: the same shares
    per = per_turn_ms(spent, turns=10)
    assert per is not None and per["busy"] == pytest.approx(spent["busy"] / 10 * 1e3, abs=1e-3)


def test_no_sample_no_split() -> None:
    assert cpu_by_thread(None, thread_cpu()) is None
    assert per_turn_ms(None, 10) is None
