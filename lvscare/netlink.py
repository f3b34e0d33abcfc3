"""A netlink socket for asyncio: many requests per ``send()``, replies matched by sequence number.

Shared by the IPVS (generic netlink) and route/link/address (rtnetlink) code. Messages are built
and parsed with ``struct`` by the callers; this module knows only the netlink header, attributes,
acknowledgements and dumps. pyroute2 did this job before; its import alone cost 10.5 MB of the
daemon's 49 MB resident memory (bench/failover.py, footprint), and it remains in the test
dependencies as an independent decoder of what we encode (tests/unit/test_*_encoding.py).
"""

from __future__ import annotations

import asyncio
import errno as errno_mod
import os
import socket
import struct

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLA_F_NESTED = 0x8000

NETLINK_ROUTE = 0
NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # error acks without the echoed request: smaller replies, more per batch

GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2

# Seconds to wait for the kernel's answer to one batch; it answers within send() in practice, so
# reaching this means the socket lost messages (ENOBUFS) and the caller should retry.
TIMEOUT = 10.0


class NetlinkError(OSError):
    """The kernel answered a request with an error (``errno``), or the socket failed."""

    @property
    def code(self) -> int:
        return self.errno or 0


def nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length & 3)


def parse_nlas(data: bytes, offset: int = 0, end: int | None = None) -> dict[int, bytes]:
    """Attributes of one level, by type (the nested and byte-order flags masked off)."""
    end = len(data) if end is None else end
    out: dict[int, bytes] = {}
    while offset + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return out


def header(msg_type: int, flags: int, seq: int, payload: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(payload), msg_type, flags, seq, 0) + payload


class Socket:
    """One netlink socket of ``protocol``. Replies are the payloads after the netlink header."""

    def __init__(self, protocol: int, buffer: int = 1 << 21) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        try:
            sock.bind((0, 0))
            sock.setblocking(False)
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):  # *BUFFORCE
                try:
                    sock.setsockopt(socket.SOL_SOCKET, force, buffer)
                except OSError:
                    sock.setsockopt(socket.SOL_SOCKET, opt, buffer)
        except BaseException:
            sock.close()
            raise
        self._sock: socket.socket | None = sock
        self._seq = 0
        self._lock = asyncio.Lock()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _next_seq(self, count: int) -> int:
        first = self._seq + 1
        self._seq = (self._seq + count) % 0x7FFFFFFF
        return first

    async def exchange(self, messages: list[tuple[int, int, bytes]]) -> list[tuple[list[bytes], int]]:
        """Send (type, flags, payload) requests in one send(); per request its reply payloads and
        errno (0 for success). Every request must ask for an ACK or be a dump, so that each ends
        with an ERROR or DONE message. A dump must be sent alone (one dump per socket at a time)."""
        sock = self._sock
        assert sock is not None, "socket closed"
        loop = asyncio.get_running_loop()
        async with self._lock:
            first = self._next_seq(len(messages))
            data = b"".join(header(kind, flags, first + i, payload)
                            for i, (kind, flags, payload) in enumerate(messages))
            replies: list[list[bytes]] = [[] for _ in messages]
            codes: list[int | None] = [None] * len(messages)
            pending = len(messages)

            async def transfer() -> None:
                nonlocal pending
                await loop.sock_sendall(sock, data)
                while pending:
                    chunk = await loop.sock_recv(sock, 1 << 17)
                    offset = 0
                    while offset + 16 <= len(chunk):
                        length, kind, _, seq, _ = struct.unpack_from("=IHHII", chunk, offset)
                        if length < 16:
                            break
                        index = seq - first
                        if 0 <= index < len(messages) and codes[index] is None:
                            if kind in (NLMSG_ERROR, NLMSG_DONE):
                                code = (-struct.unpack_from("=i", chunk, offset + 16)[0]
                                        if length >= 20 else 0)
                                codes[index] = code
                                pending -= 1
                            else:
                                replies[index].append(chunk[offset + 16:offset + length])
                        offset += (length + 3) & ~3

            try:
                # asyncio.wait_for, not asyncio.timeout (3.11): this runs on nodes' python3 >= 3.9.
                await asyncio.wait_for(transfer(), TIMEOUT)
            except asyncio.TimeoutError:
                raise NetlinkError(errno_mod.ETIMEDOUT, "netlink did not answer in time") from None
        return [(r, c or 0) for r, c in zip(replies, codes)]

    async def request(self, msg_type: int, flags: int, payload: bytes) -> list[bytes]:
        """One request; its replies, or NetlinkError with the kernel's errno."""
        ((replies, code),) = await self.exchange([(msg_type, flags, payload)])
        if code:
            raise NetlinkError(code, os.strerror(code))
        return replies


async def genl_family(sock: Socket, name: str) -> int:
    """The id of a generic netlink family. Asking also makes the kernel load the module that
    provides it (``ip_vs`` carries the alias ``net-pf-16-proto-16-family-IPVS``)."""
    body = struct.pack("=BBH", CTRL_CMD_GETFAMILY, 1, 0) + nla(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0")
    replies = await sock.request(GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK, body)
    for reply in replies:
        attrs = parse_nlas(reply, 4)
        if CTRL_ATTR_FAMILY_ID in attrs:
            return int(struct.unpack_from("=H", attrs[CTRL_ATTR_FAMILY_ID])[0])
    raise NetlinkError(errno_mod.ENOENT, f"no generic netlink family {name}")
