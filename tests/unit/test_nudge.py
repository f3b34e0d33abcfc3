"""Reading the IPVS connection table and building the nudge packets (their effect on real
clients is tested in tests/kernel/test_daemon.py)."""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
import tracemalloc
from pathlib import Path

import pytest

from lvscare.config import Endpoint
from lvscare.nudge import Nudger, clients_of, packets, read_clients, tcp_packet

TABLE = """Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData
TCP 0AC80101 D2F0 0A676102 192B 0AC80302 192B ESTABLISHED     899
TCP 0AC80101 D2F2 0A676102 192B 0AC80302 192B TIME_WAIT        60
TCP 0AC80101 D2F4 0A676102 192B 0AC80202 192B ESTABLISHED     899
UDP 0AC80101 0035 0A676102 0035 0AC80302 0035 UDP             300
TCP fd00:0200:0001:0000:0000:0000:0000:0001 A000 fd00:0000:0000:0000:0000:0000:0097:0002 192B \
fd00:0200:0003:0000:0000:0000:0000:0002 192B ESTABLISHED     899
"""


def ep(text: str) -> Endpoint:
    host, _, port = text.rpartition(":")
    return Endpoint(ipaddress.ip_address(host.strip("[]")), int(port))


ROWS = TABLE.replace("\\\n", "").splitlines()
V4, V6 = ep("10.103.97.2:6443"), ep("[fd00::97:2]:6443")


def test_connection_table_is_read_for_ipv4_and_ipv6() -> None:
    found = clients_of(ROWS, [(V4, ep("10.200.3.2:6443")), (V6, ep("[fd00:200:3::2]:6443"))], 100)
    assert found == {(V4, ep("10.200.3.2:6443")): [ep("10.200.1.1:54000")],  # not TIME_WAIT, not UDP
                     (V6, ep("[fd00:200:3::2]:6443")): [ep("[fd00:200:1::1]:40960")]}


def test_only_live_connections_of_that_real_server_are_nudged() -> None:
    assert clients_of(ROWS, [(V4, ep("10.200.2.2:6443"))], 100) == {
        (V4, ep("10.200.2.2:6443")): [ep("10.200.1.1:54004")]}
    assert clients_of(ROWS, [(V4, ep("10.200.9.9:6443"))], 100) == {}
    assert clients_of(ROWS, [(ep("10.103.97.3:6443"), ep("10.200.3.2:6443"))], 100) == {}


def test_a_large_table_is_streamed_and_the_clients_are_bounded(tmp_path: Path) -> None:
    """500,000 connections of other services and 20,000 of ours: one pass, at most ``limit``
    clients kept, memory for those only."""
    table = tmp_path / "ip_vs_conn"
    with table.open("w") as fh:
        fh.write(TABLE.splitlines()[0] + "\n")
        other = "TCP 0A000001 {:04X} 0A600001 01BB 0A000102 01BB ESTABLISHED     899\n"
        ours = "TCP 0AC8{:04X} D2F0 0A676102 192B 0AC80302 192B ESTABLISHED     899\n"
        for i in range(500_000):
            fh.write(other.format(i % 65536))
            if i % 25 == 0:
                fh.write(ours.format(i // 25))
    tracemalloc.start()
    started = time.process_time()
    found = read_clients([(V4, ep("10.200.3.2:6443"))], limit=4096, path=table)
    cpu = time.process_time() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(found[(V4, ep("10.200.3.2:6443"))]) == 4096
    assert peak < 8 << 20, peak  # the 83 MB of the whole table parsed at once is not needed
    print(f"500k-row table: {cpu:.2f}s CPU, peak {peak / 1e6:.1f} MB")


def _sum16(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data + b"\0" * (len(data) % 2)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def test_packets_carry_valid_headers_and_checksums() -> None:
    vip, client = ep("10.103.97.2:6443"), ep("10.200.1.1:54000")
    (to_vip, a1), (to_client, a2) = packets(vip, client)
    assert (a1, a2) == (vip.ip, client.ip)
    for pkt, src, dst in ((to_vip, client, vip), (to_client, vip, client)):
        assert _sum16(pkt[:20]) == 0xFFFF  # IPv4 header checksum
        assert pkt[9] == socket.IPPROTO_TCP and pkt[12:16] == src.ip.packed and pkt[16:20] == dst.ip.packed
        tcp = pkt[20:]
        sport, dport, _, _, off, flags = struct.unpack("!HHIIBB", tcp[:14])
        assert (sport, dport, off >> 4, flags) == (src.port, dst.port, 5, 0x10)
        pseudo = src.ip.packed + dst.ip.packed + struct.pack("!BBH", 0, 6, len(tcp))
        assert _sum16(pseudo + tcp) == 0xFFFF
    v6 = tcp_packet(ep("[fd00::97:2]:6443"), ep("[fd00:200:1::1]:40960"), 1, 0)
    assert v6[0] >> 4 == 6 and v6[6] == socket.IPPROTO_TCP and struct.unpack("!H", v6[4:6])[0] == 20
    pseudo = v6[8:40] + struct.pack("!I3xB", 20, 6)
    assert _sum16(pseudo + v6[40:]) == 0xFFFF


class _DroppingSocket:
    """A raw socket whose packets netfilter drops: sendto fails with EPERM, as the kernel's
    does when IPVS drops the packet that expires a tracked connection."""

    sent = 0

    def setblocking(self, flag: bool) -> None:
        pass

    def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
        _DroppingSocket.sent += 1
        raise PermissionError(1, "Operation not permitted")

    def close(self) -> None:
        pass


def test_a_dropped_packet_is_not_taken_for_a_missing_capability(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    vip, clients = ep("10.103.97.2:6443"), [ep("10.200.99.2:40000"), ep("10.200.99.2:40002")]
    nudger = Nudger()
    monkeypatch.setattr(_DroppingSocket, "sent", 0)  # a test run twice in one process starts again
    monkeypatch.setattr(socket, "socket", lambda *a: _DroppingSocket())
    nudger.expire(vip, clients)
    nudger.poke(vip, clients)
    assert _DroppingSocket.sent == 4  # every packet tried, none raised


def test_a_missing_capability_is_reported(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def refuse(*args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(socket, "socket", refuse)
    with pytest.raises(PermissionError):
        Nudger().expire(ep("10.103.97.2:6443"), [ep("10.200.99.2:40000")])


async def test_no_reset_packet_leaves_a_node_in_mode_none(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """In mode none the VIP is not local: a packet to it would go out to the network."""
    from lvscare import clientreset
    from lvscare.config import RealServer, VirtualServer

    def table(*args: object, **kw: object) -> dict[object, list[Endpoint]]:
        return {(V4, ep("10.200.3.2:6443")): [ep("10.200.1.1:54000")]}

    sent: list[bytes] = []
    monkeypatch.setattr(clientreset, "read_clients", table)
    monkeypatch.setattr(Nudger, "_send", lambda self, data, to: sent.append(data))
    reset = clientreset.ClientReset()
    none = VirtualServer(V4, (RealServer(ep("10.200.3.2:6443")),), mode="none")
    deleted = [(none, ep("10.200.3.2:6443"))]
    assert await reset.find(deleted) == {}
    assert (await reset.reset(deleted, table())).clients == {}  # type: ignore[arg-type]
    assert sent == []
    routed = [(VirtualServer(V4, none.real_servers, mode="route"), ep("10.200.3.2:6443"))]
    found = await reset.find(routed)
    assert (await reset.reset(routed, found)).clients == {(V4, ep("10.200.3.2:6443")): 1}
    assert len(sent) == 2
    reset.close()
