"""``lvscare care --run-once`` and ``-C`` against the real kernel, checked with ipvsadm and ip."""

from __future__ import annotations

import json

import pytest
from lvscare_rig.topology import Lab

from .helpers import ipvsadm_stats, ipvsadm_table, log_events, netlink_table

VIP = "10.103.97.2"


def run_once(lab: Lab, *extra: str, mode: str = "route") -> None:
    args = ["care", "--run-once", "--vs", f"{VIP}:6443", "--mode", mode]
    for b in lab.backends:
        args += ["--rs", b.address]
    proc = lab.lvscare(*args, *extra)
    assert proc.returncode == 0, proc.stderr


def test_run_once_creates_exactly_the_table(lab: Lab) -> None:
    run_once(lab)
    assert ipvsadm_table(lab) == {
        f"TCP {VIP}:6443": {"sched": "rr", "rs": {
            "10.200.1.2:6443": ("Masq", 1), "10.200.2.2:6443": ("Masq", 1),
            "10.200.3.2:6443": ("Masq", 1)}},
    }
    assert netlink_table(lab) == {
        f"{VIP}:6443": {"scheduler": "rr", "dests": {
            f"10.200.{i}.2:6443": {"weight": 1, "fwd": 0} for i in (1, 2, 3)}},
    }


@pytest.mark.smoke
def test_route_mode_serves_requests_through_the_vip(lab: Lab) -> None:
    run_once(lab)
    route = lab.run("ip", "route", "show", "table", "local", f"{VIP}/32", "proto", "76").stdout
    assert route.startswith(f"local {VIP} dev lo") and "src 10.200.1.1" in route
    result = lab.requests(VIP, count=9)
    assert result["errors"] == []
    assert result["answers"] == {"backend-1": 3, "backend-2": 3, "backend-3": 3}


def test_route_mode_reaches_a_real_server_on_the_node(lab_local: Lab) -> None:
    lab = lab_local
    run_once(lab)
    assert lab.run("ip", "link", "show", "lvscare", check=False).returncode != 0
    result = lab.requests(VIP, count=9)
    assert result["errors"] == []
    assert result["answers"] == {"backend-1": 3, "backend-2": 3, "backend-3": 3}


def test_route_mode_takes_source_from_ip_flag(lab: Lab) -> None:
    lab.run("ip", "addr", "add", "10.200.9.9/32", "dev", "lo")
    run_once(lab, "--ip", "10.200.9.9")
    route = lab.run("ip", "route", "show", "table", "local", f"{VIP}/32").stdout
    assert "src 10.200.9.9" in route
    assert lab.requests(VIP, count=3)["errors"] == []


def test_link_mode_reaches_remote_and_local_real_servers(lab_local: Lab) -> None:
    lab = lab_local
    assert lab.backends[2].local
    run_once(lab, "--mode", "link")
    addrs = lab.run("ip", "-o", "addr", "show", "dev", "lvscare").stdout
    assert f"{VIP}/32" in addrs
    nat = lab.run("iptables-legacy", "-t", "nat", "-S", "LVSCARE-POSTROUTING").stdout
    assert f"--vaddr {VIP} --vport 6443" in nat and "MASQUERADE" in nat
    result = lab.requests(VIP, count=12)
    assert result["errors"] == []
    assert result["answers"] == {"backend-1": 4, "backend-2": 4, "backend-3": 4}


def test_none_mode_programs_ipvs_only(lab: Lab) -> None:
    run_once(lab, mode="none")
    assert f"TCP {VIP}:6443" in ipvsadm_table(lab)
    assert lab.run("ip", "route", "show", "table", "all", "proto", "76").stdout.strip() == ""
    assert lab.run("ip", "link", "show", "lvscare", check=False).returncode != 0
    # What the operator provides in this mode (here a default route) is then enough.
    lab.run("ip", "route", "add", "default", "dev", f"{lab.tag}b1", "src", "10.200.1.1")
    result = lab.requests(VIP, count=6)
    assert result["errors"] == [] and sum(result["answers"].values()) == 6  # type: ignore[attr-defined]


def test_sysctls_are_set(lab: Lab) -> None:
    def sysctl(name: str) -> str:
        return lab.run("cat", f"/proc/sys/net/ipv4/vs/{name}").stdout.strip()

    run_once(lab, mode="route")
    assert sysctl("expire_nodest_conn") == "1"
    assert sysctl("expire_quiescent_template") == "1"
    assert sysctl("conntrack") == "0"  # route mode needs no NAT, so it is left alone
    run_once(lab, mode="link")
    assert sysctl("conntrack") == "1"


def test_rerun_writes_nothing_and_keeps_counters(lab: Lab) -> None:
    run_once(lab)
    lab.requests(VIP, count=6)
    before = ipvsadm_stats(lab, total=6)
    assert sum(before.values()) == 6
    args = ["care", "--run-once", "--vs", f"{VIP}:6443", "--log-format", "json"]
    args += [f"--rs={','.join(b.address for b in lab.backends)}"]
    proc = lab.lvscare(*args)
    assert proc.returncode == 0, proc.stderr
    ready = [e for e in log_events(proc.stderr) if e["event"] == "virtual server ready"]
    assert ready and ready[0]["changes"] == 0
    assert not [e for e in log_events(proc.stderr) if e["event"] in ("route set",)]
    # Re-created real servers would start from zero.
    assert ipvsadm_stats(lab) == before


def test_weight_update_and_prune_keep_other_real_servers(lab: Lab) -> None:
    run_once(lab)
    lab.requests(VIP, count=3)
    before = ipvsadm_stats(lab, total=3)
    config = lab.workdir / "care.yaml"
    config.write_text(json.dumps({
        "virtualServers": [{"vs": f"{VIP}:6443", "scheduler": "wrr", "realServers": [
            {"address": "10.200.1.2:6443", "weight": 5},
            "10.200.2.2:6443",
        ]}]}))
    proc = lab.lvscare("care", "--run-once", "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    assert ipvsadm_table(lab)[f"TCP {VIP}:6443"] == {
        "sched": "wrr", "rs": {"10.200.1.2:6443": ("Masq", 5), "10.200.2.2:6443": ("Masq", 1)}}
    after = ipvsadm_stats(lab)
    assert after["10.200.1.2:6443"] == before["10.200.1.2:6443"]
    assert after["10.200.2.2:6443"] == before["10.200.2.2:6443"]


def test_adopts_rules_left_by_an_earlier_run(lab: Lab) -> None:
    # The installer's run-once before kubeadm join, then the static pod's first run.
    run_once(lab)
    lab.requests(VIP, count=3)
    before = ipvsadm_stats(lab, total=3)
    assert sum(before.values()) == 3
    run_once(lab)
    assert ipvsadm_stats(lab) == before


def test_clean_removes_only_what_lvscare_created(lab_local: Lab) -> None:
    lab = lab_local
    lab.run("ipvsadm", "-A", "-t", "10.96.0.1:443", "-s", "wlc")
    lab.run("ipvsadm", "-a", "-t", "10.96.0.1:443", "-r", "10.200.1.2:6443", "-m")
    lab.run("ip", "route", "add", "10.96.0.0/12", "dev", f"{lab.tag}b1")
    foreign = ipvsadm_table(lab)
    run_once(lab, "--mode", "link")
    proc = lab.lvscare("care", "-C", "--vs", f"{VIP}:6443")
    assert proc.returncode == 0, proc.stderr
    assert ipvsadm_table(lab) == foreign
    assert lab.run("ip", "link", "show", "lvscare", check=False).returncode != 0
    nat = lab.run("iptables-legacy", "-t", "nat", "-S").stdout
    assert "LVSCARE" not in nat and "lvscare" not in nat
    assert "10.96.0.0/12" in lab.run("ip", "route").stdout
    # Clean again: nothing left to remove is not an error.
    assert lab.lvscare("care", "-C", "--vs", f"{VIP}:6443").returncode == 0


def test_clean_removes_route_mode_route(lab: Lab) -> None:
    run_once(lab)
    assert lab.run("ip", "route", "show", "table", "all", "proto", "76").stdout.strip()
    assert lab.lvscare("care", "-C", "--vs", f"{VIP}:6443").returncode == 0
    assert lab.run("ip", "route", "show", "table", "all", "proto", "76").stdout.strip() == ""
    assert ipvsadm_table(lab) == {}


def test_ipv6_virtual_server(lab: Lab) -> None:
    proc = lab.lvscare("care", "--run-once", "--vs", "[fd00:103::2]:6443", "--mode", "route",
                       "--rs", "[fd00:200:1::2]:6443,[fd00:200:2::2]:6443,[fd00:200:3::2]:6443")
    assert proc.returncode == 0, proc.stderr
    table = ipvsadm_table(lab)
    assert table["TCP [fd00:103::2]:6443"]["rs"] == {
        f"[fd00:200:{i}::2]:6443": ("Masq", 1) for i in (1, 2, 3)}
    for b in lab.backends:
        lab.kill(b)
        b.listen_v6 = True
        lab.start(b)
    result = lab.requests("fd00:103::2", count=6)
    assert result["errors"] == []
    assert result["answers"] == {"backend-1": 2, "backend-2": 2, "backend-3": 2}


def test_bad_input_changes_nothing(lab: Lab) -> None:
    for bad in (["--rs", "10.200.1.2:70000"], ["--rs", "10.200.1.2:6443", "--scheduler", "xx"],
                ["--rs", "10.200.1.2:6443,10.200.1.2:6443"], ["--rs", "[fd00::1]:6443"]):
        proc = lab.lvscare("care", "--run-once", "--vs", f"{VIP}:6443", *bad)
        assert proc.returncode == 2, (bad, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1
    assert ipvsadm_table(lab) == {}
    assert lab.run("ip", "route", "show", "table", "all", "proto", "76").stdout.strip() == ""


def test_clean_leaves_an_interface_lvscare_did_not_create(lab: Lab) -> None:
    """``-C -i kube-ipvs0`` must not take the VIP off kube-proxy's device, nor delete it; an
    interface lvscare made under another name carries its mark and goes."""
    lab.run("ip", "link", "add", "kube-ipvs0", "type", "dummy")
    lab.run("ip", "addr", "add", f"{VIP}/32", "dev", "kube-ipvs0")
    proc = lab.lvscare("care", "-C", "--vs", f"{VIP}:6443", "-i", "kube-ipvs0")
    assert proc.returncode == 0, proc.stderr
    assert f"{VIP}/32" in lab.run("ip", "-o", "addr", "show", "dev", "kube-ipvs0").stdout
    assert "not created by lvscare" in proc.stderr
    run_once(lab, "--iface", "lvs-other", mode="link")
    assert "alias lvscare" in lab.run("ip", "-d", "link", "show", "lvs-other").stdout
    assert lab.lvscare("care", "-C", "--vs", f"{VIP}:6443", "-i", "lvs-other").returncode == 0
    assert lab.run("ip", "link", "show", "lvs-other", check=False).returncode != 0
    assert lab.run("ip", "link", "show", "kube-ipvs0").returncode == 0


def test_a_certificate_run_once_cannot_read_changes_nothing(lab: Lab) -> None:
    """--run-once reads the probes' certificates as the daemon will: rules without a daemon
    that can keep them healthy are not created."""
    fifo = lab.workdir / "ca.fifo"
    import os

    os.mkfifo(fifo)
    for bad in (["--health-ca", "/nonexistent/ca.crt"], ["--health-ca", str(fifo)]):
        proc = lab.lvscare("care", "--run-once", "--vs", f"{VIP}:6443", "--rs", lab.backends[0].address,
                           *bad, timeout=30)
        assert proc.returncode == 2, (bad, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "--health-ca" in proc.stderr
    assert ipvsadm_table(lab) == {}
