"""`engine.deadlines.within`: asyncio.timeout's contract, on one timer per loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from engine.deadlines import RESOLUTION, within


class CountingLoop(asyncio.SelectorEventLoop):
    """asyncio's own loop, counting the timers armed on it."""

    timers = 0

    def call_at(self, when: float, callback: Callable[..., object], *args: Any, context: Any = None
                ) -> asyncio.TimerHandle:  # fmt: skip
        self.timers += 1
        return super().call_at(when, callback, *args, context=context)


LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    def run(main: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as runner:
            return runner.run(main)

    return run


def test_a_block_past_its_deadline_raises_timeout_error_never_early(run: Any) -> None:
    async def main() -> tuple[float, bool]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TimeoutError):
            with within(0.05) as deadline:
                await asyncio.Event().wait()
        return loop.time() - start, deadline.expired()

    waited, expired = run(main())
    assert expired
    assert waited >= 0.05


def test_a_block_that_ends_in_time_returns_its_value(run: Any) -> None:
    async def main() -> tuple[int, bool]:
        with within(30) as deadline:
            await asyncio.sleep(0)
            value = 42
        return value, deadline.expired()

    assert run(main()) == (42, False)


def test_none_is_unbounded(run: Any) -> None:
    async def main() -> bool:
        with within(None) as deadline:
            await asyncio.sleep(0)
        return deadline.expired()

    assert run(main()) is False


def test_a_cancellation_from_outside_is_not_turned_into_a_timeout(run: Any) -> None:
    async def main() -> None:
        entered = asyncio.Event()

        async def bounded() -> None:
            with within(30):
                entered.set()
                await asyncio.Event().wait()

        task = asyncio.create_task(bounded())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())


def test_nested_deadlines_each_raise_in_their_own_block(run: Any) -> None:
    async def main() -> list[str]:
        seen = []
        with pytest.raises(TimeoutError):
            with within(0.2) as outer:
                with pytest.raises(TimeoutError):
                    with within(0.02):
                        await asyncio.Event().wait()
                seen.append("inner timed out; outer still running")
                with within(30) as long:
                    await asyncio.Event().wait()  # the outer deadline ends this
        seen.append(f"outer expired={outer.expired()}, long expired={long.expired()}")
        return seen

    assert run(main()) == [
        "inner timed out; outer still running",
        "outer expired=True, long expired=False",
    ]


def test_a_task_goes_on_after_its_deadline_fired(run: Any) -> None:
    async def main() -> str:
        with pytest.raises(TimeoutError):
            with within(0.01):
                await asyncio.Event().wait()
        await asyncio.sleep(0)  # not cancelled again
        return "went on"

    assert run(main()) == "went on"


def test_a_deadline_is_used_once_and_only_in_a_task() -> None:
    async def main() -> None:
        deadline = within(1)
        with deadline:
            pass
        with pytest.raises(RuntimeError, match="used once"):
            with deadline:
                pass

    asyncio.run(main())
    with pytest.raises(RuntimeError, match="inside a task"):
        with within(1):
            pass


def test_a_thousand_concurrent_calls_share_one_timer() -> None:
    """What `within` is for: every call bounded, a handful of timers armed."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, CountingLoop)
        release = asyncio.Event()

        async def call() -> None:
            with within(60):
                await release.wait()

        tasks = [asyncio.create_task(call()) for _ in range(1000)]
        await asyncio.sleep(0)
        before = loop.timers
        release.set()
        await asyncio.gather(*tasks)
        for _ in range(1000):  # one after another, as a rollout's turns are
            with within(60):
                await asyncio.sleep(0)
        return loop.timers - before

    with asyncio.Runner(loop_factory=CountingLoop) as runner:
        armed = runner.run(main())
    # a timer per bucket at most, not one per call; the calls span well under a second
    assert armed <= 1 / RESOLUTION


def test_expired_deadlines_leave_the_timer_for_the_live_ones(run: Any) -> None:
    async def main() -> list[bool]:
        results = []

        async def bounded(delay: float, gate: asyncio.Event) -> None:
            try:
                with within(delay):
                    await gate.wait()
                results.append(False)
            except TimeoutError:
                results.append(True)

        short_gate, long_gate = asyncio.Event(), asyncio.Event()
        short = asyncio.create_task(bounded(0.02, short_gate))
        long = asyncio.create_task(bounded(30, long_gate))
        await short
        long_gate.set()
        await long
        return results

    assert run(main()) == [True, False]
