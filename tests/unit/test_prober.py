"""Probes against real servers on loopback: outcomes, TLS, and connection reuse."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from lvscare_rig.topology import make_certificate

from lvscare.config import Endpoint, HealthCheck
from lvscare.errors import UserError
from lvscare.health import Outcome
from lvscare.prober import Prober


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ep(port: int) -> Endpoint:
    return Endpoint(ipaddress.ip_address("127.0.0.1"), port)


class Server:
    def __init__(self) -> None:
        self.status = 200
        self.hang = False
        self.peers: set[object] = set()
        self.runner: web.AppRunner | None = None
        self.port = free_port()

    async def start(self, cert: tuple[Path, Path] | None) -> None:
        async def handler(request: web.Request) -> web.Response:
            self.peers.add(request.transport.get_extra_info("peername") if request.transport
                           else None)
            if self.hang:
                await asyncio.sleep(2)
            return web.Response(status=self.status, text="ok")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        ctx = None
        if cert:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(*cert)
        site = web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=ctx)
        await site.start()

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


@pytest.fixture
async def https(cert: tuple[Path, Path]) -> AsyncIterator[Server]:
    s = Server()
    await s.start(cert)
    yield s
    await s.stop()


HC = HealthCheck(timeout=0.5)


async def test_ok_and_status_codes(prober: Prober, https: Server) -> None:
    assert (await prober.probe(ep(https.port), HC)).outcome is Outcome.OK
    https.status = 500
    r = await prober.probe(ep(https.port), HC)
    assert r.outcome is Outcome.HTTP_STATUS and r.status == 500
    https.status = 401
    assert (await prober.probe(ep(https.port), HC)).outcome is Outcome.HTTP_STATUS
    allowed = HealthCheck(timeout=0.5, status=frozenset({401}))
    assert (await prober.probe(ep(https.port), allowed)).outcome is Outcome.OK


async def test_refused_and_timeout(prober: Prober, https: Server) -> None:
    assert (await prober.probe(ep(free_port()), HC)).outcome is Outcome.REFUSED
    https.hang = True
    r = await prober.probe(ep(https.port), HC)
    assert r.outcome is Outcome.TIMEOUT and 0.5 <= r.latency < 1.0


async def test_tls_handshake_that_never_completes_times_out(prober: Prober) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        r = await prober.probe(ep(listener.getsockname()[1]), HC)
        assert r.outcome is Outcome.TIMEOUT
    finally:
        listener.close()


async def test_certificate_verification(prober: Prober, https: Server,
                                        cert: tuple[Path, Path]) -> None:
    verify = HealthCheck(timeout=0.5, insecure_skip_verify=False)
    assert (await prober.probe(ep(https.port), verify)).outcome is Outcome.TLS
    with_ca = HealthCheck(timeout=0.5, insecure_skip_verify=False, ca=str(cert[0]))
    # The certificate names 10.103.97.2 and "kubernetes", not 127.0.0.1.
    assert (await prober.probe(ep(https.port), with_ca)).outcome is Outcome.TLS


async def test_giving_a_ca_verifies_and_a_matching_one_is_accepted(
        prober: Prober, tmp_path: Path) -> None:
    """--health-ca turns verification on (even with insecure-skip-verify, Go's default, still
    true): a server whose certificate that CA did not sign fails, one it signed passes."""
    import subprocess

    def issue(name: str) -> tuple[Path, Path]:
        crt, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                        str(crt), "-days", "2", "-subj", f"/CN={name}",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
        return crt, key

    good, other = issue("apiserver"), issue("impostor")
    server = Server()
    await server.start(good)
    try:
        trusting = HealthCheck(timeout=0.5, ca=str(good[0]))
        assert trusting.insecure_skip_verify  # the default, overridden by the CA
        assert (await prober.probe(ep(server.port), trusting)).outcome is Outcome.OK
        wrong = HealthCheck(timeout=0.5, ca=str(other[0]))
        assert (await prober.probe(ep(server.port), wrong)).outcome is Outcome.TLS
    finally:
        await server.stop()


def test_bad_certificate_files_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nonexistent"):
        Prober().prepare(HealthCheck(ca=str(tmp_path / "nonexistent.crt")))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(UserError):
        Prober().prepare(HealthCheck(cert=str(junk), key=str(junk)))


async def test_probes_reuse_one_connection_without_hiding_a_dead_server(
        prober: Prober, https: Server, cert: tuple[Path, Path]) -> None:
    for _ in range(10):
        assert (await prober.probe(ep(https.port), HC)).outcome is Outcome.OK
    assert len(https.peers) == 1  # one connection, one TLS handshake, for ten probes
    await https.stop()
    r = await prober.probe(ep(https.port), HC)
    assert r.outcome in (Outcome.REFUSED, Outcome.RESET)
    restarted = Server()
    restarted.port = https.port
    await restarted.start(cert)
    try:
        assert (await prober.probe(ep(https.port), HC)).outcome is Outcome.OK
    finally:
        await restarted.stop()
    https.runner = None
    https.stop = lambda: asyncio.sleep(0)  # type: ignore[method-assign]


async def test_server_closing_the_probe_connection_is_noticed_at_once(
        prober: Prober, https: Server) -> None:
    assert (await prober.probe(ep(https.port), HC)).outcome is Outcome.OK
    closed = prober.closed(ep(https.port), HC)
    assert closed is not None and not closed.done()
    await https.stop()
    await asyncio.wait([closed], timeout=2)
    assert closed.done()
    https.stop = lambda: asyncio.sleep(0)  # type: ignore[method-assign]


async def test_tcp_mode(prober: Prober, https: Server) -> None:
    tcp = HealthCheck(type="tcp", timeout=0.5)
    assert (await prober.probe(ep(https.port), tcp)).outcome is Outcome.OK
    assert (await prober.probe(ep(free_port()), tcp)).outcome is Outcome.REFUSED
