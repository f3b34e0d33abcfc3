"""The health-checking daemon against real faults, checked in the kernel table and in traffic."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lvscare_rig.topology import Backend, Lab

from .helpers import Care, ipvsadm_stats, ipvsadm_table, wait

VIP = "10.103.97.2"
KEY = f"TCP {VIP}:6443"


@pytest.fixture
def care(lab: Lab) -> Iterator[Care]:
    daemon = Care(lab)
    yield daemon
    daemon.stop()


def real_servers(lab: Lab) -> dict[str, tuple[str, int]]:
    table = ipvsadm_table(lab)
    rs = table.get(KEY, {}).get("rs", {})
    assert isinstance(rs, dict)
    return rs


def assert_traffic_avoids(lab: Lab, gone: str) -> None:
    result = lab.requests(VIP, count=6)
    assert result["errors"] == []
    assert gone not in result["answers"]  # type: ignore[operator]


def blackhole_the_idle_clients_backend(lab: Lab, care: Care, client: subprocess.Popen[str]) -> Backend:
    """The backend the idle client's connection is on (its first line says), blackholed, and
    gone from the kernel's table."""
    assert client.stdout is not None
    name = json.loads(client.stdout.readline())["backend"]
    (b,) = [x for x in lab.backends if x.name == name]
    lab.blackhole(b)
    wait(lambda: b.address not in real_servers(lab), 10, care)
    return b


def test_the_vip_carries_traffic_as_soon_as_the_rules_are_written(lab: Lab) -> None:
    """Started on a clean node (no --run-once before it) that booted 2 s ago: its monotonic
    clock is small, which the daemon once took for "the VIP route was checked long ago" and
    left the VIP unreachable until uptime reached 10 s."""
    care = Care(lab, uptime=2.0).start()
    try:
        assert lab.run("ip", "route", "show", "table", "local", "proto", "76").stdout.strip(), \
            "no VIP route when the rules were written"
        assert lab.requests(VIP, count=3, timeout=1.0)["errors"] == []
    finally:
        care.stop()


def _vip_objects(lab: Lab, mode: str) -> str:
    if mode == "route":
        return lab.run("ip", "route", "show", "table", "local", "proto", "76").stdout.strip()
    return lab.run("ip", "-o", "addr", "show", "dev", "lvscare", check=False).stdout.strip()


@pytest.mark.parametrize("what", ["route", "address", "link"])
def test_a_deleted_vip_route_address_or_link_is_back_within_two_seconds(lab: Lab, what: str) -> None:
    mode = "route" if what == "route" else "link"
    care = Care(lab, "--mode", mode).start()
    try:
        wait(lambda: VIP in _vip_objects(lab, mode), 10, care)
        if mode == "link":
            # Start-up's first reconcile ends with the NAT rule (a few iptables processes, seconds
            # in a busy test kernel): the promise is for the steady state that follows it.
            wait(lambda: care.events("source NAT set"), 20, care)
        if what == "route":
            lab.run("ip", "route", "flush", "table", "local", "proto", "76")
        elif what == "address":
            lab.run("ip", "addr", "del", f"{VIP}/32", "dev", "lvscare")
        else:
            lab.run("ip", "link", "del", "lvscare")
        assert VIP not in _vip_objects(lab, mode)
        # The default interval is 1 s: back within one interval (and a reconcile).
        wait(lambda: VIP in _vip_objects(lab, mode), 2, care)
        wait(lambda: care.events("VIP access repaired"), 2, care)
        assert lab.requests(VIP, count=3)["errors"] == []
    finally:
        care.stop()


def test_a_firewall_reload_that_deletes_the_nat_chain_is_repaired_within_the_check_period(
        lab: Lab) -> None:
    """firewalld's reload or "iptables -t nat -F; iptables -t nat -X" takes our chain with the
    jump to it: both come back within the iptables check period (10 s), and the daemon stays
    healthy all along."""
    ipt = ("iptables-legacy", "-w", "5", "-t", "nat")  # the test kernel's backend (no nf_tables)
    care = Care(lab, "--mode", "link", "--metrics-address", "127.0.0.1:10262").start()
    try:
        wait(lambda: "MASQUERADE" in lab.run(*ipt, "-S", "LVSCARE-POSTROUTING", check=False).stdout,
             15, care)
        lab.run(*ipt, "-F")
        lab.run(*ipt, "-X")
        assert lab.run(*ipt, "-S", "LVSCARE-POSTROUTING", check=False).returncode != 0
        wait(lambda: "MASQUERADE" in lab.run(*ipt, "-S", "LVSCARE-POSTROUTING",
                                             check=False).stdout, 12, care)
        assert "-j LVSCARE-POSTROUTING" in lab.run(*ipt, "-S", "POSTROUTING").stdout
        assert lab.requests(VIP, count=3)["errors"] == []
        assert not care.events("reconcile failed, will retry")
        assert lab.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                       "http://127.0.0.1:10262/healthz").stdout == "200"
    finally:
        care.stop()


def test_sighup_moves_the_vip_to_the_new_interface_and_node_address(lab: Lab) -> None:
    """A reload leaves the node as a fresh start with the new file would: nothing of the old
    interface is left, the new one carries the VIP, and a new node address is the route's
    source."""
    config = lab.workdir / "care.yaml"
    rs = [b.address for b in lab.backends]

    def write(extra: str) -> None:
        config.write_text(f"{extra}\nvirtualServers:\n  - vs: {VIP}:6443\n    realServers: {rs}\n")

    def reload(care: Care, n: int) -> None:
        assert care.proc is not None
        care.proc.send_signal(signal.SIGHUP)
        wait(lambda: len(care.events("reloaded")) >= n, 10, care)

    def local_route() -> str:
        return lab.run("ip", "route", "show", "table", "local", "proto", "76").stdout

    write("mode: link\niface: lvsa")
    care = Care(lab, "--config", str(config)).start()
    try:
        wait(lambda: VIP in lab.run("ip", "-o", "addr", "show", "dev", "lvsa").stdout, 10, care)
        write("mode: link\niface: lvsb")
        reload(care, 1)
        wait(lambda: VIP in lab.run("ip", "-o", "addr", "show", "dev", "lvsb", check=False).stdout, 5, care)
        assert lab.run("ip", "link", "show", "lvsa", check=False).returncode != 0  # our empty dummy went
        assert lab.requests(VIP, count=3)["errors"] == []
        write("mode: route\nip: 10.200.2.1")
        reload(care, 2)
        wait(lambda: "src 10.200.2.1" in local_route(), 5, care)
        assert lab.run("ip", "link", "show", "lvsb", check=False).returncode != 0
        assert lab.requests(VIP, count=3)["errors"] == []
        write("mode: route\nip: 10.200.3.1")
        reload(care, 3)
        wait(lambda: "src 10.200.3.1" in local_route(), 5, care)
        assert local_route().count(VIP) == 1
        assert lab.requests(VIP, count=3)["errors"] == []
    finally:
        care.stop()


@pytest.mark.smoke
def test_killed_backend_is_deleted_and_readded(lab: Lab, care: Care) -> None:
    care.start()
    b = lab.backends[2]
    lab.kill(b)
    wait(lambda: b.address not in real_servers(lab), 10, care)
    down = care.events("real server down")
    # Refused, or reset: the probe connection closed by the dying server, probed at once.
    assert down[-1]["probe"] in ("refused", "reset") and down[-1]["rs"] == b.address
    assert_traffic_avoids(lab, b.name)
    lab.start(b)
    wait(lambda: real_servers(lab).get(b.address) == ("Masq", 1), 10, care)


def test_blackholed_backend_is_deleted(lab: Lab, care: Care) -> None:
    care.start()
    b = lab.backends[1]
    lab.blackhole(b)
    wait(lambda: b.address not in real_servers(lab), 10, care)
    assert care.events("real server down")[-1]["probe"] == "timeout"
    assert_traffic_avoids(lab, b.name)
    lab.blackhole(b, on=False)
    wait(lambda: b.address in real_servers(lab), 10, care)


@pytest.mark.parametrize("fault", ["hang", "tls-hang"])
def test_backend_that_never_answers_is_deleted(lab: Lab, care: Care, fault: str) -> None:
    b = lab.backends[0]
    if fault == "tls-hang":
        # Only new connections see a handshake that never completes: be in that state from the
        # start (an open probe connection would keep being answered, rightly).
        b.set_fault(fault)
    care.start()
    b.set_fault(fault)
    wait(lambda: b.address not in real_servers(lab), 10, care)
    assert care.events("real server down")[-1]["probe"] == "timeout"
    assert_traffic_avoids(lab, b.name)
    b.set_fault("ok")
    wait(lambda: b.address in real_servers(lab), 10, care)


def test_http_500_drains_then_deletes(lab: Lab) -> None:
    care = Care(lab, "--drain-period", "3s").start()
    try:
        b = lab.backends[0]
        b.set_fault("500")
        wait(lambda: real_servers(lab).get(b.address) == ("Masq", 0), 10, care)
        drained_at = time.monotonic()
        assert_traffic_avoids(lab, b.name)
        wait(lambda: b.address not in real_servers(lab), 10, care)
        assert time.monotonic() - drained_at >= 1.5  # it was drained first, not deleted at once
        b.set_fault("ok")
        wait(lambda: real_servers(lab).get(b.address) == ("Masq", 1), 10, care)
    finally:
        care.stop()


def test_http_401_is_unhealthy_unless_allowed(lab: Lab) -> None:
    b = lab.backends[0]
    b.set_fault("401")
    strict = Care(lab, rs=[b.address for b in lab.backends])
    care = strict.start(wait_for=[x.address for x in lab.backends[1:]])
    try:
        wait(lambda: real_servers(lab).get(b.address, ("Masq", 0))[1] == 0, 10, care)
    finally:
        care.stop()
    lab.run("ipvsadm", "-C")
    allowed = Care(lab, "--health-status", "401").start()
    try:
        time.sleep(3)
        assert real_servers(lab).get(b.address) == ("Masq", 1)
        assert not allowed.events("real server down")
    finally:
        allowed.stop()


def test_flapping_backend_does_not_churn(lab: Lab, care: Care) -> None:
    """Every other probe fails (the backend answers its health path 500 and 200 in turn, so the
    probes see the flapping whatever their timing): with fall 2, no change is ever made."""
    care.start()
    b = lab.backends[0]
    # The rules the daemon wrote at start (their log lines may follow the rules by a moment).
    wait(lambda: len([e for e in care.events("ipvs") if "add real server" in str(e["change"])]) >= 3,
         5, care)
    before = len(care.events("ipvs"))
    b.set_fault("flap")
    time.sleep(8)
    b.set_fault("ok")
    changes = [e for e in care.events("ipvs")[before:] if b.address in str(e["change"])]
    assert changes == []
    assert not care.events("real server down")
    # It did probe and see the failures: a daemon that never probed would pass the above.
    assert len([e for e in care.events("real server failing") if e["rs"] == b.address]) >= 3


def test_all_down_keeps_the_last_healthy_and_recovers(lab: Lab, care: Care) -> None:
    care.start()
    for b in lab.backends[:2]:
        lab.kill(b)
    wait(lambda: list(real_servers(lab)) == [lab.backends[2].address], 10, care)
    lab.kill(lab.backends[2])
    time.sleep(3)
    # Fail-open: the virtual server still has the last healthy real server.
    assert list(real_servers(lab)) == [lab.backends[2].address]
    assert len(care.events("all real servers down: keeping the last healthy ones (fail-open)")) == 1
    lab.start(lab.backends[0])
    wait(lambda: list(real_servers(lab)) == [lab.backends[0].address], 10, care)
    assert care.events("a real server is healthy again: fail-open over")
    result = lab.requests(VIP, count=3)
    assert result["answers"] == {"backend-1": 3}


def test_rules_deleted_by_someone_else_are_restored(lab: Lab, care: Care) -> None:
    care.start()
    lab.run("ipvsadm", "-C")
    wait(lambda: len(real_servers(lab)) == 3, 5, care)
    lab.run("ipvsadm", "-d", "-t", f"{VIP}:6443", "-r", lab.backends[0].address)
    wait(lambda: len(real_servers(lab)) == 3, 5, care)
    lab.run("ipvsadm", "-e", "-t", f"{VIP}:6443", "-r", lab.backends[1].address, "-m", "-w", "9")
    wait(lambda: real_servers(lab)[lab.backends[1].address] == ("Masq", 1), 5, care)
    assert len(care.events("rules repaired")) >= 3


@pytest.mark.parametrize("mode", ["route", "link"])
def test_kube_proxy_nftables_cleanup_is_undone_within_an_interval(lab: Lab, mode: str) -> None:
    """kube-proxy in nftables mode runs its IPVS cleanup at every start: every virtual server
    flushed (``ipvsadm -C``) and its ``kube-ipvs0`` deleted. lvscare's rules, route or dummy
    interface come back within one interval; traffic through the VIP works again."""
    lab.run("ip", "link", "add", "kube-ipvs0", "type", "dummy")  # as kube-proxy's ipvs mode left it
    care = Care(lab, "--mode", mode).start()
    try:
        times = []
        for _ in range(3):
            began = time.monotonic()
            lab.run("ipvsadm", "-C")
            lab.run("ip", "link", "del", "kube-ipvs0", check=False)
            wait(lambda: len(real_servers(lab)) == 3, 10, care)
            times.append(time.monotonic() - began)
            assert lab.requests(VIP, count=6)["errors"] == []
            lab.run("ip", "link", "add", "kube-ipvs0", "type", "dummy")
            time.sleep(0.5)
        print(f"\n{mode} mode: rules back {', '.join(f'{t:.2f}' for t in times)} s after the cleanup "
              "(interval 1 s)")
        assert care.events("rules repaired")
    finally:
        care.stop()


def test_sigterm_keeps_rules_and_exits_0(lab: Lab, care: Care) -> None:
    care.start()
    before = ipvsadm_table(lab)
    assert care.signal(signal.SIGTERM) == 0
    assert ipvsadm_table(lab) == before
    assert lab.requests(VIP, count=3)["errors"] == []


def test_clean_on_exit_removes_rules(lab: Lab) -> None:
    care = Care(lab, "--clean-on-exit").start()
    assert care.signal(signal.SIGTERM) == 0
    assert ipvsadm_table(lab) == {}
    assert lab.run("ip", "route", "show", "table", "all", "proto", "76").stdout.strip() == ""


def test_restart_after_sigkill_adopts_without_rewriting(lab: Lab, care: Care) -> None:
    care.start()
    lab.requests(VIP, count=6)
    before = ipvsadm_stats(lab, total=6)
    care.signal(signal.SIGKILL)
    again = Care(lab).start()
    try:
        time.sleep(3)
        assert again.events("adopted existing rules")
        assert again.events("ipvs") == []
        assert ipvsadm_stats(lab) == before
    finally:
        again.stop()


def test_sighup_applies_config_changes(lab: Lab) -> None:
    config = lab.workdir / "care.yaml"
    b1, b2, b3 = (b.address for b in lab.backends)

    def write(rs: list[str]) -> None:
        config.write_text(f"virtualServers:\n  - vs: {VIP}:6443\n    realServers: {rs}\n")

    write([b1, b2])
    care = Care(lab, "--config", str(config)).start(wait_for=[b1, b2])
    try:
        write([b1, b3])
        assert care.proc is not None
        care.proc.send_signal(signal.SIGHUP)
        wait(lambda: set(real_servers(lab)) == {b1, b3}, 10, care)
        assert care.events("reloaded")[-1]["added"] == [b3]
        assert care.events("reloaded")[-1]["removed"] == [b2]
        # b1 kept its health: no transition logged for it (transitions say what state it "was").
        assert not [e for e in care.events() if e.get("rs") == b1 and "was" in e]
    finally:
        care.stop()


IDLE_CLIENT = r"""
import http.client, json, socket, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
http = http.client.HTTPSConnection(sys.argv[1], 6443, timeout=5, context=ctx)
http.request("GET", "/healthz")
print(json.dumps({"backend": http.getresponse().read().decode().strip()}), flush=True)
conn = http.sock
conn.settimeout(30)
try:
    # The TCP socket under TLS: a reset is ECONNRESET here, a close is b"".
    outcome = "eof" if socket.socket.recv(conn, 1) == b"" else "data"
except ConnectionResetError:
    outcome = "reset"
except TimeoutError:
    outcome = "timeout"
except (ssl.SSLError, OSError) as exc:
    outcome = type(exc).__name__
print(json.dumps({"outcome": outcome}), flush=True)
"""


@pytest.mark.parametrize(("mode", "conntrack", "where"), [
    ("route", False, "node"), ("route", True, "node"), ("link", True, "node"),
    ("route", False, "pod"), ("link", True, "pod"),
], ids=["route", "route-conntrack", "link", "route-pod", "link-pod"])
def test_an_idle_client_of_a_deleted_real_server_is_reset_at_once(lab: Lab, mode: str,
                                                                   conntrack: bool, where: str) -> None:
    """A kept-alive connection that sends nothing would never learn its real server is gone
    (nothing of it reaches IPVS, so nothing resets it); lvscare nudges it instead. Also where
    netfilter tracks connections, as on a node with a conntrack-using iptables rule, and in link
    mode, where the connection is source-NATed in conntrack. The client runs on the node (as
    kubelet) or in a pod behind it."""

    if conntrack and mode == "route":
        lab.run("iptables-legacy", "-w", "5", "-A", "OUTPUT", "-m", "conntrack", "--ctstate", "INVALID",
                "-m", "comment", "--comment", "test: track connections", "-j", "RETURN")
    care = Care(lab, "--mode", mode).start()
    netns = lab.add_pod() if where == "pod" else lab.node
    client = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", IDLE_CLIENT, VIP],
                              stdout=subprocess.PIPE, text=True)
    try:
        b = blackhole_the_idle_clients_backend(lab, care, client)
        assert client.stdout is not None
        # The client is still idle: only the nudge can end its connection, well before its 30 s.
        outcome = json.loads(client.stdout.readline())
        if outcome != {"outcome": "reset"}:
            pytest.fail(f"the idle client saw {outcome}; daemon log:\n{care.log.read_text()[-4000:]}")
        # The client can be reset before the daemon has written its log line.
        wait(lambda: care.events("clients nudged"), 5, care)
        nudged = care.events("clients nudged")
        assert nudged[-1]["rs"] == b.address and nudged[-1]["clients"] == 1
        assert_traffic_avoids(lab, b.name)
    finally:
        client.kill()
        client.wait()
        care.stop()


# The daemon container of the static pod: capabilities NET_ADMIN and NET_RAW and no others, no
# new privileges, /proc/sys read-only (runtimes mount it so unless the container is privileged),
# the root filesystem read-only (the test kernel mounts the host's that way already).
POD_PRIVILEGES = ("unshare", "-m", "--", "sh", "-c",
                  "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && "
                  "exec setpriv --bounding-set=-all,+net_admin,+net_raw --inh-caps=-all "
                  "--ambient-caps=-all --no-new-privs -- \"$@\"", "sh")


@pytest.mark.parametrize("mode", ["route", "link"])
def test_the_daemon_needs_only_the_pods_privileges(lab: Lab, mode: str) -> None:
    """The init container's --run-once (privileged) sets the sysctls and the rules; the daemon
    then runs with exactly the pod's privileges through a failover: a killed apiserver leaves, its
    idle client is reset (NET_RAW, and conntrack in link mode), traffic avoids it, it comes back."""

    init = lab.lvscare("care", "--run-once", "--vs", f"{VIP}:6443", "--mode", mode,
                       *[a for b in lab.backends for a in ("--rs", b.address)])
    assert init.returncode == 0, init.stderr
    care = Care(lab, "--mode", mode, wrap=POD_PRIVILEGES).start()
    client = subprocess.Popen(lab.node_cmd(sys.executable, "-c", IDLE_CLIENT, VIP),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert care.proc is not None
        status = Path(f"/proc/{care.proc.pid}/status").read_text()
        assert "CapEff:\t0000000000003000" in status, status  # NET_ADMIN (12) and NET_RAW (13)
        b = blackhole_the_idle_clients_backend(lab, care, client)
        assert client.stdout is not None
        assert json.loads(client.stdout.readline()) == {"outcome": "reset"}
        assert_traffic_avoids(lab, b.name)
        lab.blackhole(b, on=False)
        wait(lambda: real_servers(lab).get(b.address) == ("Masq", 1), 10, care)
        warnings = [e for e in care.events() if e["level"] in ("warning", "error")]
        assert warnings == [], warnings
    finally:
        client.kill()
        client.wait()
        care.stop()



def _without(cap: str) -> tuple[str, ...]:
    keep = ",".join(f"+{c}" for c in sorted({"net_admin", "net_raw"} - {cap}))
    return tuple(a.replace("+net_admin,+net_raw", keep) for a in POD_PRIVILEGES)


@pytest.mark.parametrize(("cap", "mode"), [("net_admin", "route"), ("net_raw", "route"),
                                           ("net_raw", "link")])
def test_a_missing_privilege_names_the_operation_that_fails(lab: Lab, cap: str, mode: str) -> None:
    """What docs/operating.md's privilege table says each capability is for, shown by taking it
    away: without NET_ADMIN the daemon stops at its first IPVS read; without NET_RAW it keeps the
    table healthy but cannot reset a removed real server's clients, and link mode cannot run
    iptables."""

    init = lab.lvscare("care", "--run-once", "--vs", f"{VIP}:6443", "--mode", mode,
                       *[a for b in lab.backends for a in ("--rs", b.address)])
    assert init.returncode == 0, init.stderr
    care = Care(lab, "--mode", mode, wrap=_without(cap))
    if cap == "net_admin":
        assert care.spawn().proc is not None and care.proc.wait(timeout=30) == 1
        (failed,) = care.events("failed")
        assert "IPVS read" in str(failed["error"]) and "CAP_NET_ADMIN" in str(failed["error"])
        return
    care.start()
    client = subprocess.Popen(lab.node_cmd(sys.executable, "-c", IDLE_CLIENT, VIP),
                              stdout=subprocess.PIPE, text=True)
    try:
        b = blackhole_the_idle_clients_backend(lab, care, client)
        assert_traffic_avoids(lab, b.name)  # failover itself needs only NET_ADMIN
        wait(lambda: any("CAP_NET_RAW" in json.dumps(e) for e in care.events()), 10, care)
        if mode == "link":
            wait(lambda: any("iptables" in str(e.get("error", "")) and "Permission denied"
                             in str(e.get("error", "")) for e in care.events()), 15, care)
    finally:
        client.kill()
        client.wait()
        care.stop()


def test_recreating_the_pod_does_not_put_a_dead_apiserver_back(lab: Lab) -> None:
    """An upgrade or a rollout: the daemon stops (its rules stay), the init container's --run-once
    runs, a new daemon starts. A real server the first daemon removed must not come back, at no
    moment of that; a node whose table is empty (a reboot) still gets every real server."""
    from .helpers import log_events

    argv = ["care", "--run-once", "--vs", f"{VIP}:6443", "--log-format", "json",
            *[a for b in lab.backends for a in ("--rs", b.address)]]
    assert lab.lvscare(*argv).returncode == 0
    care = Care(lab).start()
    dead = lab.backends[1]
    lab.blackhole(dead)
    wait(lambda: dead.address not in real_servers(lab), 10, care)
    assert care.signal(signal.SIGTERM) == 0
    again = lab.lvscare(*argv)
    assert again.returncode == 0, again.stderr
    assert dead.address not in real_servers(lab)
    (ready,) = [e for e in log_events(again.stderr) if e["event"] == "virtual server ready"]
    assert ready["left_out_as_the_daemon_left_them"] == [dead.address]
    others = [b.address for b in lab.backends if b is not dead]
    care = Care(lab).start(wait_for=others)
    try:
        end = time.monotonic() + 3
        while time.monotonic() < end:
            assert dead.address not in real_servers(lab)
            time.sleep(0.1)
        lab.blackhole(dead, on=False)
        wait(lambda: real_servers(lab).get(dead.address) == ("Masq", 1), 10, care)
    finally:
        care.stop()
    # A reboot: the table is gone; --run-once puts every real server in.
    lab.run("ipvsadm", "-C")
    assert lab.lvscare(*argv).returncode == 0
    assert set(real_servers(lab)) == {b.address for b in lab.backends}


def test_a_second_daemon_on_the_node_stands_by_and_takes_over(lab: Lab) -> None:
    """The static pod and the DaemonSet's pod on one node: the second writes nothing while the
    first runs (its different real-server list would otherwise fight the first's), and takes
    over when the first dies, even by SIGKILL."""
    first = Care(lab).start()
    only = lab.backends[0].address
    second = Care(lab, rs=[only]).spawn()
    try:
        wait(lambda: second.events("another lvscare manages these virtual servers on this node; "
                                   "standing by until it stops"), 20, second)
        end = time.monotonic() + 3
        while time.monotonic() < end:
            assert set(real_servers(lab)) == {b.address for b in lab.backends}
            time.sleep(0.1)
        assert first.proc is not None
        first.proc.kill()
        first.proc.wait()
        took = wait(lambda: set(real_servers(lab)) == {only}, 10, second)
        assert second.events("the other lvscare has stopped; taking over")
        print(f"taken over {took:.2f}s after the first daemon died")
    finally:
        first.stop()
        second.stop()
