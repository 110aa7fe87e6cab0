from __future__ import annotations

import pytest

from backends.bench_backends import step_under_load
from backends.inprocess import InProcessBackend
from backends.subprocess import SubprocessBackend
from backends.testenvs import PLUGIN
from engine.benchmark.world import PLUGIN as WORLD_PLUGIN

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("where", ["inprocess", "subprocess"])
async def test_step_under_load_times_every_step_less_the_tools_own_sleep(where: str) -> None:
    backend = (
        InProcessBackend(slots=4)
        if where == "inprocess"
        else SubprocessBackend(workers=2, slots_per_worker=2, plugins=[PLUGIN, WORLD_PLUGIN])
    )
    # every sleep is 10–90 ms; what a step adds over it is far less
    r = await step_under_load(backend, envs=4, calls=5, mean_s=0.05)
    assert r["n"] == 4 * 5
    assert 0 <= r["p50_ms"] < 10
