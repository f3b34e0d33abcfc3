"""The HTTP/2 probe in the real kernel, against hypercorn backends that speak h2 as kube-apiserver
does: a brown-out ejects nothing, a blackhole still ejects, a failing /readyz drains, a killed
server leaves at once; and the HTTP/1.1 probe's ejections in the same brown-out, for contrast."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from lvscare_rig import topology
from lvscare_rig.topology import Lab

from .helpers import Care, wait, weights

VIP = "10.103.97.2"
# Seconds with two of three apiservers answering /readyz in 1.5 s, and how often readiness is
# asked (while slow, once an interval): twelve late answers each, as a minute at the default 5 s.
BROWN_OUT = 30.0
READINESS = 2.5
SLOW = "slow:1.5"


@pytest.fixture
def h2lab() -> Iterator[Lab]:
    lab = topology.build(backends=3, server="h2")
    yield lab
    lab.close()


def observe(lab: Lab, seconds: float, care: Care) -> list[dict[str, int]]:
    """The kernel's weights every 0.5 s for ``seconds`` (bounded by time)."""
    samples, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        samples.append(weights(lab))
        assert care.proc is not None and care.proc.poll() is None, "the daemon died"
        time.sleep(0.5)
    return samples


def test_brown_out_ejects_nothing_and_a_blackhole_still_ejects(h2lab: Lab) -> None:
    lab = h2lab
    care = Care(lab, "--readiness-interval", f"{READINESS * 1000:.0f}ms").start()
    try:
        wait(lambda: all(b.requests().get("/readyz", 0) >= 2 for b in lab.backends), 10, care)
        assert all(b.requests().get("/healthz", 0) == 0 for b in lab.backends)  # HTTP/2 it is
        slow = lab.backends[:2]
        for b in slow:
            b.set_fault(SLOW)
        readyz_before = {b.name: b.requests().get("/readyz", 0) for b in lab.backends}
        samples = observe(lab, BROWN_OUT, care)
        everyone = {b.address: 1 for b in lab.backends}
        assert all(s == everyone for s in samples), [s for s in samples if s != everyone][:3]
        assert not care.events("real server down") and not care.events("real server failing")
        marked = {str(e["rs"]) for e in care.events("real server slow: kept, it answers PINGs")}
        assert marked == {b.address for b in slow}
        answers = lab.requests(VIP, count=12, timeout=5)
        assert answers["errors"] == [] and set(answers["answers"]) == {  # type: ignore[arg-type]
            b.name for b in lab.backends}
        # Readiness once a readiness interval while slow (12 in the brown-out), not every interval.
        for b in lab.backends:
            asked = b.requests().get("/readyz", 0) - readyz_before[b.name]
            assert asked <= BROWN_OUT / READINESS + 3, (b.name, asked)

        # Now one of the slow ones stops answering anything: its PINGs go unanswered.
        began = lab.blackhole(slow[0])
        wait(lambda: slow[0].address not in weights(lab), 15, care)
        print(f"\nblackholed slow backend ejected {time.monotonic() - began:.2f}s after the fault")
        (down,) = care.events("real server down")
        assert down["rs"] == slow[0].address and down["probe"] == "timeout"
        (failing,) = care.events("real server failing")
        assert failing["rs"] == slow[0].address and "PING unanswered" in str(failing["reason"])
        assert weights(lab) == {b.address: 1 for b in lab.backends[1:]}
    finally:
        care.stop()


def test_the_http1_probe_ejects_in_the_same_brown_out(h2lab: Lab) -> None:
    """The contrast: HTTP/1.1 cannot tell slow from dead. Shorter than the HTTP/2 run: the
    ejections come within seconds, and an ejected slow server never passes again."""
    lab = h2lab
    care = Care(lab, "--health-protocol", "http1").start()
    try:
        for b in lab.backends[:2]:
            b.set_fault(SLOW)
        samples = observe(lab, 10, care)
        downs = care.events("real server down")
        print(f"\nHTTP/1.1 probe, 10 s of brown-out: {len(downs)} ejections, "
              f"{sum(1 for s in samples if len(s) < 3)}/{len(samples)} samples with a server out")
        assert {str(e["rs"]) for e in downs} == {b.address for b in lab.backends[:2]}
        assert all(e["probe"] == "timeout" for e in downs)
    finally:
        care.stop()


def test_a_failing_readyz_drains_then_deletes_while_pings_answer(h2lab: Lab) -> None:
    lab = h2lab
    care = Care(lab, "--drain-period", "2s").start()
    try:
        b = lab.backends[0]
        b.set_fault("500")  # graceful shutdown: /readyz fails, the connection stays up
        wait(lambda: weights(lab).get(b.address) == 0, 15, care)
        assert care.events("real server down")[-1]["probe"] == "http_status"
        wait(lambda: b.address not in weights(lab), 10, care)
        b.set_fault("ok")
        wait(lambda: weights(lab).get(b.address) == 1, 10, care)
    finally:
        care.stop()


@pytest.mark.smoke
def test_a_killed_h2_server_leaves_at_once(h2lab: Lab) -> None:
    lab = h2lab
    care = Care(lab).start()
    try:
        b = lab.backends[1]
        time.sleep(2)  # the connections stand
        lab.kill(b)
        began = time.monotonic()
        wait(lambda: b.address not in weights(lab), 10, care)
        print(f"\nkilled backend ejected in {time.monotonic() - began:.2f}s")
        assert care.events("real server down")[-1]["probe"] in ("refused", "reset")
        lab.start(b)
        wait(lambda: weights(lab).get(b.address) == 1, 10, care)
    finally:
        care.stop()
