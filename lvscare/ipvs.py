"""The kernel's IPVS table over generic netlink, and nothing else.

Messages are encoded and decoded here with ``struct`` (uapi ``linux/ip_vs.h``) and sent through
``lvscare.netlink``: many per ``send()``, each acknowledged on its own, so a failed one does not
stop those after it. This also sidesteps pyroute2's IPVS traps, which an earlier version had to
work around: its ``"update"`` verb sends DEL, it types the IPv6 NETMASK as an IPv4 address, and
its per-message machinery costs more CPU than the kernel's work (bench/reconcile.py).
"""

from __future__ import annotations

import errno as errno_mod
import ipaddress
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from lvscare.config import Endpoint
from lvscare.errors import KernelError
from lvscare.netlink import (
    NETLINK_GENERIC,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NetlinkError,
    Socket,
    genl_family,
    nla,
    parse_nlas,
)
from lvscare.plan import (
    AddDest,
    AddService,
    DelDest,
    DelService,
    Dest,
    Op,
    ServiceKey,
    ServiceState,
    SetDest,
    SetService,
    Table,
    describe_op,
)
from lvscare.plan import Service as ServiceSpec

# Messages per send(). Each ack costs about 1 KiB of the receive buffer (skb truesize) until we
# read it; 256 of them fit well inside the 2 MiB buffer the writer socket asks for.
BATCH = 256

GENL_VERSION = 1
IPVS_CMD_NEW_SERVICE, IPVS_CMD_SET_SERVICE, IPVS_CMD_DEL_SERVICE, IPVS_CMD_GET_SERVICE = 1, 2, 3, 4
IPVS_CMD_NEW_DEST, IPVS_CMD_SET_DEST, IPVS_CMD_DEL_DEST, IPVS_CMD_GET_DEST = 5, 6, 7, 8

_REQ = NLM_F_REQUEST | NLM_F_ACK
_FLAGS = {
    AddService: (IPVS_CMD_NEW_SERVICE, _REQ | NLM_F_CREATE | NLM_F_EXCL),
    SetService: (IPVS_CMD_SET_SERVICE, _REQ),
    DelService: (IPVS_CMD_DEL_SERVICE, _REQ),
    AddDest: (IPVS_CMD_NEW_DEST, _REQ | NLM_F_CREATE | NLM_F_EXCL),
    SetDest: (IPVS_CMD_SET_DEST, _REQ),
    DelDest: (IPVS_CMD_DEL_DEST, _REQ),
}
# Above this many services one dump of all of them beats one lookup each.
READ_ALL_ABOVE = 32


def describe_errno(code: int) -> str:
    if code == errno_mod.EPERM:
        return "operation not permitted: IPVS needs CAP_NET_ADMIN (run as root)"
    if code == errno_mod.EEXIST:
        return "already exists"
    if code == errno_mod.ESRCH:
        return "no such virtual server"
    if code == errno_mod.ENOENT:
        return "not found (unknown scheduler, or no such real server)"
    if code == errno_mod.EINVAL:
        return "invalid argument"
    return errno_mod.errorcode.get(code, str(code)) + f" ({code})"


@dataclass(frozen=True)
class OpError:
    op: Op
    errno: int

    def __str__(self) -> str:
        return f"{describe_op(self.op)}: {describe_errno(self.errno)}"


@dataclass
class ApplyResult:
    applied: list[Op] = field(default_factory=list)
    failed: list[OpError] = field(default_factory=list)


# -- encoding ----------------------------------------------------------------------------------
# Writes are encoded here with struct rather than by pyroute2's generic NLA machinery, which costs
# more CPU per message than the kernel spends applying it (bench/reconcile.py). The layout is
# uapi/linux/ip_vs.h; tests/unit/test_ipvs_encoding.py decodes every message with pyroute2's own
# ipvsmsg to prove the two agree.

_SVC_AF, _SVC_PROTOCOL, _SVC_ADDR, _SVC_PORT = 1, 2, 3, 4
_SVC_SCHED_NAME, _SVC_FLAGS, _SVC_TIMEOUT, _SVC_NETMASK = 6, 7, 8, 9
_DEST_ADDR, _DEST_PORT, _DEST_FWD_METHOD, _DEST_WEIGHT = 1, 2, 3, 4
_DEST_U_THRESH, _DEST_L_THRESH, _DEST_ADDR_FAMILY = 5, 6, 11
_CMD_ATTR_SERVICE, _CMD_ATTR_DEST = 1, 2


def _service_key_nlas(key: ServiceKey) -> bytes:
    ep = key.endpoint
    return (nla(_SVC_AF, struct.pack("=H", ep.family))
            + nla(_SVC_PROTOCOL, struct.pack("=H", key.protocol))
            + nla(_SVC_ADDR, ep.ip.packed)
            + nla(_SVC_PORT, struct.pack(">H", ep.port)))


def _service_nlas(spec: ServiceSpec) -> bytes:
    # NETMASK is read by the kernel as a raw u32: all ones for IPv4, the prefix length 128 in
    # host order for IPv6 (pyroute2 types it as an IPv4 address, which is how "0.0.0.128" fails).
    netmask = 0xFFFFFFFF if spec.key.endpoint.ip.version == 4 else 128
    return (_service_key_nlas(spec.key)
            + nla(_SVC_SCHED_NAME, spec.scheduler.encode() + b"\0")
            + nla(_SVC_FLAGS, struct.pack("=II", spec.flags, 0xFFFFFFFF))
            + nla(_SVC_TIMEOUT, struct.pack("=I", spec.timeout))
            + nla(_SVC_NETMASK, struct.pack("=I", netmask)))


def _dest_nlas(endpoint: Endpoint, dest: Dest | None) -> bytes:
    out = (nla(_DEST_ADDR_FAMILY, struct.pack("=H", endpoint.family))
           + nla(_DEST_ADDR, endpoint.ip.packed)
           + nla(_DEST_PORT, struct.pack(">H", endpoint.port)))
    if dest is not None:
        out += (nla(_DEST_FWD_METHOD, struct.pack("=I", dest.fwd_method))
                + nla(_DEST_WEIGHT, struct.pack("=I", dest.weight))
                + nla(_DEST_U_THRESH, struct.pack("=I", 0))
                + nla(_DEST_L_THRESH, struct.pack("=I", 0)))
    return out


def op_request(op: Op) -> tuple[int, bytes, int]:
    cmd, flags = _FLAGS[type(op)]
    if isinstance(op, (AddService, SetService)):
        body = nla(_CMD_ATTR_SERVICE, _service_nlas(op.service))
    elif isinstance(op, DelService):
        body = nla(_CMD_ATTR_SERVICE, _service_key_nlas(op.key))
    elif isinstance(op, (AddDest, SetDest)):
        body = (nla(_CMD_ATTR_SERVICE, _service_key_nlas(op.key))
                + nla(_CMD_ATTR_DEST, _dest_nlas(op.dest.endpoint, op.dest)))
    else:
        body = (nla(_CMD_ATTR_SERVICE, _service_key_nlas(op.key))
                + nla(_CMD_ATTR_DEST, _dest_nlas(op.endpoint, None)))
    return cmd, body, flags


# -- decoding ----------------------------------------------------------------------------------


def _ip(raw: bytes, family: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(bytes(raw[:4] if family == socket.AF_INET else raw[:16]))


def decode_service(payload: bytes) -> ServiceSpec | None:
    """A service from the genl payload of a reply; None for fwmark services (never ours)."""
    svc = parse_nlas(parse_nlas(payload).get(_CMD_ATTR_SERVICE, b""))
    if _SVC_ADDR not in svc:
        return None
    family = struct.unpack("=H", svc[_SVC_AF])[0]
    key = ServiceKey(Endpoint(_ip(svc[_SVC_ADDR], family), struct.unpack(">H", svc[_SVC_PORT])[0]),
                     struct.unpack("=H", svc[_SVC_PROTOCOL])[0])
    flags = struct.unpack_from("=I", svc.get(_SVC_FLAGS, b"\0" * 8))[0]
    timeout = struct.unpack("=I", svc[_SVC_TIMEOUT])[0] if _SVC_TIMEOUT in svc else 0
    # The kernel reports its internal HASHED bit (0x2); it is not ours to compare.
    return ServiceSpec(key, svc[_SVC_SCHED_NAME].rstrip(b"\0").decode(), flags & ~0x2, timeout)


_DEST_ACTIVE_CONNS, _DEST_INACT_CONNS = 7, 8


def decode_dest(payload: bytes, family: int) -> Dest:
    d = parse_nlas(parse_nlas(payload).get(_CMD_ATTR_DEST, b""))
    if _DEST_ADDR_FAMILY in d:
        family = struct.unpack("=H", d[_DEST_ADDR_FAMILY])[0]

    def u32(kind: int) -> int:
        return struct.unpack("=I", d[kind])[0] if kind in d else 0

    return Dest(Endpoint(_ip(d[_DEST_ADDR], family), struct.unpack(">H", d[_DEST_PORT])[0]),
                u32(_DEST_WEIGHT), u32(_DEST_FWD_METHOD) & 0x7,
                u32(_DEST_ACTIVE_CONNS), u32(_DEST_INACT_CONNS))


class IPVS:
    """The kernel's IPVS table: open once, reuse for the life of the process."""

    def __init__(self) -> None:
        self._family = 0
        self._sock: Socket | None = None

    async def open(self) -> IPVS:
        try:
            sock = Socket(NETLINK_GENERIC)
        except OSError as exc:
            raise KernelError(f"cannot open IPVS netlink: {exc.strerror or exc}", exc.errno) from None
        try:
            self._family = await genl_family(sock, "IPVS")
        except NetlinkError as exc:
            sock.close()
            if exc.code in (errno_mod.ENOENT, errno_mod.EOPNOTSUPP):
                raise KernelError("IPVS is not available in this kernel: load it with "
                                  "'modprobe ip_vs' (and mount /lib/modules into the container)",
                                  exc.errno) from None
            raise KernelError(f"cannot open IPVS netlink: {describe_errno(exc.code)}",
                              exc.errno) from None
        self._sock = sock
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def __aenter__(self) -> IPVS:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def _exchange(self, messages: list[tuple[int, bytes, int]]) -> list[tuple[list[bytes], int]]:
        """Send (cmd, body, flags) requests in one send(); per request its reply payloads (after
        the genl header) and errno."""
        assert self._sock is not None, "IPVS.open() first"
        try:
            replies = await self._sock.exchange(
                [(self._family, flags, struct.pack("=BBH", cmd, GENL_VERSION, 0) + body)
                 for cmd, body, flags in messages])
        except NetlinkError as exc:
            raise KernelError(f"IPVS netlink: {exc.strerror or exc}", exc.errno) from None
        return [([p[4:] for p in payloads], code) for payloads, code in replies]

    # -- reading -------------------------------------------------------------------------------

    async def _dests(self, key: ServiceKey) -> dict[Endpoint, Dest]:
        body = nla(_CMD_ATTR_SERVICE, _service_key_nlas(key))
        ((payloads, code),) = await self._exchange(
            [(IPVS_CMD_GET_DEST, body, NLM_F_REQUEST | NLM_F_DUMP)])
        if code == errno_mod.ESRCH:  # deleted between the two reads
            return {}
        if code:
            raise KernelError(f"IPVS read of {key} failed: {describe_errno(code)}", code)
        dests = (decode_dest(p, key.endpoint.family) for p in payloads)
        return {d.endpoint: d for d in dests}

    async def read(self, keys: Iterable[ServiceKey]) -> Table:
        """The kernel's state of just these services (absent ones are left out of the result).

        A node running kube-proxy in IPVS mode can hold thousands of services; looking up only
        ours keeps every reconcile independent of that number.
        """
        keys = list(keys)
        if len(keys) > READ_ALL_ABOVE:
            everything = await self.read_all()
            return {k: everything[k] for k in keys if k in everything}
        table: Table = {}
        for start in range(0, len(keys), BATCH):
            chunk = keys[start:start + BATCH]
            replies = await self._exchange(
                [(IPVS_CMD_GET_SERVICE, nla(_CMD_ATTR_SERVICE, _service_key_nlas(k)), _REQ)
                 for k in chunk])
            for key, (payloads, code) in zip(chunk, replies):
                if code in (errno_mod.ESRCH, errno_mod.ENOENT):
                    continue
                if code:
                    raise KernelError(f"IPVS read of {key} failed: {describe_errno(code)}", code)
                spec = decode_service(payloads[0]) if payloads else None
                if spec is not None:
                    table[key] = ServiceState(spec, await self._dests(key))
        return table

    async def read_all(self) -> Table:
        """Every TCP/UDP service in the kernel, ours or not."""
        ((payloads, code),) = await self._exchange(
            [(IPVS_CMD_GET_SERVICE, b"", NLM_F_REQUEST | NLM_F_DUMP)])
        if code:
            raise KernelError(f"IPVS dump failed: {describe_errno(code)}", code)
        table: Table = {}
        for payload in payloads:
            spec = decode_service(payload)
            if spec is not None:
                table[spec.key] = ServiceState(spec, await self._dests(spec.key))
        return table

    # -- writing -------------------------------------------------------------------------------

    async def apply(self, ops: Sequence[Op]) -> ApplyResult:
        """Send ``ops`` in order, BATCH per send(); return which were applied and which failed."""
        result = ApplyResult()
        for start in range(0, len(ops), BATCH):
            chunk = ops[start:start + BATCH]
            replies = await self._exchange([op_request(op) for op in chunk])
            for op, (_, code) in zip(chunk, replies):
                if code:
                    result.failed.append(OpError(op, code))
                else:
                    result.applied.append(op)
        return result
