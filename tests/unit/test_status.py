"""``lvscare status`` against whatever answers on the port: it prints lvscare's status, or one
line saying the answer is not that; never a traceback, never a hang, never raw escapes."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

STATUS = {"virtualServers": [{"address": "10.103.97.2:6443", "scheduler": "rr", "mode": "route",
                              "allDown": False, "realServers": [{
                                  "address": "10.0.0.1:6443", "state": "healthy", "since": 5.0,
                                  "kernelWeight": 1, "configuredWeight": 1, "activeConnections": 0,
                                  "inactiveConnections": 0, "consecutiveFailures": 0,
                                  "lastProbe": {"outcome": "ok", "latency": 0.002, "status": 200,
                                                "error": None}}]}],
          "lastReconcile": 0.0, "repairs": 0}


def _http(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)


@pytest.fixture
def server() -> Iterator[Callable[[Callable[[socket.socket], None]], str]]:
    listener = socket.create_server(("127.0.0.1", 0))
    threads = []

    def start(behave: Callable[[socket.socket], None]) -> str:
        def loop() -> None:
            conn, _ = listener.accept()
            conn.recv(4096)
            with contextlib.suppress(OSError):
                behave(conn)
            conn.close()

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        threads.append(t)
        return f"127.0.0.1:{listener.getsockname()[1]}"

    yield start
    listener.close()


def status(address: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lvscare", "status", "--address", address],
                          capture_output=True, text=True, timeout=20)


def test_a_status_answer_is_printed(server) -> None:  # type: ignore[no-untyped-def]
    p = status(server(lambda c: c.sendall(_http(json.dumps(STATUS).encode()))))
    assert p.returncode == 0 and "10.0.0.1:6443" in p.stdout and "healthy" in p.stdout


def _slow(c: socket.socket) -> None:
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(30):  # one byte a second, bounded
        c.sendall(b"{")
        time.sleep(1)


@pytest.mark.parametrize(("behave", "message"), [
    (lambda c: c.sendall(_http(b"{not json")), "did not answer with lvscare's status"),
    (lambda c: c.sendall(_http(b'{"virtualServers": [{"address": 1}]}')), "did not answer"),
    (lambda c: c.sendall(_http(b"[1, 2]")), "did not answer"),
    (lambda c: c.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"), "HTTP 404"),
    (lambda c: c.sendall(b"SSH-2.0-OpenSSH_9.2\r\n"), "no lvscare daemon answers"),
    (_slow, "did not answer within"),
], ids=["not-json", "wrong-shape", "a-list", "404", "not-http", "one-byte-a-second"])
def test_anything_else_is_one_line_and_exit_1(server, behave, message: str) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    p = status(server(behave))
    assert time.monotonic() - started < 10
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 1 and message in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


def test_escape_sequences_in_the_answer_are_not_printed_raw(server) -> None:  # type: ignore[no-untyped-def]
    hostile = json.loads(json.dumps(STATUS))
    hostile["virtualServers"][0]["realServers"][0]["lastProbe"]["error"] = "\x1b]0;pwned\x07\x1b[2J"
    p = status(server(lambda c: c.sendall(_http(json.dumps(hostile).encode()))))
    assert p.returncode == 0 and "\x1b" not in p.stdout and "\\x1b" in p.stdout


def test_a_slow_real_server_shows_as_such(server) -> None:  # type: ignore[no-untyped-def]
    slow = json.loads(json.dumps(STATUS))
    rs = slow["virtualServers"][0]["realServers"][0]
    rs["slow"] = True
    rs["lastProbe"] = {"outcome": "slow", "latency": 0.003, "status": None,
                       "error": "/readyz unanswered after 0.80s; PINGs answered"}
    p = status(server(lambda c: c.sendall(_http(json.dumps(slow).encode()))))
    row = next(line for line in p.stdout.splitlines() if "10.0.0.1:6443" in line)
    assert row.split()[1:4] == ["seed", "healthy", "(slow)"]
    assert row.endswith("slow: /readyz unanswered after 0.80s; PINGs answered")
