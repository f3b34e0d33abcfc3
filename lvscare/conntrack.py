"""Forget connection-tracking entries over ctnetlink (the kernel's ``conntrack -D``).

Only the nudge (``nudge.py``) needs this, in link mode: there IPVS's connections are tracked and
source-NATed, and a dead connection's entry would rewrite the client's answer to the nudge like
the old connection, so that the node's reset never reached the client. Layouts from uapi
``linux/netfilter/nfnetlink.h`` and ``nfnetlink_conntrack.h``.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from lvscare.config import Endpoint
from lvscare.netlink import NLA_F_NESTED, NLM_F_ACK, NLM_F_REQUEST, NetlinkError, Socket, nla
from lvscare.rtnl import family

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_DELETE = 2
NFNETLINK_V0 = 0
CTA_TUPLE_ORIG = 1
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
BATCH = 256  # deletes per send(), as ipvs.BATCH


def delete_request(src: Endpoint, dst: Endpoint) -> bytes:
    """The body of a delete of the TCP entry whose original direction is ``src`` -> ``dst``."""
    v4 = src.ip.version == 4
    ips = (nla(CTA_IP_V4_SRC if v4 else CTA_IP_V6_SRC, src.ip.packed)
           + nla(CTA_IP_V4_DST if v4 else CTA_IP_V6_DST, dst.ip.packed))
    proto = (nla(CTA_PROTO_NUM, struct.pack("B", socket.IPPROTO_TCP))
             + nla(CTA_PROTO_SRC_PORT, struct.pack("!H", src.port))
             + nla(CTA_PROTO_DST_PORT, struct.pack("!H", dst.port)))
    tuple_ = nla(CTA_TUPLE_IP | NLA_F_NESTED, ips) + nla(CTA_TUPLE_PROTO | NLA_F_NESTED, proto)
    return struct.pack("!BBH", family(src.ip), NFNETLINK_V0, 0) + nla(CTA_TUPLE_ORIG | NLA_F_NESTED, tuple_)


class Conntrack:
    """A ctnetlink socket, opened on first use."""

    def __init__(self) -> None:
        self._sock: Socket | None = None

    async def forget(self, flows: list[tuple[Endpoint, Endpoint]]) -> None:
        """Delete the entries of these (client, VIP) flows; one already gone is no error.
        Raises ``NetlinkError`` (an ``OSError``) when the socket cannot be opened or used."""
        if not flows:
            return
        if self._sock is None:
            self._sock = Socket(NETLINK_NETFILTER, buffer=1 << 18)
        kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
        # As the IPVS writes: a batch per send(). Every ACK of a failed delete (ENOENT: already
        # gone) carries the request back, and thousands at once overflow the socket's buffer.
        for start in range(0, len(flows), BATCH):
            answers = await self._sock.exchange(
                [(kind, NLM_F_REQUEST | NLM_F_ACK, delete_request(c, v))
                 for c, v in flows[start:start + BATCH]])
            for _, code in answers:
                if code not in (0, errno.ENOENT):
                    raise NetlinkError(code, f"conntrack delete: {os.strerror(code)}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
