"""An apiserver's graceful shutdown costs its clients nothing, in the real kernel: stand-ins that
follow kube-apiserver's lifecycle and GOAWAYs (rig/lvscare_rig/apiserver.py), long requests and
the kernel's own table read independently (ipvsadm)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from lvscare_rig import topology
from lvscare_rig.topology import Backend, Lab

from .helpers import Care, wait, weights

VIP = "10.103.97.2"


def apiservers(*args: str) -> Lab:
    lab = topology.build(backends=3, server="apiserver", start=False)
    lab.backend_args = list(args)
    for b in lab.backends:
        lab.start(b)
    return lab


@pytest.fixture
def lab0() -> Iterator[Lab]:
    """kubeadm's default: --shutdown-delay-duration 0."""
    lab = apiservers("--shutdown-delay", "0")
    yield lab
    lab.close()


def long_requests(lab: Lab, n: int, seconds: float) -> list[subprocess.Popen[str]]:
    """``n`` requests through the VIP that take ``seconds`` each (HTTP/2, new connections): the
    scheduler spreads them over the real servers."""
    procs = [subprocess.Popen(lab.node_cmd("curl", "-sk", "--http2", "-w", " %{http_code}",
                                           "--max-time", "60",
                                           f"https://{VIP}:6443/sleep/{seconds:g}"),
                              stdout=subprocess.PIPE, text=True) for _ in range(n)]
    return procs


def outcomes(procs: list[subprocess.Popen[str]]) -> list[str]:
    """Per request, "<backend> <status>" ("000" when it failed)."""
    return [p.communicate(timeout=90)[0].strip() or f"exit {p.returncode}" for p in procs]


def sigterm(backend: Backend) -> None:
    assert backend.proc is not None
    backend.proc.send_signal(signal.SIGTERM)


@pytest.mark.smoke
def test_an_apiserver_that_stops_listening_lets_its_requests_finish(lab0: Lab) -> None:
    """SIGTERM with no shutdown delay: the listener closes at once and the connections get a
    GOAWAY, while the requests in flight are still served. They all finish; the real server is
    held at weight 0 meanwhile (no new connections), its clients are never reset, and it leaves
    the table once the kernel counts none of its connections."""
    lab = lab0
    b1 = lab.backends[0]
    care = Care(lab).start()
    try:
        procs = long_requests(lab, 9, 6)
        time.sleep(1.5)  # all established, three on each
        began = time.monotonic()
        sigterm(b1)
        wait(lambda: weights(lab).get(b1.address) == 0, 3, care)
        held = time.monotonic()
        while time.monotonic() - began < 3.5:  # the requests still run
            assert weights(lab).get(b1.address) == 0
            time.sleep(0.2)
        results = outcomes(procs)
        assert all(r.endswith(" 200") for r in results), results
        assert sum(r.startswith(b1.name) for r in results) >= 1  # some were on the stopping one
        wait(lambda: b1.address not in weights(lab), 10, care)
        print(f"\nweight 0 {held - began:.2f}s after SIGTERM; {len(results)} long requests, "
              "all answered; out once its connections ended")
        assert not [e for e in care.events("clients nudged") if e["rs"] == b1.address]
        down = [e for e in care.events("real server down") if e["rs"] == b1.address]
        assert down and down[0]["probe"] == "shutdown", down
    finally:
        care.stop()


def test_a_killed_apiserver_is_still_out_at_once(lab0: Lab) -> None:
    lab = lab0
    b2 = lab.backends[1]
    care = Care(lab).start()
    try:
        began = time.monotonic()
        lab.kill(b2)
        wait(lambda: b2.address not in weights(lab), 2, care)
        print(f"\nkilled -> out in {time.monotonic() - began:.2f}s")
        assert [e["probe"] for e in care.events("real server down") if e["rs"] == b2.address] \
            in (["refused"], ["reset"])
    finally:
        care.stop()


def test_goaways_on_ordinary_answers_never_eject_anyone() -> None:
    """kube-apiserver's --goaway-chance (0.02 at most) sends GOAWAY(NO_ERROR) with ordinary
    answers, readiness included; here with every second answer, for 20 s."""
    lab = apiservers("--goaway-chance", "0.5")
    care = Care(lab).start()
    try:
        want = {b.address: 1 for b in lab.backends}
        end = time.monotonic() + 20
        while time.monotonic() < end:
            assert weights(lab) == want
            time.sleep(0.5)
        assert care.events("real server down") == [] and care.events("real server failing") == []
        assert all(r.endswith(" 200") for r in outcomes(long_requests(lab, 3, 0)))
    finally:
        care.stop()
        lab.close()


def test_a_restarted_lvscare_keeps_a_draining_apiserver_draining() -> None:
    """An apiserver in its shutdown delay (readiness says shutdown, it still serves) is held at
    weight 0. A daemon restarted meanwhile adopts that and does not delete it before its first
    probe: the requests on it finish."""
    lab = apiservers("--shutdown-delay", "30")
    b1 = lab.backends[0]
    care = Care(lab, "--readiness-interval", "1s").start()
    try:
        procs = long_requests(lab, 9, 12)
        time.sleep(1.5)
        sigterm(b1)
        wait(lambda: weights(lab).get(b1.address) == 0, 5, care)
        care.stop()  # SIGKILL: the rules stay
        again = Care(lab, "--readiness-interval", "1s").start(
            wait_for=[b.address for b in lab.backends[1:]])
        try:
            wait(lambda: again.events("adopted existing rules"), 10, again)
            for _ in range(10):
                assert weights(lab).get(b1.address) == 0
                time.sleep(0.3)
            results = outcomes(procs)
            assert all(r.endswith(" 200") for r in results), results
            assert sum(r.startswith(b1.name) for r in results) >= 1
            assert not [e for e in again.events("clients nudged") if e["rs"] == b1.address]
        finally:
            again.stop()
    finally:
        care.stop()
        lab.close()


def test_a_sick_apiserver_is_still_drained_then_removed() -> None:
    """Alive but sick (its readiness names a failing check other than shutdown, e.g. lost etcd):
    pushed off after --drain-period, connections or not, as before."""
    lab = apiservers()
    b3 = lab.backends[2]
    care = Care(lab, "--drain-period", "3s", "--readiness-interval", "1s").start()
    try:
        procs = long_requests(lab, 9, 20)
        time.sleep(1.5)
        b3.set_fault("etcd")
        wait(lambda: weights(lab).get(b3.address) == 0, 5, care)
        began = time.monotonic()
        wait(lambda: b3.address not in weights(lab), 6, care)
        assert time.monotonic() - began >= 1.5
        down = [e for e in care.events("real server down") if e["rs"] == b3.address]
        assert down and down[0]["reason"] == "HTTP 500: etcd failed"
        for p in procs:
            p.kill()
    finally:
        care.stop()
        lab.close()
