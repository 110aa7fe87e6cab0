"""New weights into the running vLLM servers of a run, between rollouts, without a restart.

After a trainer checkpoint::

    reloader = WeightReloader(policy.base_urls, policy=policy)   # or one server URL
    await reloader.reload("/ckpt/step-100", version="step-100")

runs vLLM's dev-mode sequence (the servers need ``VLLM_SERVER_DEV_MODE=1``),
each step on every server before the next step starts anywhere:
``POST /pause?mode=wait`` (in-flight requests finish) → ``POST /collective_rpc``
``reload_weights`` from the checkpoint folder → ``POST /reset_prefix_cache``
(cached KV of the old weights is stale) → ``POST /update_weight_version`` →
the policy's ``version`` is bumped → ``POST /resume``. No server generates
with the new weights before every server has them, and every completion (so
every rollout) records the policy version it ran with; a policy with
``paused()`` (`MultiServerPolicy`) holds its new calls and lets its calls in
flight finish first, so its stamps are exact.

Not half-updated: when any server fails a step, every server reloads the
checkpoint it served before (``weights_path``, else the model path it reports
at ``GET /v1/models``) and gets its old weight version back, the policy keeps
its version, every server is resumed, and `ReloadError` names the server and
the cause. A server that cannot be reached at all is skipped when the policy
can take it out (it comes back only once it reports the new weight version,
which the next reload gives it); else the reload fails before changing anything.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import orjson

from engine.errors import DrillyardError
from engine.resources import AsyncResource, close_session

PHASES = ("pause", "reload_weights", "reset_prefix_cache", "update_weight_version", "resume")


class ReloadError(DrillyardError):
    """A server refused or failed a step of the weight reload."""


class ServerUnreachable(ReloadError):
    """The server could not be reached (refused, reset, no reply in time)."""


@dataclass(slots=True)
class ReloadResult:
    """What a reload did: wall seconds per step (all servers), per server and in
    all (``total_s``, with the checks and the wait for calls in flight), and the
    servers skipped because they could not be reached."""

    version: str
    weights_path: str
    seconds: dict[str, float] = field(default_factory=dict)
    per_server: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    waited_s: float = 0.0
    total_s: float = 0.0


class ServerControl(AsyncResource):
    """The dev-mode endpoints of one vLLM server (its root URL; ``/v1`` is dropped)."""

    def __init__(self, server_url: str, *, timeout: float = 120.0) -> None:
        self.url = _root(server_url)
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def aclose(self) -> None:
        session, self._session = self._session, None
        await close_session(session)

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        if self._session is None or self._session.closed:
            # a fresh connection per call: after an HTTP 500 vLLM may drop the
            # kept-alive one, and the rollback that follows must not land on it
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
        url = self.url + path
        data = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            async with self._session.request(method, url, data=data, headers=headers) as resp:
                raw, status = await resp.read(), resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ServerUnreachable(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
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

    async def weight_version(self) -> str | None:
        info = await self.request("GET", "/weight_info")
        return info.get("weight_version") if isinstance(info, dict) else None

    async def served_model_root(self) -> str | None:
        """Where the server loaded its weights from at start (``root`` of ``/v1/models``;
        vLLM does not change it on a reload)."""
        models = await self.request("GET", "/v1/models")
        data = models.get("data") if isinstance(models, dict) else None
        return str(data[0].get("root") or "") or None if data else None

    async def load(self, weights_path: str) -> None:
        await self.request("POST", "/collective_rpc", _rpc(weights_path))


def _hint(step: str, error: ReloadError, path: str) -> ReloadError:
    """vLLM takes a folder it cannot see for a Hugging Face repo id: say so."""
    if step == "reload_weights" and "Repo id must be in the form" in str(error):
        return ReloadError(f"{error} — that server sees no checkpoint folder at {path}")
    return error


Step = Callable[[ServerControl], Awaitable[Any]]


class WeightReloader(AsyncResource):
    """Reloads weights into every vLLM server of a run over their dev-mode endpoints.

    ``server_urls`` is one URL or several (server roots or ``…/v1``; default:
    the policy's ``base_urls``); ``policy`` is any object with a ``version``
    attribute (an `OpenAIPolicy`, a `MultiServerPolicy`), bumped on reload.
    ``weights_path`` is the checkpoint the servers serve now (default: the
    model path they report), what a failed reload goes back to.
    """

    def __init__(
        self,
        server_urls: str | Sequence[str] | None = None,
        *,
        policy: Any = None,
        timeout: float = 120.0,
        weights_path: str | Path | None = None,
    ) -> None:
        policy_urls: list[str] = list(getattr(policy, "base_urls", None) or [])
        if server_urls is None:
            server_urls = policy_urls
        urls = [server_urls] if isinstance(server_urls, str) else list(server_urls)
        if not urls:
            raise ReloadError("no server URL given: pass the URL of every vLLM server of the run")
        self.servers = [ServerControl(u, timeout=timeout) for u in urls]
        roots = {_root(u) for u in policy_urls}
        if roots and roots != set(self.urls):
            raise ReloadError(
                f"the reloader's servers {sorted(self.urls)} are not the policy's "
                f"{sorted(roots)}: a weight update must reach every server the policy calls"
            )
        self.policy = policy
        self.weights_path = str(weights_path) if weights_path is not None else None
        self._lock = anyio.Lock()

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    @property
    def url(self) -> str:
        """The server root, for a reloader of one server."""
        if len(self.servers) != 1:
            raise ValueError(f"this reloader has {len(self.servers)} servers: read .urls")
        return self.servers[0].url

    async def aclose(self) -> None:
        for server in self.servers:
            await server.aclose()

    async def check_dev_mode(self) -> None:
        """Raise `ReloadError` with the fix when a server is not in dev mode."""
        for server in self.servers:
            await server.request("GET", "/is_paused")

    async def reset_prefix_cache(self) -> None:
        """Drop every server's cached KV (say, after changing how prompts are built)."""
        for server in self.servers:
            await server.request("POST", "/reset_prefix_cache")

    async def served_model_root(self) -> str | None:
        """The model path every server was started with (`ReloadError` if they differ)."""
        roots = {s.url: await s.served_model_root() for s in self.servers}
        if len(set(roots.values())) > 1:
            raise ReloadError(f"the servers were started from different models: {roots}")
        return next(iter(roots.values()))

    async def weight_versions(self) -> dict[str, str | None]:
        return {s.url: await s.weight_version() for s in self.servers}

    async def weight_version(self) -> str | None:
        """The weight version every server reports (`ReloadError` if they differ)."""
        versions = await self.weight_versions()
        if len(set(versions.values())) > 1:
            raise ReloadError(f"the servers report different weight versions: {versions}")
        return next(iter(versions.values()))

    async def reload(self, weights_path: str | Path, version: str) -> ReloadResult:
        """Load ``weights_path`` into every server and call it ``version``, all or none."""
        async with self._lock:
            t0 = time.perf_counter()
            path = await anyio.Path(weights_path).resolve()
            if not await path.is_dir():
                raise ReloadError(f"checkpoint folder {path} does not exist")
            result = ReloadResult(version, str(path))
            live, labels = await self._preflight(result)
            previous = self.weights_path or await self._served_path(live)
            hold = getattr(self.policy, "paused", None)
            gate: AbstractAsyncContextManager[Any] = hold() if callable(hold) else nullcontext()
            async with gate:
                result.waited_s = round(time.perf_counter() - t0, 4)
                with anyio.CancelScope(shield=True):  # never leave servers paused or mixed
                    await self._swap(result, live, labels, str(path), previous)
            self.weights_path = str(path)
            result.total_s = round(time.perf_counter() - t0, 4)
            return result

    async def _preflight(self, result: ReloadResult) -> tuple[list[ServerControl], dict[str, Any]]:
        """Every server's weight version (this checks dev mode); the unreachable ones skipped."""
        labels: dict[str, Any] = {}

        async def label(server: ServerControl) -> None:
            labels[server.url] = await server.weight_version()

        failures = await self._each(self.servers, label)
        refused = {u: e for u, e in failures.items() if not isinstance(e, ServerUnreachable)}
        if refused:
            raise next(iter(refused.values()))
        take_out = getattr(self.policy, "take_out", None)
        if failures and (not callable(take_out) or len(failures) == len(self.servers)):
            raise ReloadError(
                "cannot reach every server, nothing was changed: " + _listed(failures)
            )
        for url, exc in failures.items():
            result.skipped[url] = str(exc)
            assert callable(take_out)
            take_out(self._policy_url(url), f"unreachable during the reload to {result.version}")
        return [s for s in self.servers if s.url not in failures], labels

    def _policy_url(self, root: str) -> str:
        urls: list[str] = list(getattr(self.policy, "base_urls", []))
        return next((u for u in urls if _root(u) == root), root)

    async def _served_path(self, live: list[ServerControl]) -> str:
        paths = {s.url: await s.served_model_root() for s in live}
        if len(set(paths.values())) != 1 or None in paths.values():
            raise ReloadError(
                f"cannot tell which checkpoint the servers serve now ({paths}), so a failed "
                "reload could not be undone: pass weights_path= to WeightReloader"
            )
        return str(next(iter(paths.values())))

    async def _swap(
        self,
        result: ReloadResult,
        live: list[ServerControl],
        labels: dict[str, Any],
        path: str,
        previous: str,
    ) -> None:
        """Pause → reload → reset cache → label → bump → resume, or undo and raise."""
        version = result.version
        had_required = getattr(self.policy, "weight_version", None)
        if hasattr(self.policy, "weight_version"):  # a server back mid-reload stays out
            self.policy.weight_version = version
        swapped = False
        failures = await self._phase(result, live, "pause", "POST", "/pause?mode=wait")
        try:
            if failures:
                raise ReloadError("pausing failed, nothing was changed: " + _listed(failures))
            for name, route, body in (
                ("reload_weights", "/collective_rpc", _rpc(path)),
                ("reset_prefix_cache", "/reset_prefix_cache", None),
                ("update_weight_version", "/update_weight_version", {"new_version": version}),
            ):
                failures = await self._phase(result, live, name, "POST", route, body)
                failures = {u: _hint(name, e, path) for u, e in failures.items()}
                if failures:
                    await self._undo(live, labels, previous, name, failures)
            if self.policy is not None:
                self.policy.version = version
            swapped = True
        finally:
            if not swapped and hasattr(self.policy, "weight_version"):
                self.policy.weight_version = had_required
            stuck = await self._phase(result, live, "resume", "POST", "/resume")
            if stuck:
                state = f"all on {version}" if swapped else "back on the old weights"
                raise ReloadError(
                    f"the servers are {state}, but these could not be resumed (POST /resume "
                    "on them): " + _listed(stuck)
                )

    async def _undo(
        self,
        live: list[ServerControl],
        labels: dict[str, Any],
        previous: str,
        step: str,
        failures: dict[str, ReloadError],
    ) -> None:
        """Put every server back on ``previous`` and its old label; raise what happened."""

        async def back(server: ServerControl) -> None:
            await server.load(previous)
            await server.request("POST", "/reset_prefix_cache")
            old = labels.get(server.url)
            if old is not None:
                await server.request("POST", "/update_weight_version", {"new_version": old})

        unrecovered = await self._each(live, back)
        message = f"{step} failed on {_listed(failures)}; "
        if not unrecovered:
            raise ReloadError(
                message + f"every server is back on {previous} and its old weight version"
            )
        take_out = getattr(self.policy, "take_out", None)
        for url in unrecovered:
            if callable(take_out):
                take_out(self._policy_url(url), f"could not be rolled back to {previous}")
        raise ReloadError(
            message
            + f"rolling back to {previous} failed on {_listed(unrecovered)}: those servers may "
            "hold part of the new weights; restart them"
        )

    async def _phase(
        self,
        result: ReloadResult,
        servers: list[ServerControl],
        name: str,
        method: str,
        route: str,
        body: Any = None,
    ) -> dict[str, ReloadError]:
        """One step on every server at once, timed; the failures by server."""
        t0 = time.perf_counter()

        async def step(server: ServerControl) -> None:
            s0 = time.perf_counter()
            try:
                await server.request(method, route, body)
            finally:
                took = round(time.perf_counter() - s0, 4)
                result.per_server.setdefault(server.url, {})[name] = took

        failures = await self._each(servers, step)
        result.seconds[name] = round(time.perf_counter() - t0, 4)
        return failures

    @staticmethod
    async def _each(servers: list[ServerControl], step: Step) -> dict[str, ReloadError]:
        """Run ``step`` on every server concurrently; none is cancelled by another's failure."""
        failures: dict[str, ReloadError] = {}

        async def one(server: ServerControl) -> None:
            try:
                await step(server)
            except ReloadError as exc:
                failures[server.url] = exc

        async with anyio.create_task_group() as tg:
            for server in servers:
                tg.start_soon(one, server)
        return failures


def _rpc(path: str) -> dict[str, Any]:
    return {"method": "reload_weights", "kwargs": {"weights_path": path}}


def _root(url: str) -> str:
    return url.rstrip("/").removesuffix("/v1")


def _listed(failures: dict[str, ReloadError]) -> str:
    return "; ".join(str(exc) for exc in failures.values())  # each names its server
