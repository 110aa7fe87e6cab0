"""`AsyncResource`: ``async with`` for anything that holds something until ``aclose``.

Entering returns the object (subclasses that must open something override
``__aenter__`` and call ``super()``); leaving runs ``aclose`` shielded from
cancellation, so a cancelled run still releases its sessions, processes and
folders. ``aclose`` must be idempotent.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

import aiohttp
import anyio

__all__ = ["AsyncResource", "close_policy", "close_session"]


class AsyncResource:
    """Base class: ``async with obj:`` closes ``obj`` however the block ends."""

    async def aclose(self) -> None:
        """Release what the object holds; safe to call twice."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self.aclose()


async def close_session(session: aiohttp.ClientSession | None) -> None:
    """Close an aiohttp session (None: nothing to do), shielded from cancellation."""
    if session is not None:
        with anyio.CancelScope(shield=True):
            await session.close()


async def close_policy(policy: object) -> None:
    """Close a policy that holds a session (``aclose``); others need nothing."""
    close = getattr(policy, "aclose", None)
    if close is not None:
        await close()
