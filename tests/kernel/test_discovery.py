"""Control-plane discovery in the real kernel: the backends are stand-in apiservers with real TLS
that ask for a client certificate and serve the ``kubernetes`` Endpoints object (through the VIP
too); the daemon reads it with a kubelet-style kubeconfig (CA, client certificate and key files)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator

import pytest
from lvscare_rig import topology
from lvscare_rig.cluster import Cluster

from .helpers import Care, wait, weights

VIP = "10.103.97.2"


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    lab = topology.build(backends=3, start=False)
    try:
        yield Cluster(lab)
    finally:
        lab.close()


def care(c: Cluster, *seeds: topology.Backend, kubeconfig: str | None = None, **kw: str) -> Care:
    args = ["--discover-from", kubeconfig or c.kubeconfig(), "--discover-interval", "1s",
            "--state-dir", str(c.dir / "state")]
    return Care(c.lab, *args, rs=[b.address for b in seeds])


def test_members_follow_the_endpoints_and_a_broken_answer_changes_nothing(cluster: Cluster) -> None:
    lab, (b1, b2, b3) = cluster.lab, cluster.lab.backends
    cluster.members(b1, b2, b3)
    daemon = care(cluster, b1, b2).start(wait_for=[b1.address, b2.address])
    try:
        began = time.monotonic()
        wait(lambda: weights(lab) == {b1.address: 1, b2.address: 1, b3.address: 1}, 15, daemon)
        print(f"\nmember added -> in the kernel table in {time.monotonic() - began:.2f}s "
              "(discovery interval 1s, rise 2)")
        (changed,) = daemon.events("control-plane members changed")
        assert changed["added"] == [b3.address] and changed["via"] == "server"
        # Read through the VIP with the kubelet's identity: the answer came over real TLS.
        cluster.members(b2, b3)
        began = time.monotonic()
        wait(lambda: b1.address not in weights(lab), 15, daemon)
        print(f"member removed -> gone from the kernel table in {time.monotonic() - began:.2f}s")
        # It still served: drained (no connection of its own through the VIP: at once), then out
        # of the configuration at the next round.
        (drained,) = daemon.events("control-plane members left while serving: drained until their "
                                   "connections end")
        assert drained["draining"] == [b1.address]
        wait(lambda: daemon.events("control-plane members changed")[-1]["removed"] == [b1.address], 5,
             daemon)
        state = json.loads((cluster.dir / "state" / f"members-{VIP}-6443.json").read_text())
        assert state["members"] == [b2.address, b3.address] and state["cluster"].startswith("ca:")
        for broken, reason in (({"kind": "Endpoints", "subsets": []}, "empty"), ("HTTP 403", "forbidden"),
                               ("{not json", "decode")):
            cluster.write(broken)
            wait(lambda r=reason: any(e["reason"] == r for e in daemon.events(
                "discovery failed: keeping the current real servers")), 20, daemon)
            end = time.monotonic() + 2
            while time.monotonic() < end:
                assert weights(lab) == {b2.address: 1, b3.address: 1}
                time.sleep(0.3)
        failed = daemon.events("discovery failed: keeping the current real servers")
        assert [e["reason"] for e in failed] == ["empty", "forbidden", "decode"]  # once per episode
        assert "Node authorizer" in str(failed[1]["hint"])
    finally:
        daemon.stop()


@pytest.mark.smoke
def test_an_unreachable_server_is_bypassed_through_the_members(cluster: Cluster) -> None:
    """The kubeconfig names a balancer that is down (here: a closed port on the node itself);
    a membership change is still found by asking a member directly, its certificate checked
    against the kubeconfig's CA and server name."""
    lab, (b1, b2, b3) = cluster.lab, cluster.lab.backends
    cluster.members(b1, b2)
    kubeconfig = cluster.kubeconfig(server="https://apiserver.cluster.local:6443")
    # apiserver.cluster.local resolves nowhere in the lab: the server is unreachable; the members'
    # certificates name it (SAN), as kubeadm's do for a controlPlaneEndpoint.
    daemon = care(cluster, b1, b2, kubeconfig=kubeconfig).start(wait_for=[b1.address, b2.address])
    try:
        cluster.members(b1, b2, b3)
        wait(lambda: b3.address in weights(lab), 20, daemon)
        wait(lambda: weights(lab) == {b.address: 1 for b in (b1, b2, b3)}, 10, daemon)
        (changed,) = daemon.events("control-plane members changed")
        assert changed["via"] in (b1.address, b2.address)  # a member, not the server
        assert not daemon.events("discovery failed: keeping the current real servers")
    finally:
        daemon.stop()


def test_a_state_file_is_used_at_once_and_one_of_another_cluster_is_ignored(cluster: Cluster) -> None:
    lab, (b1, b2, b3) = cluster.lab, cluster.lab.backends
    cluster.members(b1, b2, b3)
    first = care(cluster, b1).start(wait_for=[b1.address])
    try:
        wait(lambda: len(weights(lab)) == 3, 15, first)
        wait(lambda: (cluster.dir / "state" / f"members-{VIP}-6443.json").exists(), 10, first)
        assert first.signal(signal.SIGTERM) == 0
    finally:
        first.stop()
    cluster.write("HTTP 403")  # no answer to be had: only the state file can tell
    second = care(cluster, b1).spawn()
    try:
        # The first write already holds all three: the state file, before any answer.
        wait(lambda: second.events("started"), 30, second)
        assert second.events("members from the discovery state file")
        assert set(weights(lab)) == {b.address for b in (b1, b2, b3)}
    finally:
        second.stop()
    # The node was reset and joined another cluster: another CA, the same state dir.
    other_dir = cluster.dir / "other"
    other_dir.mkdir()
    other_ca, _ = topology.make_certificate(other_dir)
    lab.run("ipvsadm", "-C")
    third = care(cluster, b1, kubeconfig=cluster.kubeconfig(ca=other_ca)).start(wait_for=[b1.address])
    try:
        (ignored,) = third.events("discovery state file is of another cluster (its CA differs): ignored")
        assert ignored["server"] == f"https://{VIP}:6443"
        assert set(weights(lab)) == {b1.address}
    finally:
        third.stop()
