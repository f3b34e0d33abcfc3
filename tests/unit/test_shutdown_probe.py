"""The probe against an apiserver stand-in that follows kube-apiserver's graceful shutdown and its
GOAWAYs (rig/lvscare_rig/apiserver.py), on loopback: a goodbye is not a failure, a server that
stops listening after one is shutting down (not dead), a killed one is refused, a sick one names
its failing check."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from lvscare_rig.topology import APISERVER, make_certificate

from lvscare.config import HealthCheck
from lvscare.health import Outcome
from lvscare.prober import Prober

from .test_h2_probe import Server

HC = HealthCheck(timeout=0.4, readiness_interval=0.6, rise=2)


class Apiserver(Server):
    def __init__(self, workdir: Path, *extra: str) -> None:
        super().__init__(workdir, *extra, program=APISERVER)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("apiserver")
    make_certificate(d)
    return d


async def outcomes(prober: Prober, server: Apiserver, n: int, gap: float = 0.1) -> list[Outcome]:
    out = []
    for _ in range(n):
        out.append((await prober.probe(server.rs, HC)).outcome)
        closed = prober.closed(server.rs, HC)
        if closed is not None:
            await asyncio.wait([closed], timeout=gap)  # the daemon probes at once when it closes
        else:
            await asyncio.sleep(gap)
    return out


async def test_a_goaway_with_every_answer_is_no_failure_and_no_new_proving(workdir: Path) -> None:
    """--goaway-chance at its extreme: every answer, readiness included, comes with a GOAWAY.
    The answers count, the probe reconnects without a failure, and a reconnection after a goodbye
    does not make readiness prove itself again (against a 5 s idle timeout that was 18-20
    requests a minute)."""
    server = Apiserver(workdir, "--goaway-chance", "1.0")
    prober = Prober()
    try:
        assert await outcomes(prober, server, 12) == [Outcome.OK] * 12  # ~1.3 s
        # rise (2) on the first connection, then one per readiness interval (0.6 s): not 12.
        assert server.requests("/readyz") <= 2 + 3, server.requests("/readyz")
    finally:
        await prober.close()
        server.stop()


async def test_a_server_that_stops_listening_after_its_goaway_is_shutting_down(
        workdir: Path) -> None:
    server = Apiserver(workdir, "--shutdown-delay", "0")
    prober = Prober()
    try:
        assert await outcomes(prober, server, 2) == [Outcome.OK] * 2
        closed = prober.closed(server.rs, HC)
        assert closed is not None
        server.proc.send_signal(signal.SIGTERM)  # kubeadm's default: the listener closes at once
        await asyncio.wait_for(closed, 2)
        result = await prober.probe(server.rs, HC)
        assert result.outcome is Outcome.SHUTDOWN, result
        assert "GOAWAY" in result.detail
        assert (await prober.probe(server.rs, HC)).outcome is Outcome.SHUTDOWN  # still refused
    finally:
        await prober.close()
        server.stop()


async def test_readiness_saying_shutdown_is_shutting_down_and_another_check_is_sick(
        workdir: Path) -> None:
    server = Apiserver(workdir, "--shutdown-delay", "5")
    prober = Prober()
    try:
        assert await outcomes(prober, server, 2) == [Outcome.OK] * 2
        server.fault.write_text("etcd")
        await asyncio.sleep(0.7)  # the next readiness request is due
        sick = await prober.probe(server.rs, HC)
        assert sick.outcome is Outcome.HTTP_STATUS and sick.detail == "HTTP 500: etcd failed"
        server.fault.write_text("ok")
        assert await outcomes(prober, server, 2) == [Outcome.OK] * 2
        server.proc.send_signal(signal.SIGTERM)
        seen = await outcomes(prober, server, 8)
        assert Outcome.SHUTDOWN in seen and not {o for o in seen if o.dead}, seen
    finally:
        await prober.close()
        server.stop()


async def test_a_killed_server_is_refused_not_shutting_down(workdir: Path) -> None:
    server = Apiserver(workdir)
    prober = Prober()
    try:
        assert await outcomes(prober, server, 2) == [Outcome.OK] * 2
        closed = prober.closed(server.rs, HC)
        server.stop()
        assert closed is not None
        await asyncio.wait_for(closed, 2)
        assert (await prober.probe(server.rs, HC)).outcome is Outcome.REFUSED
    finally:
        await prober.close()
        server.stop()
