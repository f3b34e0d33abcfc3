"""The HTTP/2 probe against hypercorn on loopback: PING liveness, readiness cadence, slow is not
dead, fallback to HTTP/1.1, and the old probe kept on request."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import structlog
from lvscare_rig.topology import H2BACKEND, make_certificate

from lvscare.config import Endpoint, HealthCheck
from lvscare.health import Outcome
from lvscare.prober import Prober

HC = HealthCheck(timeout=0.4, readiness_interval=0.6, rise=2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, workdir: Path, *extra: str) -> None:
        self.port = free_port()
        self.fault = workdir / f"fault-{self.port}"
        self.counts = workdir / f"count-{self.port}"
        cert, key = workdir / "apiserver.crt", workdir / "apiserver.key"
        self.proc = subprocess.Popen(
            [sys.executable, H2BACKEND, "--listen", f"127.0.0.1:{self.port}", "--name", "be",
             "--cert", str(cert), "--key", str(key), "--fault-file", str(self.fault),
             "--count-file", str(self.counts), *extra], stdout=subprocess.PIPE)
        assert self.proc.stdout is not None and b"listening" in self.proc.stdout.readline()
        self.rs = Endpoint(ipaddress.ip_address("127.0.0.1"), self.port)

    def set(self, mode: str) -> None:
        self.fault.write_text(mode)

    def requests(self, path: str) -> int:
        with contextlib.suppress(FileNotFoundError):
            for line in self.counts.read_text().splitlines():
                p, n = line.split()
                if p == path:
                    return int(n)
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("h2")
    make_certificate(d)
    return d


@pytest.fixture
def server(workdir: Path) -> Iterator[Server]:
    s = Server(workdir)
    yield s
    s.stop()


async def probes(prober: Prober, rs: Endpoint, hc: HealthCheck, n: int, gap: float = 0.05) -> list[Outcome]:
    out = []
    for _ in range(n):
        out.append((await prober.probe(rs, hc)).outcome)
        await asyncio.sleep(gap)
    return out


async def test_ping_every_probe_readiness_every_readiness_interval(prober: Prober, server: Server) -> None:
    # A new connection proves readiness `rise` times in a row; after that only PINGs until the
    # readiness interval is over.
    assert await probes(prober, server.rs, HC, 2) == [Outcome.OK, Outcome.OK]
    assert server.requests("/readyz") == 2
    assert await probes(prober, server.rs, HC, 6) == [Outcome.OK] * 6  # ~0.35 s
    assert server.requests("/readyz") == 2
    await asyncio.sleep(0.4)
    assert await probes(prober, server.rs, HC, 3) == [Outcome.OK] * 3
    assert server.requests("/readyz") == 3
    assert server.requests("/healthz") == 0


async def test_the_connection_stands_between_probes(prober: Prober, server: Server) -> None:
    await prober.probe(server.rs, HC)
    first = prober.closed(server.rs)
    assert first is not None
    await probes(prober, server.rs, HC, 5)
    assert prober.closed(server.rs) is first


async def test_bad_readiness_is_asked_every_probe_until_it_passes(prober: Prober, server: Server) -> None:
    await probes(prober, server.rs, HC, 3)
    before = server.requests("/readyz")
    await asyncio.sleep(HC.readiness_interval)
    server.set("500")
    results = [await prober.probe(server.rs, HC) for _ in range(3)]
    assert [r.outcome for r in results] == [Outcome.HTTP_STATUS] * 3
    assert results[0].status == 500 and results[0].detail == "HTTP 500"
    assert server.requests("/readyz") == before + 3
    server.set("ok")
    assert await probes(prober, server.rs, HC, 4) == [Outcome.OK] * 4
    assert server.requests("/readyz") == before + 5  # then rise (2) in a row, then PINGs only


async def test_slow_readiness_is_slow_not_dead_and_not_asked_more_often(
        prober: Prober, server: Server) -> None:
    hc = replace(HC, readiness_interval=5.0)
    server.set("slow:1.0")
    first = await prober.probe(server.rs, hc)
    assert first.outcome is Outcome.SLOW
    assert "/readyz unanswered" in first.detail and "PINGs answered" in first.detail
    # PINGs answered, the one request still outstanding: slow, and no second request.
    assert await probes(prober, server.rs, hc, 8, gap=0.1) == [Outcome.SLOW] * 8
    assert server.requests("/readyz") == 1
    # The answer came (200 in 1 s): still slow, it was late.
    later = await prober.probe(server.rs, hc)
    assert later.outcome is Outcome.SLOW and "answered 200 in 1.0" in later.detail


async def test_handlers_that_never_answer_are_slow(prober: Prober, server: Server) -> None:
    server.set("hang")
    hc = replace(HC, readiness_interval=0.5)
    assert await probes(prober, server.rs, hc, 8, gap=0.1) == [Outcome.SLOW] * 8
    # The outstanding request is given up after the readiness interval and asked again.
    assert server.requests("/readyz") >= 2


async def test_unanswered_pings_time_out(prober: Prober, server: Server) -> None:
    await probes(prober, server.rs, HC, 2)
    os.kill(server.proc.pid, signal.SIGSTOP)  # alive, holding its sockets, answering nothing
    try:
        result = await prober.probe(server.rs, HC)
        assert result.outcome is Outcome.TIMEOUT and result.detail == "PING unanswered in 0.4s"
        assert (await prober.probe(server.rs, HC)).outcome is Outcome.TIMEOUT
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    assert await probes(prober, server.rs, HC, 2) == [Outcome.OK, Outcome.OK]


async def test_a_killed_server_is_noticed_at_once_and_refuses(prober: Prober, server: Server) -> None:
    await probes(prober, server.rs, HC, 2)
    closed = prober.closed(server.rs)
    assert closed is not None
    server.stop()
    await asyncio.wait_for(closed, 2)
    assert (await prober.probe(server.rs, HC)).outcome is Outcome.REFUSED


async def test_an_http1_server_is_probed_with_http1_logged_once(prober: Prober, workdir: Path) -> None:
    server = Server(workdir, "--http1-only")
    try:
        with structlog.testing.capture_logs() as logs:
            assert await probes(prober, server.rs, HC, 4) == [Outcome.OK] * 4
        assert [e["event"] for e in logs] == [
            "real server does not speak HTTP/2: probing it with HTTP/1.1 requests"]
        assert logs[0]["rs"] == str(server.rs) and logs[0]["alpn"] == "http/1.1"
        # Go lvscare's probe, unchanged: its path, one request per probe.
        assert server.requests("/healthz") == 4 and server.requests("/readyz") == 0
    finally:
        server.stop()


async def test_an_explicit_path_is_the_readiness_path(prober: Prober, server: Server) -> None:
    hc = replace(HC, path="/healthz")  # a Go lvscare command line's --health-path /healthz
    assert await probes(prober, server.rs, hc, 2) == [Outcome.OK] * 2
    assert server.requests("/healthz") == 2 and server.requests("/readyz") == 0


async def test_http1_protocol_is_todays_probe(prober: Prober, server: Server) -> None:
    hc = replace(HC, protocol="http1")
    assert await probes(prober, server.rs, hc, 5) == [Outcome.OK] * 5
    assert server.requests("/healthz") == 5 and server.requests("/readyz") == 0


async def test_slow_http1_is_a_timeout(prober: Prober, server: Server) -> None:
    # The contrast the HTTP/2 probe exists for: HTTP/1.1 cannot tell slow from dead.
    server.set("slow:1.0")
    result = await prober.probe(server.rs, replace(HC, protocol="http1"))
    assert result.outcome is Outcome.TIMEOUT


PROBE_ONCE = """
import asyncio, ipaddress, sys
from lvscare.config import Endpoint, HealthCheck
from lvscare.prober import Prober
async def main():
    p = Prober()
    await p.start()
    rs = Endpoint(ipaddress.ip_address("127.0.0.1"), int(sys.argv[1]))
    print((await p.probe(rs, HealthCheck())).outcome.value, "aiohttp" in sys.modules, "h2" in sys.modules)
    await p.close()
asyncio.run(main())
"""


def test_each_protocol_loads_only_its_own_client(server: Server, workdir: Path) -> None:
    """aiohttp is ~11 MB of the daemon's memory and h2 ~1 MB: against apiservers (HTTP/2) aiohttp
    is never loaded, against an HTTP/1.1-only server h2 is never loaded."""
    h2 = subprocess.run([sys.executable, "-c", PROBE_ONCE, str(server.port)], capture_output=True,
                        text=True, timeout=30)
    assert h2.stdout.split() == ["ok", "False", "True"], h2.stderr
    http1 = Server(workdir, "--http1-only")
    try:
        out = subprocess.run([sys.executable, "-c", PROBE_ONCE, str(http1.port)], capture_output=True,
                             text=True, timeout=30)
    finally:
        http1.stop()
    assert out.stdout.splitlines()[-1].split() == ["ok", "True", "False"], out.stderr  # after its log line
