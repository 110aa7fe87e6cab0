"""Drillyard's rollout server: swift GRPO in server mode trains on rollouts the engine owns.

    python -m engine serve-rollouts --policy-url http://127.0.0.1:8001/v1 --model tiny \\
        --env secret_word --scorer secret_share --text-tool say --store train.db --port 8000
    swift rlhf --rlhf_type grpo --use_vllm true --vllm_mode server \\
        --vllm_server_base_url http://127.0.0.1:8000 --vllm_server_pass_dataset true \\
        --external_plugins $(python -c "import engine.integrations as i; print(i.SWIFT_PLUGIN)") \\
        --reward_funcs drillyard --callbacks drillyard ...

It answers the routes of ``swift rollout`` that the trainer calls
(`engine.integrations.swift_protocol`). Every ``/infer/`` batch becomes
rollouts of one live run (`engine.live`): the engine's scheduler, rollout
driver, limits, retries, backend and store, generating through Drillyard's
policy client against the vLLM servers. Each reply carries, per turn, the
token ids vLLM sampled, a loss mask over them (observations are not in it:
swift masks every non-assistant token), vLLM's logprobs, and the reward of
Drillyard's scorer. Weights come back through ``POST /drillyard/weights/``
(sent by the plugin in place of swift's NCCL sync; `engine.training.sync`).

Weight sync over NCCL is not offered: ``/get_world_size/`` answers 0, so the
trainer's weight-update group has only itself in it (no NCCL communicator is
made) and ``/init_communicator/`` has nothing to join.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import structlog
from aiohttp import web

from engine.agent import Agent, extract_answer
from engine.api import Engine
from engine.environment import EnvSpec
from engine.errors import ConfigError, DrillyardError, InfraError, PolicyError
from engine.integrations.config import FeedConfig
from engine.integrations.rows import group_task, system_prompt, task_from_row
from engine.integrations.swift_protocol import (
    TRAINER_ROUTES,
    BadRequest,
    InferBatch,
    InferRequest,
    chat_messages,
    engine_type,
    masked_out,
    parse_batch,
    rollout_output,
)
from engine.live import BatchItem, BatchResult, LiveRun
from engine.policy.base import Policy, SamplingParams, preflight
from engine.policy.multi import MultiServerPolicy
from engine.policy.openai import OpenAIPolicy
from engine.recording import RolloutState
from engine.resources import AsyncResource
from engine.training.curriculum import TurnSchedule
from engine.training.reload import WeightReloader
from engine.training.sync import SyncStopped, WeightSync, version_name
from engine.training.trajectory import Trajectory, Turn, load_trajectory

log = structlog.get_logger("drillyard.rollout_server")

S = RolloutState
SCORED = frozenset({S.DONE, S.FAILED, S.TIMED_OUT})


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status, dumps=_dumps)


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


class RolloutServer(AsyncResource):
    """One training job's rollout server: an engine, a live run, the weight sync."""

    def __init__(self, config: FeedConfig, *, policy: Policy | None = None) -> None:
        if not config.policy_urls and policy is None:
            raise ConfigError(
                "policy_urls", "the rollout server needs the policy's vLLM servers",
                "pass --policy-url http://HOST:PORT/v1 (once per server)",
            )  # fmt: skip
        if config.policy_urls and not config.model:
            raise ConfigError("model", "no model name", "pass --model, as the vLLM servers name it")
        self.config = config
        self.schedule = TurnSchedule.from_config(config.curriculum)
        self.engine = Engine(
            store=config.store,
            backend=config.backend,
            backend_options=config.backend_options,
            max_rollouts=config.max_rollouts,
            max_model_requests=config.max_model_requests,
            max_attempts=config.max_attempts,
            retry_backoff=config.retry_backoff,
            step_timeout=config.step_timeout,
            progress=False,
        )
        self.policy: Policy = policy or _policy(config)
        # one reloader over every server: a new version reaches all before any serves it
        self.reloader = (
            WeightReloader(config.policy_urls, policy=self.policy) if config.policy_urls else None
        )
        self.sync = WeightSync(
            self.reloader, max_staleness=config.max_staleness, wait_timeout=config.sync_timeout
        )
        self.live: LiveRun | None = None
        self.batches = 0
        self.app = self._build_app()
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    # ---- lifecycle -------------------------------------------------------

    async def __aenter__(self) -> RolloutServer:
        await self.engine.__aenter__()
        try:
            await preflight(self.policy)  # an unreachable vLLM fails now, naming its URL
            run_id = self.config.run_id or time.strftime("swift-%Y%m%d-%H%M%S")
            self.live = await self.engine.live_run(
                Agent(self.policy, system_prompt=self.config.system_prompt),
                environment=_environment(self.config),
                scorer=self.config.scorer,
                run_id=run_id,
                metadata={
                    "trainer": "ms-swift GRPO (server mode)",
                    "feed": _public(self.config),
                    "text_tool": self.config.text_tool,
                    "system_prompt": self.config.system_prompt,
                },
            )
            self._runner = web.AppRunner(self.app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.config.host, self.config.port)
            await site.start()
            port = self._runner.addresses[0][1]
            self.url = f"http://{self.config.host}:{port}"
        except BaseException:
            await self.aclose()
            raise
        log.info("rollout server up", url=self.url, run=self.live.id)
        return self

    async def aclose(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        if self.live is not None:
            await self.live.finish("failed" if self.sync.stopped else "finished")
        if self.reloader is not None:
            await self.reloader.aclose()
        close = getattr(self.policy, "aclose", None)
        if close is not None:
            await close()
        await self.engine.aclose()

    # ---- routes ----------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024**2, middlewares=[self._errors])
        handlers = {
            "/health": self._health,
            "/health/": self._health,
            "/get_world_size/": self._world_size,
            "/init_communicator/": self._no_communicator,
            "/close_communicator/": self._no_communicator,
            "/get_engine_type/": self._engine_type,
            "/reset_prefix_cache/": self._reset_prefix_cache,
            "/reset_encoder_cache/": self._nothing_cached,
            "/reset_mm_cache/": self._nothing_cached,
            "/infer/": self._infer,
        }
        for method, path in TRAINER_ROUTES:
            app.router.add_route(method, path, handlers[path])
        app.router.add_post("/drillyard/weights/", self._weights)
        app.router.add_post("/drillyard/steps/", self._steps)
        app.router.add_get("/drillyard/status", self._status)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except web.HTTPNotFound:
            served = ", ".join(f"{m} {p}" for m, p in TRAINER_ROUTES)
            return _json_error(
                404,
                f"unknown route {request.method} {request.path}: this is Drillyard's rollout "
                f"server for swift GRPO server mode; it serves {served}, POST /drillyard/weights/, "
                "POST /drillyard/steps/, GET /drillyard/status",
            )
        except web.HTTPMethodNotAllowed as exc:
            return _json_error(405, f"{request.method} {request.path}: use {exc.allowed_methods}")
        except BadRequest as exc:
            return _json_error(400, str(exc))
        except SyncStopped as exc:
            return _json_error(409, f"the training run stopped: {exc}")
        except InfraError as exc:
            return _json_error(503, f"{request.path}: {exc}")

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"{request.path}: the body is not JSON: {exc}") from exc

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "run_id": self.live.id if self.live else None})

    async def _world_size(self, request: web.Request) -> web.Response:
        # no NCCL ranks here: the trainer's weight-update group is itself alone
        return web.json_response({"world_size": 0})

    async def _no_communicator(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"message": "Drillyard takes weights as checkpoints (POST /drillyard/weights/)"}
        )

    async def _engine_type(self, request: web.Request) -> web.Response:
        return web.json_response(engine_type())

    async def _reset_prefix_cache(self, request: web.Request) -> web.Response:
        if self.reloader is not None:
            await self.reloader.reset_prefix_cache()
        servers = len(self.reloader.urls) if self.reloader else 0
        return web.json_response({"message": f"reset on {servers} server(s)"})

    async def _nothing_cached(self, request: web.Request) -> web.Response:
        return web.json_response({"message": "nothing cached (text-only rollouts)"})

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "run_id": self.live.id if self.live else None,
                "step": self.sync.step,
                "policy_version": getattr(self.policy, "version", None),
                "overlap": self.sync.overlap,
                "batches": self.batches,
                "rollouts_in_flight": self.live.in_flight if self.live else 0,
                "stopped": self.sync.stopped,
                "syncs": [r.to_dict() for r in self.sync.history[-5:]],
            },
            dumps=_dumps,
        )

    # ---- weights and step records ----------------------------------------

    async def _weights(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if not isinstance(body, dict) or not isinstance(body.get("weights_path"), str):
            raise BadRequest("POST /drillyard/weights/ takes {weights_path, step, overlap}")
        step = body.get("step")
        if not isinstance(step, int) or step < 0:
            raise BadRequest(
                f"POST /drillyard/weights/: step must be an integer >= 0, got {step!r}"
            )
        result = await self.sync.apply(body["weights_path"], step, bool(body.get("overlap")))
        assert self.live is not None
        self.live.store.record_train_step(
            self.live.id, step, sync_reload_s=result.reload_wall_s,
            sync_wait_s=round(result.waited_s, 4), policy_version=result.version,
        )  # fmt: skip
        await self.live.store.commit()
        return web.json_response(result.to_dict(), dumps=_dumps)

    async def _steps(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if not isinstance(body, dict) or not isinstance(body.get("step"), int):
            raise BadRequest("POST /drillyard/steps/ takes {step: int, ...measurements}")
        assert self.live is not None
        data = {k: v for k, v in body.items() if k != "step"}
        self.live.store.record_train_step(self.live.id, int(body["step"]), **data)
        await self.live.store.commit()
        return web.json_response({"recorded": body["step"]})

    # ---- rollouts --------------------------------------------------------

    async def _infer(self, request: web.Request) -> web.Response:
        batch = parse_batch(await self._body(request))
        self.sync.check_running()
        assert self.live is not None
        step = self.batches  # batch b is trained at step b (with or without overlap)
        self.batches += 1
        items = [self._item(req, batch, step) for req in batch.infer_requests]
        waited = await self.sync.batch_started(step)
        started = time.perf_counter()
        try:
            results = await self.live.run_batch(items)
        finally:
            await self.sync.batch_ended()
        rollout_s = time.perf_counter() - started
        outputs = [await self._output(res, item) for res, item in zip(results, items, strict=True)]
        rewards = [o["rollout_infos"]["drillyard"]["reward"] for o in outputs]
        scored = [r for r in rewards if r is not None]
        lags = [o["rollout_infos"]["drillyard"]["lag"] for o in outputs]
        self.live.store.record_train_step(
            self.live.id, step, rollout_s=round(rollout_s, 4), rollouts=len(outputs),
            staleness_wait_s=round(waited, 4),
            masked=sum(o["rollout_infos"]["drillyard"]["masked"] for o in outputs),
            mean_reward=sum(scored) / len(scored) if scored else None,
            lag_max=max((lag for lag in lags if lag is not None), default=None),
        )  # fmt: skip
        await self.live.store.commit()
        log.info("batch rolled out", step=step, rollouts=len(outputs), seconds=round(rollout_s, 3))
        return web.json_response(outputs, dumps=_dumps)

    def _item(self, req: InferRequest, batch: InferBatch, step: int) -> BatchItem:
        if not req.data_dict:
            raise BadRequest(
                "an /infer/ request carries no dataset columns (task_id, ground_truth, "
                "task_metadata), so its rollout cannot be scored: add "
                "--vllm_server_pass_dataset true to swift rlhf"
            )
        task = group_task(task_from_row(req.messages, req.data_dict), step)
        system = self.config.system_prompt or system_prompt(req.messages)
        budget = self.schedule.max_turns(step) if self.schedule else None
        agent = Agent(
            self.policy,
            system_prompt=system,
            max_turns=budget or self.config.max_turns or 8,
            sampling=_sampling(batch),
            answer_from=extract_answer,
            text_tool=self.config.text_tool,
        )
        return BatchItem(task, agent=agent, headers={"step": step, "trainer": "swift-server"})

    async def _output(self, result: BatchResult, item: BatchItem) -> dict[str, Any]:
        """The reply for one rollout: token-exact trajectories go as one assistant
        message holding every id after the first prompt (observations masked out);
        others turn by turn (swift then renders the observations itself)."""
        assert self.live is not None and isinstance(item.agent, Agent)
        trajectory = await load_trajectory(self.live.store, result.rollout_id)
        scored = result.state in SCORED and trajectory is not None and bool(trajectory.turns)
        if trajectory is None or not trajectory.turns:
            trajectory = await self._placeholder(result, item)
        first = item.agent.first_messages(item.task.view(), trajectory.first_observation)
        last = trajectory.turns[-1]
        end = getattr(self.policy, "end_of_turn_token", None)
        packed = trajectory.packed(await end() if end is not None else None)
        if packed is not None:
            mask = packed.mask(masked_out=not scored)
            messages = [*first, {"role": "assistant", "content": last.content or ""}]
            ids, masks = [packed.token_ids], [mask]
            trained = packed.logprobs(mask)
            logprobs = [trained] if trained is not None else None
        else:
            messages = chat_messages(trajectory, first)
            ids = [list(t.token_ids or []) for t in trajectory.turns]
            masks = [[1 if scored else 0] * len(i) for i in ids]
            if not scored:
                masks[-1] = masked_out(len(ids[-1]))
            known = all(
                t.logprobs and len(t.logprobs) == len(i)
                for t, i in zip(trajectory.turns, ids, strict=True)
            )
            logprobs = (
                [list(t.logprobs or []) for t in trajectory.turns] if known and scored else None
            )
        reward = (result.outcome.reward if result.state is S.DONE else 0.0) if scored else None
        versions = trajectory.policy_versions
        step = int(item.headers["step"])
        lags = [lag for lag in (self.sync.lag(v, step) for v in versions) if lag is not None]
        infos = {
            "source": "rollout-server",
            "rollout_id": result.rollout_id,
            "run_id": self.live.id,
            "task_id": item.task.metadata.get("task_id"),
            "step": step,
            "state": str(result.state),
            "reward": reward,
            "masked": not scored,
            "error": result.outcome.error,
            "turns": len(trajectory.turns),
            "attempts": result.attempts,
            "policy_versions": versions,
            "lag": max(lags) if lags else None,
            "token_exact": packed is not None,
        }
        return rollout_output(
            messages=messages,
            token_ids=ids,
            loss_masks=masks,
            logprobs=logprobs,
            prompt_token_ids=trajectory.turns[0].prompt_token_ids,
            finish_reason=last.finish_reason,
            model=self.config.model or "drillyard",
            infos=infos,
        )

    async def _placeholder(self, result: BatchResult, item: BatchItem) -> Trajectory:
        """A one-token trajectory for a sample that never generated (its environment
        never came up): its prompt, then the end-of-turn token, as if the model had
        said nothing. It copies no other sample, is masked out and has no reward."""
        assert isinstance(item.agent, Agent)
        first = item.agent.first_messages(item.task.view(), item.task.prompt)
        tokenize = getattr(self.policy, "tokenize", None)
        end = getattr(self.policy, "end_of_turn_token", None)
        try:
            prompt = await tokenize(messages=first) if tokenize is not None else []
            token = await end() if end is not None else None
        except DrillyardError as exc:
            raise PolicyError(
                f"rollout {result.rollout_id} never generated ({result.outcome.error}) "
                f"and the model server cannot tokenize its prompt: {exc}"
            ) from exc
        ids = [token] if token is not None else prompt[-1:]
        if not ids:
            raise PolicyError(
                f"rollout {result.rollout_id} never generated ({result.outcome.error}) and "
                "the policy cannot tokenize; a sample must carry at least one token"
            )
        version = getattr(self.policy, "version", None)
        turn = Turn("", [], ids, prompt or None, [0.0], "stop", version)
        return Trajectory(result.rollout_id, result.attempts, item.task.view().to_dict(),
                          item.task.prompt, [turn])  # fmt: skip


def _sampling(batch: InferBatch) -> SamplingParams:
    rc = batch.request_config
    extra: dict[str, Any] = {}
    for name in ("top_k", "min_p", "repetition_penalty"):
        value = getattr(rc, name)
        if value is not None:
            extra[name] = value
    if rc.structured_outputs_regex:
        extra["structured_outputs"] = {"regex": rc.structured_outputs_regex}
    return SamplingParams(
        temperature=1.0 if rc.temperature is None else rc.temperature,
        top_p=1.0 if rc.top_p is None else rc.top_p,
        max_tokens=rc.max_tokens,
        seed=rc.seed,
        logprobs=True,
        return_token_ids=True,
        stop=tuple(rc.stop or ()),
        # keep <tool_call> markers in the text, so Hermes calls parse from it too
        extra={"skip_special_tokens": False, **extra},
    )


def _policy(config: FeedConfig) -> Policy:
    """The policy over the run's vLLM servers, with token-exact multi-turn prompts."""
    common: dict[str, Any] = {
        "api_key": config.api_key,
        "max_in_flight": config.max_model_requests,
        "timeout": config.step_timeout,
        "version": version_name(0),
        "exact_tokens": True,
    }
    if len(config.policy_urls) > 1:
        return MultiServerPolicy(config.policy_urls, str(config.model), **common)
    return OpenAIPolicy(config.policy_urls[0], str(config.model), **common)


def _environment(config: FeedConfig) -> EnvSpec:
    return EnvSpec(config.environment, dict(config.env_config))


def _public(config: FeedConfig) -> dict[str, Any]:
    """The config as recorded with the run: without secrets."""
    return {k: v for k, v in config.to_dict().items() if k != "api_key"}


# ---- command line ----------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m engine serve-rollouts",
        description="Serve Drillyard rollouts to swift GRPO in server mode (see the module doc).",
    )
    p.add_argument("--config", type=Path, help="JSON/TOML file of FeedConfig fields")
    p.add_argument(
        "--policy-url",
        action="append",
        dest="policy_urls",
        help="a vLLM server of the policy (OpenAI base URL); repeat for several",
    )
    p.add_argument("--model", help="the model name the vLLM servers serve")
    p.add_argument("--store", help="SQLite trace store")
    p.add_argument("--run-id", help="the run every rollout lands in (default: new)")
    p.add_argument("--env", dest="environment", help="registered environment name")
    p.add_argument("--env-config", type=orjson.loads, dest="env_config", help="its config (JSON)")
    p.add_argument("--scorer", help="registered scorer name")
    p.add_argument("--backend", help="where environments run (inprocess, subprocess, …)")
    p.add_argument("--system-prompt", help="system prompt of every rollout")
    p.add_argument("--text-tool", help="send plain replies to this tool (text environments)")
    p.add_argument("--max-turns", type=int, help="turn budget (default 8)")
    p.add_argument("--curriculum", help="turn-budget curriculum: a preset name or JSON")
    p.add_argument("--max-rollouts", type=int, help="rollouts in flight (default 256)")
    p.add_argument(
        "--max-staleness",
        type=int,
        help="policy versions a rollout may lag its training step (default 1)",
    )
    p.add_argument("--max-attempts", type=int, help="attempts per rollout (default 3)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 8000)")
    return p  # fmt: skip


def config_from_args(args: argparse.Namespace) -> FeedConfig:
    base = FeedConfig.from_env({"DRILLYARD_SWIFT_CONFIG": str(args.config)} if args.config else {})
    overrides = {k: v for k, v in vars(args).items() if k != "config" and v is not None}
    return FeedConfig.from_mapping({**base.to_dict(), **overrides}, "serve-rollouts flags")


async def serve(config: FeedConfig) -> None:
    """Run the server until cancelled (Ctrl-C)."""
    async with RolloutServer(config) as server:
        print(f"drillyard rollout server on {server.url} (run {server.live and server.live.id})",
              flush=True)  # fmt: skip
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        asyncio.run(serve(config))
    except DrillyardError as exc:
        print(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        return 0
    return 0
