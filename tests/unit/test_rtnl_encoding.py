"""The hand-written rtnetlink messages decode, with pyroute2's own message classes, to what
``ip route``/``ip link``/``ip addr`` would send; and our decoders read what pyroute2 encodes.
(What the kernel does with them is checked by the route- and link-mode tests in tests/kernel.)"""

from __future__ import annotations

import ipaddress
import socket

from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from lvscare import netlink, rtnl

VIP4 = ipaddress.ip_address("10.103.97.2")
VIP6 = ipaddress.ip_address("fd00::97:2")
SRC = ipaddress.ip_address("10.200.1.1")


def _decode(cls, data: bytes):  # type: ignore[no-untyped-def]
    msg = cls(data)
    msg.decode()
    return msg


def test_local_route_is_what_ip_route_would_send() -> None:
    r = rtnl.Route(socket.AF_INET, VIP4, 32, 255, 76, 254, 2, SRC, 1, None)
    data = netlink.header(rtnl.RTM_NEWROUTE, netlink.NLM_F_REQUEST, 7, rtnl.encode_route(r))
    msg = _decode(rtmsg, data)
    assert msg["header"]["type"] == rtnl.RTM_NEWROUTE and msg["header"]["sequence_number"] == 7
    assert (msg["family"], msg["dst_len"], msg["table"], msg["proto"], msg["scope"], msg["type"]) == \
        (socket.AF_INET, 32, 255, 76, 254, 2)
    assert msg.get_attr("RTA_DST") == "10.103.97.2"
    assert msg.get_attr("RTA_PREFSRC") == "10.200.1.1"
    assert msg.get_attr("RTA_OIF") == 1 and msg.get_attr("RTA_TABLE") == 255


def test_route_decoder_reads_pyroute2_encoding() -> None:
    msg = rtmsg()
    msg["family"], msg["dst_len"], msg["table"], msg["proto"] = socket.AF_INET6, 128, 255, 76
    msg["scope"], msg["type"] = 254, 2
    msg["attrs"] = [("RTA_DST", str(VIP6)), ("RTA_PREFSRC", "fd00:200:1::1"), ("RTA_TABLE", 255),
                    ("RTA_PRIORITY", 1024), ("RTA_OIF", 1)]
    msg.encode()
    r = rtnl.decode_route(bytes(msg.data[16:]))
    assert r == rtnl.Route(socket.AF_INET6, VIP6, 128, 255, 76, 254, 2,
                           ipaddress.ip_address("fd00:200:1::1"), 1, 1024)


def test_dummy_link_and_address_messages() -> None:
    body = (rtnl._IFINFO.pack(0, 0, 0, 0, 0) + netlink.nla(rtnl.IFLA_IFNAME, b"lvscare\0")
            + netlink.nla(rtnl.IFLA_LINKINFO | netlink.NLA_F_NESTED,
                          netlink.nla(rtnl.IFLA_INFO_KIND, b"dummy")))
    link = _decode(ifinfmsg, netlink.header(rtnl.RTM_NEWLINK, 1, 1, body))
    assert link.get_attr("IFLA_IFNAME") == "lvscare"
    assert link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_KIND") == "dummy"
    addr = _decode(ifaddrmsg, netlink.header(rtnl.RTM_NEWADDR, 1, 1, rtnl._addr_body(5, VIP6, 0x02)))
    assert (addr["family"], addr["prefixlen"], addr["flags"], addr["index"]) == (socket.AF_INET6, 128, 2, 5)
    assert addr.get_attr("IFA_LOCAL") == addr.get_attr("IFA_ADDRESS") == str(VIP6)


def test_link_decoder_reads_kind() -> None:
    msg = ifinfmsg()
    msg["index"], msg["flags"] = 9, 1
    msg["attrs"] = [("IFLA_IFNAME", "lvscare"), ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "dummy")]})]
    msg.encode()
    assert rtnl._decode_link(bytes(msg.data[16:])) == rtnl.Link(9, 1, "dummy", None)


def test_gateway_route_both_ways() -> None:
    """Go lvscare's route-mode route (``VIP via NODE_IP metric 50``) as read and as deleted."""
    r = rtnl.Route(socket.AF_INET, VIP4, 32, 254, 3, 0, 1, None, None, 50, SRC)
    msg = _decode(rtmsg, netlink.header(rtnl.RTM_DELROUTE, netlink.NLM_F_REQUEST, 1, rtnl.encode_route(r)))
    assert msg.get_attr("RTA_GATEWAY") == "10.200.1.1" and msg.get_attr("RTA_PRIORITY") == 50
    assert (msg["table"], msg["proto"], msg["type"]) == (254, 3, 1)
    assert rtnl.decode_route(bytes(msg.data[16:])) == r
