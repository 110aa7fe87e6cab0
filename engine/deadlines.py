"""Deadlines for many short calls on one timer: `within`, `asyncio.timeout` made cheap.

Every model call and tool call of every rollout is bounded by the step
deadline, and almost none reaches it. ``asyncio.timeout`` gives each call a
timer of the event loop's own, armed on entry and cancelled on exit (under
uvloop, a libuv timer made and freed per call): at a thousand rollouts in
flight, ~6% of the engine's CPU went to arming timers that never fired.

`within` keeps the same contract, and the same cancellation rules as
``asyncio.timeout`` (the task is cancelled at the deadline, the cancellation
becomes a `TimeoutError` at the block's exit, an outer cancellation is never
swallowed), but its deadlines share one timer per event loop: a deadline is
filed in the bucket of the `RESOLUTION`-wide slot it falls in, exiting
removes it from its bucket, and the loop's one timer wakes for the earliest
bucket that still holds one. A deadline therefore fires no earlier than
asked and at most `RESOLUTION` later (plus the loop's own lag).

It is a plain ``with`` block (nothing in it awaits), usable in any task::

    with within(step_timeout):
        reply = await policy.complete(...)
"""

from __future__ import annotations

import asyncio
import heapq
import math
import weakref
from types import TracebackType
from typing import Literal

__all__ = ["RESOLUTION", "Deadline", "within"]

RESOLUTION = 0.01
"""Seconds: how much later than asked a deadline may fire (the width of a bucket)."""
_SLOTS_PER_SECOND = round(1 / RESOLUTION)

_State = Literal["created", "entered", "expiring", "expired", "exited"]


class Deadline:
    """One bounded block of one task (made by `within`)."""

    __slots__ = ("_cancelling", "_clock", "_loop", "_slot", "_state", "_task", "delay", "when")

    def __init__(self, delay: float | None, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.delay = delay
        self._loop = loop
        self.when: float | None = None
        self._state: _State = "created"
        self._clock: _Clock | None = None
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._slot = 0

    def __repr__(self) -> str:
        return f"<Deadline delay={self.delay} {self._state}>"

    def expired(self) -> bool:
        """Whether this deadline passed and cancelled its block."""
        return self._state in ("expiring", "expired")

    def __enter__(self) -> Deadline:
        if self._state != "created":
            raise RuntimeError("a Deadline is used once: call within() for each block")
        try:
            # the loop when the caller knows it: no lookup of the running loop (in
            # Python 3.11 a getpid() system call each)
            task = asyncio.current_task(self._loop)
        except RuntimeError:  # no running loop
            task = None
        if task is None:
            raise RuntimeError("within() must be used inside a task of a running event loop")
        self._state, self._task, self._cancelling = "entered", task, task.cancelling()
        if self.delay is not None:
            loop = self._loop or task.get_loop()
            clock = _clock_of(loop)
            self.when = loop.time() + self.delay
            self._clock, self._slot = clock, clock.add(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state == "entered":
            self._state = "exited"
            if self._clock is not None:
                self._clock.discard(self, self._slot)
            return
        if self._state == "expiring":
            # asyncio.timeout's rule: only the cancellation this deadline asked for
            # becomes a TimeoutError; one from outside (or a later one) goes on
            self._state = "expired"
            assert self._task is not None
            if (
                self._task.uncancel() <= self._cancelling
                and exc_type is not None
                and issubclass(exc_type, asyncio.CancelledError)
            ):
                raise TimeoutError from exc

    def _expire(self) -> None:
        if self._state == "entered":
            self._state = "expiring"
            assert self._task is not None
            self._task.cancel()


def within(delay: float | None, loop: asyncio.AbstractEventLoop | None = None) -> Deadline:
    """A block bounded by ``delay`` seconds (None: unbounded); past it, `TimeoutError`.

    ``loop``: the running event loop, where the caller holds it (a little cheaper)."""
    return Deadline(delay, loop)


class _Clock:
    """The deadlines of one event loop, in `RESOLUTION`-wide buckets, on one timer."""

    __slots__ = ("_armed", "_buckets", "_loop", "_slots", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # the loop's entry in _clocks must not keep it alive
        self._buckets: dict[int, set[Deadline]] = {}
        self._slots: list[int] = []  # a heap of the buckets' slots
        self._timer: asyncio.TimerHandle | None = None
        self._armed: int | None = None  # the slot the timer wakes for

    def add(self, deadline: Deadline) -> int:
        assert deadline.when is not None
        slot = math.ceil(deadline.when * _SLOTS_PER_SECOND)  # never before `when`
        bucket = self._buckets.get(slot)
        if bucket is None:  # each slot is in the heap once
            self._buckets[slot] = bucket = set()
            heapq.heappush(self._slots, slot)
            if self._armed is None or slot < self._armed:
                self._arm(slot)
        bucket.add(deadline)
        return slot

    def discard(self, deadline: Deadline, slot: int) -> None:
        bucket = self._buckets.get(slot)
        if bucket is not None:
            # an emptied bucket stays until the timer passes its slot: at most
            # step deadline ÷ RESOLUTION of them, however many calls come and go
            bucket.discard(deadline)

    def _arm(self, slot: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = self._loop()
        if loop is not None:
            self._armed = slot
            self._timer = loop.call_at(slot / _SLOTS_PER_SECOND, self._tick)

    def _tick(self) -> None:
        self._timer = self._armed = None
        loop = self._loop()
        if loop is None:
            return
        now, slots, buckets = loop.time(), self._slots, self._buckets
        # every slot due, and the emptied ones ahead of the first live one
        while slots and (slots[0] / _SLOTS_PER_SECOND <= now or not buckets[slots[0]]):
            for deadline in buckets.pop(heapq.heappop(slots)):
                deadline._expire()
        if slots:
            self._arm(slots[0])


_clocks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Clock] = weakref.WeakKeyDictionary()
_last: tuple[weakref.ref[asyncio.AbstractEventLoop], _Clock] | None = None


def _clock_of(loop: asyncio.AbstractEventLoop) -> _Clock:
    """The loop's clock (made on first use; the last one used is looked up first)."""
    global _last
    if _last is not None and _last[0]() is loop:
        return _last[1]
    clock = _clocks.get(loop)
    if clock is None:
        clock = _clocks[loop] = _Clock(loop)
    _last = (weakref.ref(loop), clock)
    return clock
