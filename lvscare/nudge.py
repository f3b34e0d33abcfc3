"""Tell clients of a removed real server at once that their connection is gone.

After a real server is deleted, a client's established connection through the VIP learns of it
only when the client next sends: with ``expire_nodest_conn`` IPVS drops that packet and forgets
the connection, and a later packet reaches the node's own stack, which answers with a reset. A
client waiting on a retransmission timer (backed off to 1.6 s, 3.2 s, ...) or idle on a keep-alive
connection therefore hangs for seconds or forever (measured: client recovery p99 3.3 s in
bench/failover.py).

So, for every IPVS connection of the removed real server, lvscare sends two packets on the node:

1. *client -> VIP*, as if from the client: IPVS finds the connection, sees its real server gone
   and expires it (the packet itself is dropped, or answered by the node's stack and ignored
   by the client because its sequence number is not one the client expects);
2. after ``EXPIRE_WAIT``, *VIP -> client*, a bare ACK with a sequence number outside the
   client's window: the client's TCP answers at once with an ACK of its own (RFC 793 / 5961),
   which now matches no IPVS connection and reaches the node's stack, where no socket holds
   VIP:port; the stack answers with a reset carrying exactly the sequence number the client
   expects. The client's connection fails with ECONNRESET and it reconnects, to a healthy real
   server.

In link mode the connection is also source-NATed in conntrack (``net.ipv4.vs.conntrack=1`` and
the MASQUERADE rule): until its entry is gone, the answer of a client on the node itself
(kubelet) is rewritten like the old connection and the node's reset goes to the NAT address,
never to the client. So in link mode the daemon deletes the entry (``conntrack.py``) between the
two packets.

Needs CAP_NET_RAW (and CAP_NET_ADMIN for conntrack). Nothing is sent to any address but the
connection's own client, from the VIP (an address of this node) or the client's own address
towards the VIP.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
from collections.abc import Iterable
from pathlib import Path

from lvscare.config import Endpoint, IPAddress

CONN_TABLE = Path("/proc/net/ip_vs_conn")
# IPVS expires a connection from a timer, not at once: until that runs (next jiffy), the client's
# answer to the second packet still finds it, and where netfilter tracks the flow (link mode's
# net.ipv4.vs.conntrack=1, or any conntrack-using iptables rule) IPVS then drops the answer. The
# client rate-limits such answers (500 ms), so there is no second chance: wait, then send.
EXPIRE_WAIT = 0.05
TCP_ACK = 0x10
# States in which the client may still be waiting on the connection.
_LIVE = {"ESTABLISHED", "SYN_RECV", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "SYN_SENT"}


def _addr(text: str) -> IPAddress:
    # IPv4 is printed as 8 hex digits, IPv6 in its usual colon form.
    if ":" in text:
        return ipaddress.ip_address(text)
    return ipaddress.IPv4Address(int(text, 16))


def _as_printed(endpoint: Endpoint) -> tuple[str, str]:
    """An address and port as ``/proc/net/ip_vs_conn`` prints them (%08X or %pI6, and %04X)."""
    ip = endpoint.ip
    return (f"{int(ip):08X}" if ip.version == 4 else ip.exploded), f"{endpoint.port:04X}"


Target = tuple[Endpoint, Endpoint]  # (VIP:port, real server)


def clients_of(lines: Iterable[str], targets: Iterable[Target],
               limit: int) -> dict[Target, list[Endpoint]]:
    """The live TCP clients of each (VIP, real server) in rows of ``/proc/net/ip_vs_conn``, at
    most ``limit`` in all.

    Rows are streamed and matched as text before anything is parsed: a node whose table holds
    hundreds of thousands of other connections (kube-proxy's services) costs one pass over the
    file and memory for our clients only.
    """
    wanted = {(*_as_printed(v), *_as_printed(d)): (v, d) for v, d in targets}
    vips = {key[0] for key in wanted}
    out: dict[Target, set[Endpoint]] = {t: set() for t in wanted.values()}
    found = 0
    for line in lines:
        if not any(v in line for v in vips):
            continue
        f = line.split()
        if len(f) < 8 or f[0] != "TCP" or f[7] not in _LIVE:
            continue
        target = wanted.get((f[3], f[4], f[5], f[6]))
        if target is None:
            continue
        try:
            client = Endpoint(_addr(f[1]), int(f[2], 16))
        except ValueError:
            continue
        if client not in out[target]:
            out[target].add(client)
            found += 1
            if found >= limit:
                break
    return {t: sorted(c, key=str) for t, c in out.items() if c}


def read_clients(targets: Iterable[Target], limit: int,
                 path: Path = CONN_TABLE) -> dict[Target, list[Endpoint]]:
    """``clients_of`` the kernel's table; blocking file I/O, so the daemon runs it in a thread."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return clients_of(fh, targets, limit)
    except OSError:
        return {}


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_packet(src: Endpoint, dst: Endpoint, seq: int, ack: int, flags: int = TCP_ACK) -> bytes:
    """A whole IP packet (header included) carrying one TCP segment without payload."""
    tcp = struct.pack("!HHIIBBHHH", src.port, dst.port, seq, ack, 5 << 4, flags, 1024, 0, 0)
    if src.ip.version == 4:
        pseudo = src.ip.packed + dst.ip.packed + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
        tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, socket.IPPROTO_TCP, 0,
                         src.ip.packed, dst.ip.packed)
        ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
        return ip + tcp
    pseudo = src.ip.packed + dst.ip.packed + struct.pack("!I3xB", len(tcp), socket.IPPROTO_TCP)
    tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), socket.IPPROTO_TCP, 64, src.ip.packed,
                      dst.ip.packed)
    return ip6 + tcp


def packets(vip: Endpoint, client: Endpoint) -> list[tuple[bytes, IPAddress]]:
    """The two packets for one connection, each with the address to send it to."""
    # Sequence numbers far from anything live: never accepted as data, only answered.
    return [(tcp_packet(client, vip, 0, 0), vip.ip), (tcp_packet(vip, client, 0x7FFF0000, 0), client.ip)]


class Nudger:
    """Sends the packets over raw sockets (one per family, opened on first use)."""

    def __init__(self) -> None:
        self._socks: dict[int, socket.socket] = {}

    def _sock(self, version: int) -> socket.socket:
        if version not in self._socks:
            family = socket.AF_INET if version == 4 else socket.AF_INET6
            s = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
            s.setblocking(False)
            self._socks[version] = s
        return self._socks[version]

    def expire(self, vip: Endpoint, clients: Iterable[Endpoint]) -> None:
        """First packets. Raises OSError without CAP_NET_RAW."""
        for client in clients:
            self._send(*packets(vip, client)[0])

    def poke(self, vip: Endpoint, clients: Iterable[Endpoint]) -> None:
        """Second packets, once IPVS has let go of the connections (see EXPIRE_WAIT)."""
        for client in clients:
            self._send(*packets(vip, client)[1])

    def _send(self, data: bytes, to: IPAddress) -> None:
        sock = self._sock(to.version)  # PermissionError here: no CAP_NET_RAW
        # EPERM from sendto is netfilter dropping the packet, not a missing capability: IPVS drops
        # the first packet when it has a connection tracked (link mode), having expired it, which
        # is all that packet is for. A full buffer or an unroutable client loses one nudge.
        with contextlib.suppress(OSError):
            sock.sendto(data, (str(to), 0))

    def close(self) -> None:
        for s in self._socks.values():
            s.close()
        self._socks.clear()
