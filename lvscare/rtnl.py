"""The few rtnetlink operations lvscare needs: routes, a dummy link, addresses.

Layouts from uapi ``linux/rtnetlink.h``, ``if_link.h`` and ``if_addr.h``; each request asks for an
ACK so that ``netlink.Socket.exchange`` knows when it is answered. Errors are
``netlink.NetlinkError`` with the kernel's errno; ``vip.py`` turns them into user messages.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

from lvscare.config import IPAddress
from lvscare.netlink import (
    NETLINK_ROUTE,
    NLA_F_NESTED,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NetlinkError,
    Socket,
    nla,
    parse_nlas,
)

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 6, 7, 15
IFLA_IFNAME, IFLA_LINKINFO, IFLA_IFALIAS, IFLA_INFO_KIND = 3, 18, 20, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFF_UP = 0x1

_RTMSG = struct.Struct("=BBBBBBBBI")  # family dst_len src_len tos table protocol scope type flags
_IFINFO = struct.Struct("=BxHiII")  # family type index flags change
_IFADDR = struct.Struct("=BBBBI")  # family prefixlen flags scope index
_ACK = NLM_F_REQUEST | NLM_F_ACK


def family(ip: IPAddress) -> int:
    return socket.AF_INET if ip.version == 4 else socket.AF_INET6


def _ip(raw: bytes) -> IPAddress:
    return ipaddress.ip_address(bytes(raw))


@dataclass(frozen=True)
class Route:
    family: int
    dst: IPAddress | None
    dst_len: int
    table: int
    protocol: int
    scope: int
    type: int
    prefsrc: IPAddress | None
    oif: int | None
    priority: int | None
    gateway: IPAddress | None = None


def decode_route(payload: bytes) -> Route:
    fam, dst_len, _, _, table, proto, scope, rtype, _ = _RTMSG.unpack_from(payload)
    attrs = parse_nlas(payload, _RTMSG.size)

    def u32(kind: int) -> int | None:
        return int(struct.unpack("=I", attrs[kind][:4])[0]) if kind in attrs else None

    return Route(fam, _ip(attrs[RTA_DST]) if RTA_DST in attrs else None, dst_len,
                 u32(RTA_TABLE) or table, proto, scope, rtype,
                 _ip(attrs[RTA_PREFSRC]) if RTA_PREFSRC in attrs else None, u32(RTA_OIF), u32(RTA_PRIORITY),
                 _ip(attrs[RTA_GATEWAY]) if RTA_GATEWAY in attrs else None)


def encode_route(r: Route) -> bytes:
    body = _RTMSG.pack(r.family, r.dst_len, 0, 0, r.table if r.table < 256 else 252, r.protocol,
                       r.scope, r.type, 0)
    if r.dst is not None:
        body += nla(RTA_DST, r.dst.packed)
    body += nla(RTA_TABLE, struct.pack("=I", r.table))
    if r.oif is not None:
        body += nla(RTA_OIF, struct.pack("=I", r.oif))
    if r.prefsrc is not None:
        body += nla(RTA_PREFSRC, r.prefsrc.packed)
    if r.priority is not None:
        body += nla(RTA_PRIORITY, struct.pack("=I", r.priority))
    if r.gateway is not None:
        body += nla(RTA_GATEWAY, r.gateway.packed)
    return body


async def route_get(sock: Socket, dst: IPAddress) -> Route | None:
    """What ``ip route get DST`` answers: the route the node would use, with its source."""
    body = _RTMSG.pack(family(dst), dst.max_prefixlen, 0, 0, 0, 0, 0, 0, 0) + nla(RTA_DST, dst.packed)
    replies = await sock.request(RTM_GETROUTE, _ACK, body)
    return decode_route(replies[0]) if replies else None


async def route_dump(sock: Socket, fam: int) -> list[Route]:
    body = _RTMSG.pack(fam, 0, 0, 0, 0, 0, 0, 0, 0)
    return [decode_route(p) for p in await sock.request(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, body)]


async def route_replace(sock: Socket, r: Route) -> None:
    await sock.request(RTM_NEWROUTE, _ACK | NLM_F_CREATE | NLM_F_REPLACE, encode_route(r))


async def route_delete(sock: Socket, r: Route) -> None:
    await sock.request(RTM_DELROUTE, _ACK, encode_route(r))


@dataclass(frozen=True)
class Link:
    index: int
    flags: int
    kind: str | None
    alias: str | None = None  # IFLA_IFALIAS: how lvscare marks a dummy interface it created


def _decode_link(payload: bytes) -> Link:
    _, _, index, flags, _ = _IFINFO.unpack_from(payload)
    attrs = parse_nlas(payload, _IFINFO.size)
    info = parse_nlas(attrs.get(IFLA_LINKINFO, b""))
    kind = info[IFLA_INFO_KIND].rstrip(b"\0").decode() if IFLA_INFO_KIND in info else None
    alias = attrs[IFLA_IFALIAS].rstrip(b"\0").decode(errors="replace") if attrs.get(IFLA_IFALIAS) else None
    return Link(index, flags, kind, alias)


async def link_get(sock: Socket, name: str) -> Link | None:
    body = _IFINFO.pack(0, 0, 0, 0, 0) + nla(IFLA_IFNAME, name.encode() + b"\0")
    try:
        replies = await sock.request(RTM_GETLINK, _ACK, body)
    except NetlinkError as exc:
        if exc.code == 19:  # ENODEV
            return None
        raise
    return _decode_link(replies[0]) if replies else None


async def link_add_dummy(sock: Socket, name: str) -> None:
    body = (_IFINFO.pack(0, 0, 0, 0, 0) + nla(IFLA_IFNAME, name.encode() + b"\0")
            + nla(IFLA_LINKINFO | NLA_F_NESTED, nla(IFLA_INFO_KIND, b"dummy")))
    await sock.request(RTM_NEWLINK, _ACK | NLM_F_CREATE | NLM_F_EXCL, body)


async def link_set_alias(sock: Socket, index: int, alias: str) -> None:
    # The kernel takes IFLA_IFALIAS when changing a link, not when creating one.
    await sock.request(RTM_NEWLINK, _ACK, _IFINFO.pack(0, 0, index, 0, 0)
                       + nla(IFLA_IFALIAS, alias.encode() + b"\0"))


async def link_up(sock: Socket, index: int) -> None:
    await sock.request(RTM_NEWLINK, _ACK, _IFINFO.pack(0, 0, index, IFF_UP, IFF_UP))


async def link_delete(sock: Socket, index: int) -> None:
    await sock.request(RTM_DELLINK, _ACK, _IFINFO.pack(0, 0, index, 0, 0))


@dataclass(frozen=True)
class Address:
    index: int
    address: IPAddress
    prefixlen: int


async def addr_dump(sock: Socket, index: int) -> list[Address]:
    out = []
    for p in await sock.request(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, _IFADDR.pack(0, 0, 0, 0, 0)):
        _, prefixlen, _, _, idx = _IFADDR.unpack_from(p)
        attrs = parse_nlas(p, _IFADDR.size)
        raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
        if idx == index and raw:
            out.append(Address(idx, _ip(raw), prefixlen))
    return out


def _addr_body(index: int, ip: IPAddress, flags: int) -> bytes:
    return (_IFADDR.pack(family(ip), ip.max_prefixlen, flags, 0, index)
            + nla(IFA_LOCAL, ip.packed) + nla(IFA_ADDRESS, ip.packed))


async def addr_add(sock: Socket, index: int, ip: IPAddress, flags: int = 0) -> None:
    await sock.request(RTM_NEWADDR, _ACK | NLM_F_CREATE | NLM_F_EXCL, _addr_body(index, ip, flags))


async def addr_delete(sock: Socket, index: int, ip: IPAddress) -> None:
    await sock.request(RTM_DELADDR, _ACK, _addr_body(index, ip, 0))


def open_socket() -> Socket:
    return Socket(NETLINK_ROUTE, buffer=1 << 20)
