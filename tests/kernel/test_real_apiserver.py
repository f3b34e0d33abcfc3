"""Against the real control plane: etcd and three kube-apiservers (1.20, built from Debian's source
package by scripts/control-plane) in the lab's namespaces, with Node and RBAC authorization and the
lease endpoint reconciler. lvscare starts from one seed and finds the others in the real
``kubernetes`` Endpoints through the VIP with a kubelet's identity.

One control plane serves the module (about 50 s to start in the test kernel); each test leaves
every apiserver running and ready, as it found them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from lvscare_rig import realplane, topology
from lvscare_rig.realplane import ControlPlane

from .helpers import Care, wait, weights

VIP = "10.103.97.2"
pytestmark = pytest.mark.needs("control-plane")
CLAIM_WHOLE_MODULE = True  # one control plane for the module, in one kernel (lvscare_rig.claim)
FAIL_OPEN = "all real servers down: keeping the last healthy ones (fail-open)"

# Through the VIP for a time: new connections (GET /version each) at a rate, and 6 keep-alive
# connections asking every 200 ms as long-lived clients do. A keep-alive connection that has
# answered and that the server then closes (EOF, with or without TLS close_notify: Go's server
# closes idle connections at shutdown, and a request may cross that close) is opened again and the
# GET asked again, as client-go does for an idempotent request on a reused connection; the same
# on a connection that never answered is a failure, and a reset is counted apart. It prints
# "ready" after its first answer, then, at the end, one JSON line with the (monotonic) times of the
# new connections that were answered: how fast it asks depends on how busy the kernel is.
LOAD = """
import http.client, json, ssl, sys, threading, time
rate, seconds = float(sys.argv[2]), float(sys.argv[3])
ctx = ssl.create_default_context(cafile=sys.argv[1])
ok, failed, resets, closed, end = [], [], [], 0, time.monotonic() + seconds
lock = threading.Lock()
EOF = (http.client.RemoteDisconnected, BrokenPipeError, http.client.CannotSendRequest,
       ssl.SSLEOFError, ssl.SSLZeroReturnError)
def conn():
    return http.client.HTTPSConnection("10.103.97.2", 6443, context=ctx, timeout=5)
def keep():
    global closed
    c, answered = conn(), 0
    while time.monotonic() < end:
        try:
            c.request("GET", "/version"); c.getresponse().read()
            answered += 1
        except EOF as exc:
            if answered:
                with lock: closed += 1
            else:
                with lock: failed.append(f"keep-alive, first request {exc!r}"[:160])
            c.close(); c, answered = conn(), 0
        except ConnectionResetError as exc:
            with lock: resets.append(repr(exc)[:120])
            c, answered = conn(), 0
        except Exception as exc:
            with lock: failed.append(f"keep-alive {exc!r}"[:160])
            c.close(); c, answered = conn(), 0
        time.sleep(0.2)
threads = [threading.Thread(target=keep) for _ in range(6)]
for t in threads: t.start()
while time.monotonic() < end:
    t = time.monotonic()
    try:
        c = conn()
        c.request("GET", "/version"); r = c.getresponse(); r.read(); c.close()
        if r.status != 200:
            raise OSError(f"HTTP {r.status}")
        ok.append(time.monotonic())
        if len(ok) == 1:
            print("ready", flush=True)
    except Exception as exc:
        failed.append(f"{time.monotonic() - end + seconds:.2f}s {exc!r}"[:160])
    time.sleep(max(0.0, 1 / rate - (time.monotonic() - t)))
for t in threads: t.join()
print(json.dumps({"ok": ok, "failed": failed, "resets": resets, "closed": closed}))
"""


@pytest.fixture(scope="module")
def plane() -> Iterator[ControlPlane]:
    lab = topology.build(backends=3, start=False)
    try:
        began = time.monotonic()
        cp = realplane.build(lab, shutdown_delay=5)
        print(f"\ncontrol plane ready in {time.monotonic() - began:.1f} s")
        yield cp
        cp.close()
    finally:
        lab.close()


def care(cp: ControlPlane, *args: str, kubeconfig: str | None = None, state: str | None = None) -> Care:
    b1 = cp.lab.backends[0]
    return Care(cp.lab, "--discover-from", kubeconfig or cp.kubeconfig("node"), "--discover-interval", "1s",
                "--state-dir", state or str(cp.dir / f"state-{time.monotonic_ns()}"),
                "--health-path", "/readyz", *args, rs=[b1.address])


def restore(cp: ControlPlane, b: topology.Backend) -> None:
    """``b``'s apiserver running and ready again, whatever the test left."""
    if b.name in cp.procs and cp.procs[b.name].poll() is None and cp.ready(b):
        return
    cp.stop(b, signal.SIGKILL)
    cp.start(b)
    cp.wait_ready(b)


def everyone(cp: ControlPlane) -> dict[str, int]:
    return {b.address: 1 for b in cp.lab.backends}


def test_one_seed_finds_the_others_in_the_real_endpoints_without_fail_open(plane: ControlPlane) -> None:
    """From one seed, through the VIP, with the Node authorizer, started as soon as the apiservers
    are ready: every apiserver found and in the table, never on fail-open on the way, and the
    seed never cut. The lease reconciler publishes members one at a time at start, and the
    Endpoints may leave out the seed for a few seconds after every apiserver is ready (seen here:
    two of three listed for 6 s): the seed is then drained like any member that leaves while
    serving, weight 0 with its clients left alone, and back once it is listed again."""
    daemon = care(plane).start(wait_for=[plane.lab.backends[0].address])
    try:
        wait(lambda: weights(plane.lab) == everyone(plane), 30, daemon)
        changes = daemon.events("control-plane members changed")
        print("\nthe Endpoints as lvscare read them: " + "; ".join(
            f"{e['members']} (added {e['added']}, removed {e['removed']})" for e in changes))
        assert daemon.events(FAIL_OPEN) == []
        drained = {a for e in daemon.events("control-plane members left while serving: drained until "
                                            "their connections end") for a in e["draining"]}
        removed = {r for e in changes for r in e["removed"]}
        assert removed <= drained  # a member that left was drained first, never cut
        assert daemon.events("clients nudged") == []
    finally:
        daemon.stop()


@pytest.mark.smoke(quick=False)
def test_kubectl_through_the_vip_survives_a_killed_apiserver(plane: ControlPlane) -> None:
    """client-go (Debian's kubectl 1.20) through the VIP: an apiserver SIGKILLed is out of the table
    within the HTTP/2 probe's bounds, and kubectl keeps working, as does the next start."""
    daemon = care(plane).start(wait_for=[b.address for b in plane.lab.backends])
    victim = plane.lab.backends[2]
    try:
        wait(lambda: weights(plane.lab) == everyone(plane), 30, daemon)
        assert plane.kubectl("get", "--raw", "/version").returncode == 0
        began = time.monotonic()
        plane.stop(victim, signal.SIGKILL)
        wait(lambda: victim.address not in weights(plane.lab), 10, daemon)
        print(f"\nSIGKILLed apiserver out of the table in {time.monotonic() - began:.2f} s")
        for _ in range(10):
            got = plane.kubectl("get", "namespaces", "-o", "name")
            assert got.returncode == 0 and "namespace/default" in got.stdout, got.stderr
        plane.start(victim)
        plane.wait_ready(victim)
        wait(lambda: weights(plane.lab) == everyone(plane), 60, daemon)
    finally:
        daemon.stop()
        restore(plane, victim)


def test_a_graceful_shutdown_drains_the_departing_member_and_costs_nothing(plane: ControlPlane) -> None:
    """SIGTERM with --shutdown-delay-duration 5s: the apiserver leaves the Endpoints at once and
    serves through the delay. lvscare drains it (weight 0, no client reset) instead of cutting it,
    and a client opening a new connection through the VIP 20 times a second sees no failure."""
    daemon = care(plane).start(wait_for=[b.address for b in plane.lab.backends])
    victim = plane.lab.backends[1]
    try:
        wait(lambda: weights(plane.lab) == everyone(plane), 30, daemon)
        load = subprocess.Popen(plane.lab.node_cmd(sys.executable, "-c", LOAD, str(plane.dir / "ca.crt"),
                                                   "20", "18"), stdout=subprocess.PIPE, text=True)
        assert load.stdout is not None and load.stdout.readline().strip() == "ready"
        time.sleep(2)
        term = time.monotonic()
        plane.stop(victim, signal.SIGTERM, wait=False)
        out, _ = load.communicate(timeout=60)
        result = json.loads(out)
        # The two moments a client could be hurt: the delay (it left the Endpoints but serves) and
        # its listener's close at the delay's end; the load must have asked all through both.
        during = [t for t in result["ok"] if term <= t < term + 5]
        after = [t for t in result["ok"] if t >= term + 5]
        print(f"\nSIGTERM, shutdown delay 5 s: {len(result['failed'])} of "
              f"{len(result['ok']) + len(result['failed'])} new connections failed {result['failed']} "
              f"({len(during)} answered during the delay, {len(after)} after it); "
              f"keep-alive connections reset {len(result['resets'])}, closed by the server "
              f"{result['closed']}")
        print("what lvscare said of it:\n" + "\n".join(
            json.dumps(e) for e in daemon.events() if victim.address in json.dumps(e)))
        assert result["failed"] == []
        assert len(during) >= 10 and len(after) >= 10, "the load must span the delay and the close"
        assert result["resets"] == []  # its clients were left to finish, not reset
        # Both say at SIGTERM, and either may reach lvscare first: the Endpoints without it (a
        # member that left while serving) or its /readyz failing on shutdown. Both are drains.
        left = [e for e in daemon.events("control-plane members left while serving: drained until "
                                         "their connections end") if victim.address in e["draining"]]
        down = [e["probe"] for e in daemon.events("real server down") if e["rs"] == victim.address]
        assert left or down == ["shutdown"], "drained: left the members, or shutting down"
        assert set(down) <= {"shutdown"}, "never taken for a failure"
        assert victim.address not in weights(plane.lab)
        assert [e for e in daemon.events("clients nudged") if e["rs"] == victim.address] == []
    finally:
        daemon.stop()
        restore(plane, victim)


def test_a_blackholed_apiserver_is_out_and_back(plane: ControlPlane) -> None:
    """Powered off behind a switch (every packet dropped, the link up): out within the HTTP/2
    probe's timeout bounds, back after rise good probes once its packets flow."""
    daemon = care(plane).start(wait_for=[b.address for b in plane.lab.backends])
    victim = plane.lab.backends[2]
    try:
        wait(lambda: weights(plane.lab) == everyone(plane), 30, daemon)
        began = plane.lab.blackhole(victim)
        wait(lambda: victim.address not in weights(plane.lab), 10, daemon)
        print(f"\nblackholed apiserver out of the table in {time.monotonic() - began:.2f} s")
        assert plane.kubectl("get", "--raw", "/readyz").returncode == 0
        plane.lab.blackhole(victim, on=False)
        wait(lambda: weights(plane.lab) == everyone(plane), 30, daemon)
    finally:
        daemon.stop()
        restore(plane, victim)


def test_members_follow_apiservers_that_stop_and_start(plane: ControlPlane) -> None:
    """The lease reconciler's own Endpoints: an apiserver stopped leaves them (drained, then out of
    the table); started again, it publishes itself and is in after rise good probes. A restarted
    lvscare with the same state directory starts from every member, before its first answer."""
    state = str(plane.dir / f"state-{time.monotonic_ns()}")
    # An earlier test's lvscare leaves its rules (as it does on a node): without them, "every
    # member in the table" below means this lvscare found and put them there.
    plane.lab.run("ipvsadm", "-C")
    daemon = care(plane, state=state).start(wait_for=[plane.lab.backends[0].address])
    leaver = plane.lab.backends[2]
    try:
        wait(lambda: weights(plane.lab) == everyone(plane), 60, daemon)
        plane.stop(leaver, signal.SIGTERM)
        wait(lambda: leaver.address not in weights(plane.lab), 30, daemon)
        wait(lambda: any(leaver.address in e["removed"]
                         for e in daemon.events("control-plane members changed")), 10, daemon)
        began = time.monotonic()
        plane.start(leaver)
        wait(lambda: weights(plane.lab) == everyone(plane), 120, daemon)
        print(f"\nrestarted apiserver back in the table {time.monotonic() - began:.1f} s after its start")
        assert daemon.events(FAIL_OPEN) == []
    finally:
        daemon.stop()
        restore(plane, leaver)
    # A new lvscare, the one seed, the same state directory: every member from the file at once.
    plane.lab.run("ipvsadm", "-C")
    again = care(plane, state=state).start(wait_for=[b.address for b in plane.lab.backends])
    try:
        (used,) = again.events("members from the discovery state file")
        assert sorted(used["members"]) == sorted(b.address for b in plane.lab.backends)  # type: ignore[arg-type]
    finally:
        again.stop()


def test_an_unreachable_kubeconfig_server_is_bypassed_through_the_real_members(plane: ControlPlane) -> None:
    """The kubeconfig names a control-plane endpoint that resolves nowhere here: the members are
    asked directly, each real serving certificate checked against the CA and that name."""
    kubeconfig = plane.kubeconfig("node", server="https://apiserver.cluster.local:6443")
    daemon = care(plane, kubeconfig=kubeconfig).start(wait_for=[plane.lab.backends[0].address])
    try:
        wait(lambda: weights(plane.lab) == everyone(plane), 60, daemon)
        vias = {e["via"] for e in daemon.events("control-plane members changed")}
        assert vias and "server" not in vias, vias
    finally:
        daemon.stop()


def test_goaway_chance_ejects_no_one_over_hundreds_of_readiness_answers(plane: ControlPlane) -> None:
    """Every apiserver restarted with --goaway-chance=0.02 (the most it allows): any HTTP/2 answer,
    readiness included, may end its connection with a GOAWAY. Over 450 readiness answers (3
    apiservers, every 100 ms for 15 s: the count of 150 s at one a second, at ten times the rate),
    no real server leaves the table and none changes state; the probes' new TCP connections,
    counted by the node's firewall, show the GOAWAYs happened. Last in the module: the apiservers
    keep the flag."""
    plane.extra.append("--goaway-chance=0.02")
    for b in plane.lab.backends:
        plane.stop(b, signal.SIGKILL)
        plane.start(b)
    plane.wait_ready(*plane.lab.backends)
    for b in plane.lab.backends:
        plane.lab.run("iptables-legacy", "-w", "5", "-I", "OUTPUT", "-p", "tcp", "--syn", "-d", b.ip4,
                      "--dport", "6443", "-j", "ACCEPT")
    daemon = care(plane, "--readiness-interval", "100ms").start(
        wait_for=[b.address for b in plane.lab.backends])
    try:
        wait(lambda: weights(plane.lab) == everyone(plane), 30, daemon)
        time.sleep(3)  # the discovered members' own rise is logged
        settled = len(daemon.events())
        end = time.monotonic() + 15
        while time.monotonic() < end:
            assert weights(plane.lab) == everyone(plane)
            time.sleep(0.5)
        after = [e for e in daemon.events()[settled:] if str(e["event"]).startswith("real server")]
        print(f"\nstate changes while GOAWAYs came: {after}")
        # "Slow" (readiness late, PINGs answered) keeps a server in; a busy test kernel may say it.
        assert [e for e in after if e["event"] in ("real server failing", "real server down")] == []
        counters = plane.lab.run("iptables-legacy", "-w", "5", "-L", "OUTPUT", "-v", "-n", "-x").stdout
        syns = sum(int(line.split()[0]) for line in counters.splitlines() if "dpt:6443" in line)
        print(f"\n15 s of readiness every 100 ms with --goaway-chance=0.02: {syns} probe connections "
              "opened to 3 apiservers")
        assert syns > 3 + 2  # a connection each, and GOAWAYs that made the probes reconnect
    finally:
        daemon.stop()
