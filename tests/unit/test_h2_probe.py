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
    def __init__(self, workdir: Path, *extra: str, program: str = H2BACKEND) -> None:
        self.port = free_port()
        self.fault = workdir / f"fault-{self.port}"
        self.counts = workdir / f"count-{self.port}"
        cert, key = workdir / "apiserver.crt", workdir / "apiserver.key"
        self.proc = subprocess.Popen(
            [sys.executable, program, "--listen", f"127.0.0.1:{self.port}", "--name", "be",
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
    first = prober.closed(server.rs, HC)
    assert first is not None
    await probes(prober, server.rs, HC, 5)
    assert prober.closed(server.rs, HC) is first


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
    closed = prober.closed(server.rs, HC)
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


def _client_connections(port: int) -> int:
    """Established TCP connections of this host to ``port`` on loopback (the client side)."""
    n = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].split(":")[1], 16) == port and fields[3] == "01":
            n += 1
    return n


async def test_two_virtual_servers_sharing_a_member_keep_their_checks_apart(
        prober: Prober, server: Server) -> None:
    """With discovery, every virtual server of a family has the same members. Probes of one
    apiserver under two checks (here: two readiness paths) never mix, and probes under one check
    at the same moment share one connection instead of racing to open two (one leaked)."""
    livez = replace(HC, path="/livez")
    for _ in range(3):
        results = await asyncio.gather(*(prober.probe(server.rs, hc)
                                         for hc in (HC, HC, livez, livez)))
        assert [r.outcome for r in results] == [Outcome.OK] * 4
        await asyncio.sleep(0.05)
    assert server.requests("/readyz") >= 2 and server.requests("/livez") >= 2
    assert _client_connections(server.port) == 2  # one per check, none leaked
    await prober.close()
    await asyncio.sleep(0.1)
    assert _client_connections(server.port) == 0


async def test_a_member_that_is_gone_is_forgotten_with_its_connection(
        prober: Prober, server: Server) -> None:
    assert (await prober.probe(server.rs, HC)).outcome is Outcome.OK
    assert _client_connections(server.port) == 1
    prober.retain([(server.rs, replace(HC, path="/livez"))])  # another check: not this one
    await asyncio.sleep(0.1)
    assert _client_connections(server.port) == 0 and prober.closed(server.rs, HC) is None


async def test_an_http1_server_failing_its_check_is_not_asked_for_http2_again(
        prober: Prober, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad status is an answer of a live HTTP/1.1 server: no new ALPN handshake on every
    other probe, no repeated log line. A dead one is asked again (it may come back upgraded)."""
    from lvscare import prober as prober_module

    opened = []
    real_open = prober_module._open_h2

    async def counting(*args: object) -> object:
        opened.append(args)
        return await real_open(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(prober_module, "_open_h2", counting)
    server = Server(workdir, "--http1-only")
    try:
        server.set("500")
        with structlog.testing.capture_logs() as logs:
            assert await probes(prober, server.rs, HC, 6) == [Outcome.HTTP_STATUS] * 6
        assert len(opened) == 1
        assert [e["event"] for e in logs] == [
            "real server does not speak HTTP/2: probing it with HTTP/1.1 requests"]
        server.stop()
        assert (await prober.probe(server.rs, HC)).outcome is Outcome.REFUSED
        assert (await prober.probe(server.rs, HC)).outcome is Outcome.REFUSED
        assert len(opened) == 2  # asked for h2 again once it was dead
    finally:
        server.stop()


class MalformedStatusServer:
    """An HTTP/2 server that answers every request with ``:status: 2x0`` (h2 validates nothing it
    is told not to): what a broken proxy or server could send."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> MalformedStatusServer:
        import ssl

        import h2.config
        import h2.connection
        import h2.events

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.workdir / "apiserver.crt", self.workdir / "apiserver.key")
        ctx.set_alpn_protocols(["h2"])

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = h2.connection.H2Connection(h2.config.H2Configuration(
                client_side=False, validate_outbound_headers=False,
                normalize_outbound_headers=False))
            conn.initiate_connection()
            writer.write(conn.data_to_send())
            with contextlib.suppress(Exception):
                while data := await reader.read(65536):
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.RequestReceived):
                            conn.send_headers(event.stream_id, [(":status", "2x0")],
                                              end_stream=True)
                    writer.write(conn.data_to_send())
            writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self


async def test_a_malformed_status_is_a_failed_probe_with_a_reason(
        prober: Prober, workdir: Path) -> None:
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    server = await MalformedStatusServer(workdir).start()
    rs = Endpoint(ipaddress.ip_address("127.0.0.1"), server.port)
    try:
        result = await prober.probe(rs, HC)
        # Broken, not dead: an error (it takes `fall` of them), never "slow … PINGs answered".
        assert result.outcome is Outcome.ERROR
        assert "malformed :status" in result.detail
        assert prober.closed(rs, HC) is None  # the connection ended, its future completed
        await prober.close()
        await asyncio.sleep(0.05)
        import gc

        gc.collect()
        assert unhandled == []  # no "Task exception was never retrieved"
    finally:
        assert server.server is not None
        server.server.close()
