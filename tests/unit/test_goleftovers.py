"""Which lines of ``iptables -S``, ``ipset save`` and the route table are the Go lvscare's. The
kernel tests (tests/kernel/test_go_leftovers.py) remove them from a real kernel."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import replace

from lvscare import rtnl
from lvscare.goleftovers import chains, go_rules, is_go_route, set_entry, set_members

from .fakes import config

NAT = """-P PREROUTING ACCEPT
-P OUTPUT ACCEPT
-N KUBE-SERVICES
-N VIRTUAL-MARK-MASQ
-N VIRTUAL-SERVICES
-A PREROUTING -m comment --comment "virtual service portals" -j VIRTUAL-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "virtual service portals" -j VIRTUAL-SERVICES
-A OUTPUT -m comment --comment "virtual service portals" -j KUBE-SERVICES
-A INPUT -m comment --comment "virtual service portals" -j VIRTUAL-SERVICES
-A POSTROUTING -m comment --comment "virtual service postrouting rules" -j VIRTUAL-POSTROUTING
-A POSTROUTING -m comment --comment "virtual service postrouting rules" -j RETURN
-A VIRTUAL-SERVICES -m set --match-set VIRTUAL-IP dst,dst -j VIRTUAL-MARK-MASQ
-A OUTPUT -m comment --comment "unbalanced quote -j VIRTUAL-SERVICES
"""
FILTER = """-P OUTPUT ACCEPT
-N VIRTUAL-CANARY
-A OUTPUT -m comment --comment "accept for all marked by lvscare" -m mark --mark 0x4 -j ACCEPT
-A OUTPUT -m mark --mark 0x4000/0x4000 -j ACCEPT
-A OUTPUT -m comment --comment "accept for all marked by lvscare" -m mark --mark 0x1 -j DROP
-A FORWARD -m comment --comment "accept for all marked by lvscare" -m mark --mark 0x1 -j ACCEPT
"""


def test_only_gos_jumps_and_accept_are_picked_whatever_its_mark() -> None:
    portals = ("-m", "comment", "--comment", "virtual service portals", "-j", "VIRTUAL-SERVICES")
    assert go_rules("nat", NAT) == [
        ("-A", "PREROUTING", *portals),
        ("-A", "OUTPUT", *portals),
        ("-A", "POSTROUTING", "-m", "comment", "--comment", "virtual service postrouting rules",
         "-j", "VIRTUAL-POSTROUTING"),
    ]
    assert go_rules("filter", FILTER) == [
        ("-A", "OUTPUT", "-m", "comment", "--comment", "accept for all marked by lvscare",
         "-m", "mark", "--mark", "0x4", "-j", "ACCEPT"),
    ]
    # The same lines in the other table are not the Go lvscare's.
    assert go_rules("filter", NAT) == [] and go_rules("nat", FILTER) == []


def test_chains_and_set_members() -> None:
    assert chains(NAT) == {"KUBE-SERVICES", "VIRTUAL-MARK-MASQ", "VIRTUAL-SERVICES"}
    saved = ("create VIRTUAL-IP hash:ip,port family inet hashsize 1024 maxelem 65536 comment\n"
             "add VIRTUAL-IP 10.103.97.2,tcp:6443\nadd VIRTUAL-IP 10.103.97.9,tcp:6443\n"
             "add KUBE-CLUSTER-IP 10.96.0.1,tcp:443\n")
    assert set_members(saved) == {"10.103.97.2,tcp:6443", "10.103.97.9,tcp:6443"}
    assert set_entry(config().virtual_servers[0]) == "10.103.97.2,tcp:6443"


def test_the_go_route_is_vip_32_via_a_gateway_metric_50_proto_boot_in_main() -> None:
    vip, gw = ipaddress.ip_address("10.103.97.2"), ipaddress.ip_address("10.200.1.1")
    go = rtnl.Route(socket.AF_INET, vip, 32, 254, 3, 0, 1, None, None, 50, gw)
    assert is_go_route(go, vip)

    for other in (replace(go, priority=60), replace(go, priority=None), replace(go, gateway=None),
                  replace(go, table=255), replace(go, protocol=76), replace(go, dst_len=24),
                  replace(go, type=2), replace(go, dst=ipaddress.ip_address("10.103.97.3"))):
        assert not is_go_route(other, vip), other
