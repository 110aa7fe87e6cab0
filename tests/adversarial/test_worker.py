"""The worker protocol against a slow or greedy local client: the request head
and body have deadlines, and the open connections are bounded."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import psutil

from tests.backends.conftest import WorkerProcess, worker_process

LIMITS = ("--header-timeout", "1", "--body-timeout", "1", "--max-connections", "8")


def connect(w: WorkerProcess) -> socket.socket:
    s = socket.create_connection((w.host, w.port), timeout=5)
    s.settimeout(0.1)
    return s


def closed_by_server(s: socket.socket, trickle: bytes, within: float) -> tuple[bool, bytes]:
    """Keep sending ``trickle`` a byte at a time; True once the server has answered
    or hung up, False when it still holds the connection after ``within`` seconds."""
    end = time.monotonic() + within
    got = b""
    i = 0
    while time.monotonic() < end:
        try:
            s.send(trickle[i % len(trickle):i % len(trickle) + 1])
            i += 1
        except OSError:
            return True, got
        try:
            chunk = s.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


def ask_health(w: WorkerProcess) -> bytes:
    """The raw answer to one GET /health; b"RESET" when the worker reset the connection."""
    try:
        with socket.create_connection((w.host, w.port), timeout=5) as s:
            s.sendall(f"GET /health HTTP/1.1\r\nHost: w\r\nAuthorization: Bearer {w.token}"
                      "\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            return data
    except ConnectionResetError:
        return b"RESET"


def refused(answer: bytes) -> bool:
    """A 503, a reset, or a close with no answer at all: the kernel sends a FIN, not a
    reset, when the worker drops a connection before the request in it has arrived."""
    return answer.startswith((b"HTTP/1.1 503", b"RESET")) or answer == b""


def test_a_request_head_sent_slowly_is_cut_off(tmp_path: Path) -> None:
    with worker_process(tmp_path, *LIMITS) as w:
        s = connect(w)
        s.send(b"GET /health HTTP/1.1\r\nHost: w\r\n")
        closed, got = closed_by_server(s, b"X-Slow: yes\r\n", within=10)
        s.close()
        assert closed, "the worker held a connection whose head never ended"
        assert b"200 OK" not in got
        assert ask_health(w).startswith(b"HTTP/1.1 200")


def test_a_body_sent_slowly_is_cut_off(tmp_path: Path) -> None:
    with worker_process(tmp_path, *LIMITS) as w:
        s = connect(w)
        s.send(f"POST /envs HTTP/1.1\r\nHost: w\r\nAuthorization: Bearer {w.token}\r\n"
               "Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{".encode())
        closed, got = closed_by_server(s, b'"x": 1,', within=10)
        s.close()
        assert closed, "the worker waited for a body that never ended"
        assert got == b"" or b" 408 " in got.split(b"\r\n", 1)[0], got[:200]
        assert ask_health(w).startswith(b"HTTP/1.1 200")


def test_open_connections_are_bounded(tmp_path: Path) -> None:
    limits = ("--header-timeout", "4", "--body-timeout", "1", "--max-connections", "8")
    with worker_process(tmp_path, *limits) as w:
        worker = psutil.Process(w.proc.pid)
        baseline = worker.num_fds()
        held = [connect(w) for _ in range(8)]
        try:
            for s in held:
                s.send(b"GET /health HTTP/1.1\r\n")
            eventually_full = time.monotonic() + 10
            while (one := ask_health(w)).startswith(b"HTTP/1.1 200") \
                    and time.monotonic() < eventually_full:
                pass  # until the worker has registered all 8
            assert one.startswith(b"HTTP/1.1 503") and b"connections are in use" in one, one
            held += [connect(w) for _ in range(200)]
            for s in held[8:]:
                s.send(b"GET /health HTTP/1.1\r\n")
            extra = ask_health(w)  # refused at once (503, or dropped while refusals linger)
            assert refused(extra), extra[:200]
            # 8 served + at most 8 refusals lingering for their 503 to be read
            assert worker.num_fds() <= baseline + 2 * 8 + 4, worker.num_fds()
        finally:
            for s in held:
                s.close()
        end = time.monotonic() + 10
        while refused(answer := ask_health(w)) and time.monotonic() < end:
            time.sleep(0.05)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
