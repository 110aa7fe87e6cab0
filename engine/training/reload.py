"""New weights into a running vLLM server, between rollouts, without a restart.

After a trainer checkpoint::

    reloader = WeightReloader(server_url, policy=policy)
    await reloader.reload("/ckpt/step-100", version="step-100")

runs vLLM's dev-mode sequence (the server needs ``VLLM_SERVER_DEV_MODE=1``):
``POST /pause?mode=wait`` (in-flight requests finish) → ``POST /collective_rpc``
``reload_weights`` from the checkpoint folder → ``POST /reset_prefix_cache``
(cached KV of the old weights is stale) → ``POST /resume`` →
``POST /update_weight_version``. The policy's ``version`` is bumped while the
server is paused, so every completion (and so every rollout) records the
policy version it ran with. The server is resumed even when the reload fails.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import orjson

from engine.errors import DrillyardError
from engine.resources import AsyncResource, close_session


class ReloadError(DrillyardError):
    """The server refused or failed a step of the weight reload."""


@dataclass(slots=True)
class ReloadResult:
    version: str
    weights_path: str
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())


class WeightReloader(AsyncResource):
    """Reloads weights into one vLLM server over its dev-mode HTTP endpoints.

    ``server_url`` is the server root (a trailing ``/v1`` is dropped); ``policy``
    is any object with a ``version`` attribute (an `OpenAIPolicy`), bumped on reload.
    """

    def __init__(self, server_url: str, *, policy: Any = None, timeout: float = 120.0) -> None:
        url = server_url.rstrip("/")
        self.url = url[: -len("/v1")] if url.endswith("/v1") else url
        self.policy = policy
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def aclose(self) -> None:
        session, self._session = self._session, None
        await close_session(session)

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        url = self.url + path
        data = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            async with self._session.request(method, url, data=data, headers=headers) as resp:
                raw, status = await resp.read(), resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ReloadError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        if status == 404:
            raise ReloadError(
                f"{method} {url}: 404 — the server has no dev-mode endpoints; "
                "start vLLM with VLLM_SERVER_DEV_MODE=1 (and the server root URL, not /v1)"
            )
        if status != 200:
            detail = raw[:500].decode(errors="replace")
            raise ReloadError(f"{method} {url}: HTTP {status}: {detail}")
        try:
            return orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            return raw.decode(errors="replace")

    async def check_dev_mode(self) -> None:
        """Raise `ReloadError` with the fix when the server is not in dev mode."""
        await self._request("GET", "/is_paused")

    async def reset_prefix_cache(self) -> None:
        await self._request("POST", "/reset_prefix_cache")

    async def served_model_root(self) -> str | None:
        """Where the server loaded its weights from (``root`` of ``/v1/models``)."""
        info = await self._request("GET", "/v1/models")
        models = info.get("data") if isinstance(info, dict) else None
        return str(models[0].get("root") or "") or None if models else None

    async def weight_version(self) -> str | None:
        info = await self._request("GET", "/weight_info")
        return info.get("weight_version") if isinstance(info, dict) else None

    async def reload(self, weights_path: str | Path, version: str) -> ReloadResult:
        """Pause, reload weights from ``weights_path``, reset the prefix cache,
        resume, and set the weight version on the server and the policy."""
        path = await anyio.Path(weights_path).resolve()
        if not await path.is_dir():
            raise ReloadError(f"checkpoint folder {path} does not exist")
        result = ReloadResult(version, str(path))

        async def timed(name: str, method: str, route: str, body: Any = None) -> Any:
            t0 = time.perf_counter()
            out = await self._request(method, route, body)
            result.seconds[name] = round(time.perf_counter() - t0, 4)
            return out

        await self.check_dev_mode()
        await timed("pause", "POST", "/pause?mode=wait")
        try:
            rpc = {"method": "reload_weights", "kwargs": {"weights_path": str(path)}}
            await timed("reload_weights", "POST", "/collective_rpc", rpc)
            if self.policy is not None:
                self.policy.version = version
            await timed("reset_prefix_cache", "POST", "/reset_prefix_cache")
        finally:
            await timed("resume", "POST", "/resume")
        await timed(
            "update_weight_version", "POST", "/update_weight_version", {"new_version": version}
        )
        return result
