"""A node moving from the Go lvscare: its route, chains, rules and ipset for our VIP are removed at
start (``--run-once`` and the daemon) and by ``-C``; everybody else's, however alike, stay.

The Go objects are made with the commands the Go lvscare runs (sealos
``lifecycle/staging/src/github.com/labring/lvscare``: ``pkg/route/route.go`` through vishvananda
netlink, ``care/iptables.go`` through Kubernetes' iptables and ipset helpers)."""

from __future__ import annotations

import pytest
from lvscare_rig.topology import Lab

from .helpers import Care, log_events

VIP = "10.103.97.2"
NODE_IP = "10.200.1.1"  # the node's address towards backend 1: Go's --ip
IPT = ("iptables-legacy", "-w", "5")  # the backend the test kernel has (no nf_tables)
MARK = "0x000001"  # Go: fmt.Sprintf("%#08x", 1 << masqueradeBit), bit 0 by default


def go_route_mode(lab: Lab) -> None:
    lab.run("ip", "route", "add", f"{VIP}/32", "via", NODE_IP, "metric", "50")


def go_link_mode(lab: Lab, vips: tuple[str, ...] = (VIP,)) -> None:
    lab.run("ipset", "create", "VIRTUAL-IP", "hash:ip,port", "family", "inet", "hashsize", "1024",
            "maxelem", "65536", "comment", "-exist")
    for vip in vips:
        lab.run("ipset", "add", "VIRTUAL-IP", f"{vip},tcp:6443", "-exist")
    for chain in ("VIRTUAL-SERVICES", "VIRTUAL-POSTROUTING", "VIRTUAL-MARK-MASQ"):
        lab.run(*IPT, "-N", chain, "-t", "nat")
    for hook in ("OUTPUT", "PREROUTING"):
        lab.run(*IPT, "-A", hook, "-t", "nat", "-m", "comment", "--comment",
                "virtual service portals", "-j", "VIRTUAL-SERVICES")
    lab.run(*IPT, "-A", "POSTROUTING", "-t", "nat", "-m", "comment", "--comment",
            "virtual service postrouting rules", "-j", "VIRTUAL-POSTROUTING")
    lab.run(*IPT, "-A", "VIRTUAL-SERVICES", "-t", "nat", "-m", "comment", "--comment",
            "virtual service ip + port for masquerade purpose", "-m", "set", "--match-set",
            "VIRTUAL-IP", "dst,dst", "-j", "VIRTUAL-MARK-MASQ")
    lab.run(*IPT, "-A", "VIRTUAL-MARK-MASQ", "-t", "nat", "-j", "MARK", "--or-mark", MARK)
    lab.run(*IPT, "-A", "VIRTUAL-POSTROUTING", "-t", "nat", "-m", "mark", "!", "--mark", MARK,
            "-j", "RETURN")
    lab.run(*IPT, "-I", "OUTPUT", "-t", "filter", "-m", "comment", "--comment",
            "accept for all marked by lvscare", "-m", "mark", "--mark", MARK, "-j", "ACCEPT")
    lab.run(*IPT, "-A", "VIRTUAL-POSTROUTING", "-t", "nat", "-m", "comment", "--comment",
            "virtual service traffic requiring SNAT", "-j", "MASQUERADE", "--random-fully")
    for table in ("filter", "nat"):  # utiliptables.Monitor's canaries
        lab.run(*IPT, "-N", "VIRTUAL-CANARY", "-t", table)


def foreign(lab: Lab) -> None:
    """Look-alikes of other owners: kube-proxy's set and chain, a mark ACCEPT without Go's
    comment, Go's comment with another target, routes to the VIP or via the node of other shapes."""
    lab.run("ipset", "create", "KUBE-CLUSTER-IP", "hash:ip,port", "family", "inet", "-exist")
    lab.run("ipset", "add", "KUBE-CLUSTER-IP", f"{VIP},tcp:6443", "-exist")
    lab.run(*IPT, "-N", "KUBE-SERVICES", "-t", "nat")
    lab.run(*IPT, "-A", "OUTPUT", "-t", "nat", "-m", "comment", "--comment",
            "kubernetes service portals", "-j", "KUBE-SERVICES")
    lab.run(*IPT, "-A", "KUBE-SERVICES", "-t", "nat", "-m", "set", "--match-set", "KUBE-CLUSTER-IP",
            "dst,dst", "-j", "RETURN")
    lab.run(*IPT, "-A", "OUTPUT", "-t", "filter", "-m", "mark", "--mark", "0x4000/0x4000",
            "-j", "ACCEPT")
    lab.run(*IPT, "-A", "POSTROUTING", "-t", "nat", "-m", "comment", "--comment",
            "virtual service postrouting rules", "-j", "RETURN")
    lab.run("ip", "route", "add", f"{VIP}/32", "via", NODE_IP, "metric", "60")
    lab.run("ip", "route", "add", "10.103.97.3/32", "via", NODE_IP, "metric", "50")
    lab.run("ip", "route", "add", "10.103.97.4/32", "via", "10.200.2.2", "metric", "50")


def state(lab: Lab) -> dict[str, str]:
    """What a user would look at, minus what our own link mode adds."""
    def without_ours(text: str) -> str:
        return "\n".join(line for line in text.splitlines() if "LVSCARE" not in line)

    return {
        "nat": without_ours(lab.run(*IPT, "-t", "nat", "-S").stdout),
        "filter": lab.run(*IPT, "-t", "filter", "-S").stdout,
        "ipset": lab.run("ipset", "save").stdout,
        "routes": lab.run("ip", "route", "show", "table", "main").stdout,
    }


def care(lab: Lab, *args: str) -> list[dict[str, object]]:
    argv = ["care", "--vs", f"{VIP}:6443", "--log-format", "json", *args]
    if "-C" not in args:
        for b in lab.backends:
            argv += ["--rs", b.address]
    proc = lab.lvscare(*argv)
    assert proc.returncode == 0, proc.stderr
    return log_events(proc.stderr)


def removed(events: list[dict[str, object]]) -> list[str]:
    reports = [e for e in events if e["event"] == "Go lvscare leftovers removed"]
    assert len(reports) == 1, events  # logged once, as one line
    listed = reports[0]["removed"]
    assert isinstance(listed, list)
    return [str(x) for x in listed]


GO_LINK_REMOVED = {
    "iptables-legacy -t nat -A OUTPUT -m comment --comment 'virtual service portals' -j VIRTUAL-SERVICES",
    "iptables-legacy -t nat -A PREROUTING -m comment --comment 'virtual service portals' -j VIRTUAL-SERVICES",
    "iptables-legacy -t nat -A POSTROUTING -m comment --comment 'virtual service postrouting rules' "
    "-j VIRTUAL-POSTROUTING",
    "iptables-legacy -t filter -A OUTPUT -m comment --comment 'accept for all marked by lvscare' "
    "-m mark --mark 0x1 -j ACCEPT",
    "iptables-legacy -t nat chain VIRTUAL-SERVICES", "iptables-legacy -t nat chain VIRTUAL-POSTROUTING",
    "iptables-legacy -t nat chain VIRTUAL-MARK-MASQ", "iptables-legacy -t nat chain VIRTUAL-CANARY",
    "iptables-legacy -t filter chain VIRTUAL-CANARY", "ipset VIRTUAL-IP",
}


@pytest.mark.smoke
def test_run_once_removes_the_go_route_and_link_mode_objects_and_nothing_else(lab: Lab) -> None:
    foreign(lab)
    before = state(lab)
    go_route_mode(lab)
    go_link_mode(lab)
    events = care(lab, "--run-once", "--mode", "link")
    assert set(removed(events)) == GO_LINK_REMOVED | {f"route {VIP}/32 via {NODE_IP} metric 50"}
    assert state(lab) == before
    result = lab.requests(VIP, count=6)
    assert result["errors"] == [] and sum(result["answers"].values()) == 6
    # Nothing left: a second run says nothing of the Go lvscare.
    assert not [e for e in care(lab, "--run-once", "--mode", "link") if "Go lvscare" in str(e["event"])]


def test_clean_removes_the_go_objects_with_ours(lab: Lab) -> None:
    foreign(lab)
    before = state(lab)
    care(lab, "--run-once")  # ours, route mode
    go_route_mode(lab)
    go_link_mode(lab)
    events = care(lab, "-C")
    assert set(removed(events)) == GO_LINK_REMOVED | {f"route {VIP}/32 via {NODE_IP} metric 50"}
    assert state(lab) == before
    assert lab.run("ip", "route", "show", "table", "all", "proto", "76").stdout.strip() == ""


def test_a_set_that_still_serves_another_vip_loses_only_our_entry(lab: Lab) -> None:
    go_link_mode(lab, vips=(VIP, "10.103.97.9"))
    chains_before = lab.run(*IPT, "-t", "nat", "-S").stdout
    filter_before = lab.run(*IPT, "-t", "filter", "-S").stdout
    events = care(lab, "--run-once", "--mode", "route")
    assert removed(events) == [f"ipset VIRTUAL-IP entry {VIP},tcp:6443"]
    saved = lab.run("ipset", "save", "VIRTUAL-IP").stdout
    assert "add VIRTUAL-IP 10.103.97.9,tcp:6443" in saved and f"{VIP},tcp" not in saved
    assert lab.run(*IPT, "-t", "nat", "-S").stdout == chains_before
    assert lab.run(*IPT, "-t", "filter", "-S").stdout == filter_before


def test_the_daemon_removes_them_at_start(lab: Lab) -> None:
    foreign(lab)
    before = state(lab)
    go_route_mode(lab)
    go_link_mode(lab)
    daemon = Care(lab, "--mode", "link").start()
    try:
        assert set(removed(daemon.events())) == GO_LINK_REMOVED | {
            f"route {VIP}/32 via {NODE_IP} metric 50"}
        assert state(lab) == before
        assert lab.requests(VIP, count=6)["errors"] == []
    finally:
        daemon.stop()
