"""The kernel's IPVS table over generic netlink (pyroute2), and nothing else.

Everything pyroute2 gets wrong or leaves to the caller is handled here, so no other module needs to
know about it:

* the high-level ``"update"`` verb sends DEL: we never use the verbs, we build each message;
* IPv6 services need NETMASK as a prefix length in host byte order (pyroute2 types it as an IPv4
  address): we encode 128 natively;
* ``AsyncIPVS`` needs ``setup_endpoint()`` before the first request: ``open()`` does it;
* one pyroute2 call per rule costs a round trip: writes are sent many messages per ``send()`` and
  their acknowledgements collected afterwards.
"""

from __future__ import annotations

import asyncio
import errno as errno_mod
import ipaddress
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import AsyncIPVS
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import ipvs as genl

from lvscare.config import Endpoint
from lvscare.errors import KernelError
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
)
from lvscare.plan import Service as ServiceSpec

# Messages per send(). Each ack costs about 1 KiB of the receive buffer (skb truesize) until we
# read it; 256 of them fit well inside the 2 MiB buffer the writer socket asks for.
BATCH = 256

_V6_NETMASK = socket.inet_ntoa(struct.pack("=I", 128))  # u32 128 in host order, typed as ip4addr
_V4_NETMASK = "255.255.255.255"

_REQ = NLM_F_REQUEST | NLM_F_ACK
_FLAGS = {
    AddService: (genl.IPVS_CMD_NEW_SERVICE, _REQ | NLM_F_CREATE | NLM_F_EXCL),
    SetService: (genl.IPVS_CMD_SET_SERVICE, _REQ),
    DelService: (genl.IPVS_CMD_DEL_SERVICE, _REQ),
    AddDest: (genl.IPVS_CMD_NEW_DEST, _REQ | NLM_F_CREATE | NLM_F_EXCL),
    SetDest: (genl.IPVS_CMD_SET_DEST, _REQ),
    DelDest: (genl.IPVS_CMD_DEL_DEST, _REQ),
}
# Seconds to wait for the kernel's answer to one batch; it answers within send() in practice, so
# reaching this means the socket lost messages (ENOBUFS) and the caller should retry.
TIMEOUT = 10.0

# Above this many services one dump of all of them beats one lookup each.
READ_ALL_ABOVE = 32

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # error acks without the echoed request: smaller replies, more per batch
NLMSG_ERROR = 2
NETLINK_GENERIC = 16


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


def describe_op(op: Op) -> str:
    match op:
        case AddService(s) | SetService(s):
            verb = "add" if isinstance(op, AddService) else "update"
            return f"{verb} virtual server {s.key} ({s.scheduler})"
        case DelService(key):
            return f"delete virtual server {key}"
        case AddDest(key, d) | SetDest(key, d):
            verb = "add" if isinstance(op, AddDest) else "set"
            return f"{verb} real server {d.endpoint} weight {d.weight} on {key}"
        case DelDest(key, endpoint):
            return f"delete real server {endpoint} from {key}"
    raise AssertionError(op)


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


def _nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length & 3)


def _service_key_nlas(key: ServiceKey) -> bytes:
    ep = key.endpoint
    return (_nla(_SVC_AF, struct.pack("=H", ep.family))
            + _nla(_SVC_PROTOCOL, struct.pack("=H", key.protocol))
            + _nla(_SVC_ADDR, ep.ip.packed)
            + _nla(_SVC_PORT, struct.pack(">H", ep.port)))


def _service_nlas(spec: ServiceSpec) -> bytes:
    # NETMASK is read by the kernel as a raw u32: all ones for IPv4, the prefix length 128 in
    # host order for IPv6 (pyroute2 types it as an IPv4 address, which is how "0.0.0.128" fails).
    netmask = 0xFFFFFFFF if spec.key.endpoint.ip.version == 4 else 128
    return (_service_key_nlas(spec.key)
            + _nla(_SVC_SCHED_NAME, spec.scheduler.encode() + b"\0")
            + _nla(_SVC_FLAGS, struct.pack("=II", spec.flags, 0xFFFFFFFF))
            + _nla(_SVC_TIMEOUT, struct.pack("=I", spec.timeout))
            + _nla(_SVC_NETMASK, struct.pack("=I", netmask)))


def _dest_nlas(endpoint: Endpoint, dest: Dest | None) -> bytes:
    out = (_nla(_DEST_ADDR_FAMILY, struct.pack("=H", endpoint.family))
           + _nla(_DEST_ADDR, endpoint.ip.packed)
           + _nla(_DEST_PORT, struct.pack(">H", endpoint.port)))
    if dest is not None:
        out += (_nla(_DEST_FWD_METHOD, struct.pack("=I", dest.fwd_method))
                + _nla(_DEST_WEIGHT, struct.pack("=I", dest.weight))
                + _nla(_DEST_U_THRESH, struct.pack("=I", 0))
                + _nla(_DEST_L_THRESH, struct.pack("=I", 0)))
    return out


def encode_op(op: Op, family_id: int, seq: int) -> bytes:
    """One complete netlink message (header included) for one operation."""
    cmd, flags = _FLAGS[type(op)]
    match op:
        case AddService(s) | SetService(s):
            body = _nla(_CMD_ATTR_SERVICE, _service_nlas(s))
        case DelService(key):
            body = _nla(_CMD_ATTR_SERVICE, _service_key_nlas(key))
        case AddDest(key, d) | SetDest(key, d):
            body = (_nla(_CMD_ATTR_SERVICE, _service_key_nlas(key))
                    + _nla(_CMD_ATTR_DEST, _dest_nlas(d.endpoint, d)))
        case DelDest(key, endpoint):
            body = (_nla(_CMD_ATTR_SERVICE, _service_key_nlas(key))
                    + _nla(_CMD_ATTR_DEST, _dest_nlas(endpoint, None)))
    genl_header = struct.pack("=BBH", cmd, genl.GENL_VERSION, 0)
    return struct.pack("=IHHII", 20 + len(body), family_id, flags, seq, 0) + genl_header + body


def _service_attrs(key: ServiceKey) -> dict[str, Any]:
    ep = key.endpoint
    return {"attrs": [
        ("IPVS_SVC_ATTR_AF", ep.family),
        ("IPVS_SVC_ATTR_PROTOCOL", key.protocol),
        ("IPVS_SVC_ATTR_ADDR", str(ep.ip)),
        ("IPVS_SVC_ATTR_PORT", ep.port),
    ]}


def _message(cmd: int, attrs: list[tuple[str, Any]]) -> Any:
    msg = genl.ipvsmsg()
    msg["cmd"] = cmd
    msg["version"] = genl.GENL_VERSION
    msg["attrs"] = attrs
    return msg


def _endpoint(ip: str, port: int) -> Endpoint:
    return Endpoint(ipaddress.ip_address(ip), port)


def decode_service(msg: Any) -> ServiceSpec | None:
    """A service from a netlink reply; None for fwmark services, which lvscare never owns."""
    svc = msg.get_attr("IPVS_CMD_ATTR_SERVICE")
    addr = svc.get_attr("IPVS_SVC_ATTR_ADDR")
    if addr is None or svc.get_attr("IPVS_SVC_ATTR_FWMARK"):
        return None
    flags = svc.get_attr("IPVS_SVC_ATTR_FLAGS") or {"flags": 0}
    key = ServiceKey(_endpoint(addr, svc.get_attr("IPVS_SVC_ATTR_PORT")),
                     svc.get_attr("IPVS_SVC_ATTR_PROTOCOL"))
    # The kernel reports its internal HASHED bit (0x2); it is not ours to compare.
    return ServiceSpec(key, svc.get_attr("IPVS_SVC_ATTR_SCHED_NAME"),
                       flags.get("flags", 0) & ~0x2, svc.get_attr("IPVS_SVC_ATTR_TIMEOUT") or 0)


def decode_dest(msg: Any) -> Dest:
    d = msg.get_attr("IPVS_CMD_ATTR_DEST")
    return Dest(
        _endpoint(d.get_attr("IPVS_DEST_ATTR_ADDR"), d.get_attr("IPVS_DEST_ATTR_PORT")),
        d.get_attr("IPVS_DEST_ATTR_WEIGHT"),
        d.get_attr("IPVS_DEST_ATTR_FWD_METHOD") & 0x7,
        d.get_attr("IPVS_DEST_ATTR_ACTIVE_CONNS") or 0,
        d.get_attr("IPVS_DEST_ATTR_INACT_CONNS") or 0,
    )


class IPVS:
    """The kernel's IPVS table: open once, reuse for the life of the process.

    Reads go through pyroute2's ``AsyncIPVS`` (it resolves the generic netlink family, which also
    makes the kernel load ``ip_vs``, and decodes dumps). Writes go through a second socket of the
    same family, many messages per ``send()``, because the kernel answers a batch with one ack per
    message and a failed message does not stop the ones after it.
    """

    def __init__(self) -> None:
        self._sock: Any = None
        self._writer: socket.socket | None = None
        self._seq = 0
        self.writes = 0  # messages sent that change the table; tests assert idempotence with it

    async def open(self) -> IPVS:
        sock = AsyncIPVS()
        try:
            await sock.setup_endpoint()
        except NetlinkError as exc:
            sock.close()
            if exc.code in (errno_mod.ENOENT, errno_mod.EOPNOTSUPP):
                raise KernelError("IPVS is not available in this kernel: load it with "
                                  "'modprobe ip_vs' (and mount /lib/modules into the container)",
                                  exc.code) from None
            raise KernelError(f"cannot open IPVS netlink: {describe_errno(exc.code)}",
                              exc.code) from None
        except OSError as exc:
            sock.close()
            raise KernelError(f"cannot open IPVS netlink: {exc}", exc.errno) from None
        writer = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        writer.bind((0, 0))
        writer.setblocking(False)
        writer.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):  # *BUFFORCE
            try:
                writer.setsockopt(socket.SOL_SOCKET, force, 1 << 21)
            except OSError:
                writer.setsockopt(socket.SOL_SOCKET, opt, 1 << 21)
        self._sock = sock
        self._writer = writer
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def __aenter__(self) -> IPVS:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # -- reading -------------------------------------------------------------------------------

    async def _request(self, cmd: int, attrs: list[tuple[str, Any]], flags: int) -> list[Any]:
        async def collect() -> list[Any]:
            request = await self._sock.nlm_request(
                _message(cmd, attrs), msg_type=self._sock.prid, msg_flags=flags)
            return [m async for m in request if m.get("cmd") is not None]

        try:
            return await asyncio.wait_for(collect(), TIMEOUT)
        except TimeoutError:
            raise KernelError("IPVS netlink did not answer in time", errno_mod.ETIMEDOUT) from None

    async def _dests(self, key: ServiceKey) -> dict[Endpoint, Dest]:
        try:
            msgs = await self._request(genl.IPVS_CMD_GET_DEST,
                                       [("IPVS_CMD_ATTR_SERVICE", _service_attrs(key))],
                                       NLM_F_REQUEST | NLM_F_DUMP)
        except NetlinkError as exc:
            if exc.code == errno_mod.ESRCH:  # deleted between the two reads
                return {}
            raise KernelError(f"IPVS read of {key} failed: {describe_errno(exc.code)}",
                              exc.code) from None
        dests = (decode_dest(m) for m in msgs)
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
        for key in keys:
            try:
                msgs = await self._request(genl.IPVS_CMD_GET_SERVICE,
                                           [("IPVS_CMD_ATTR_SERVICE", _service_attrs(key))],
                                           _REQ)
            except NetlinkError as exc:
                if exc.code in (errno_mod.ESRCH, errno_mod.ENOENT):
                    continue
                raise KernelError(f"IPVS read of {key} failed: {describe_errno(exc.code)}",
                                  exc.code) from None
            spec = decode_service(msgs[0]) if msgs else None
            if spec is not None:
                table[key] = ServiceState(spec, await self._dests(key))
        return table

    async def read_all(self) -> Table:
        """Every TCP/UDP service in the kernel, ours or not."""
        table: Table = {}
        try:
            msgs = await self._request(genl.IPVS_CMD_GET_SERVICE, [], NLM_F_REQUEST | NLM_F_DUMP)
        except NetlinkError as exc:
            raise KernelError(f"IPVS dump failed: {describe_errno(exc.code)}", exc.code) from None
        for msg in msgs:
            spec = decode_service(msg)
            if spec is not None:
                table[spec.key] = ServiceState(spec, await self._dests(spec.key))
        return table

    # -- writing -------------------------------------------------------------------------------

    async def apply(self, ops: Sequence[Op]) -> ApplyResult:
        """Send ``ops`` in order, BATCH per send(); return which were applied and which failed."""
        result = ApplyResult()
        for start in range(0, len(ops), BATCH):
            chunk = ops[start:start + BATCH]
            codes = await asyncio.wait_for(self._send_batch(chunk), TIMEOUT)
            self.writes += len(chunk)
            for op, code in zip(chunk, codes, strict=True):
                if code:
                    result.failed.append(OpError(op, code))
                else:
                    result.applied.append(op)
        return result

    async def _send_batch(self, ops: Sequence[Op]) -> list[int]:
        writer = self._writer
        assert writer is not None, "IPVS.open() first"
        loop = asyncio.get_running_loop()
        family = self._sock.prid
        first = self._seq + 1
        self._seq += len(ops)
        data = b"".join(encode_op(op, family, first + i) for i, op in enumerate(ops))
        try:
            await loop.sock_sendall(writer, data)
        except OSError as exc:
            raise KernelError(f"IPVS netlink send failed: {exc}", exc.errno) from None
        codes: dict[int, int] = {}
        while len(codes) < len(ops):
            try:
                chunk = await loop.sock_recv(writer, 1 << 16)
            except OSError as exc:
                raise KernelError(f"IPVS netlink receive failed: {exc}", exc.errno) from None
            offset = 0
            while offset + 16 <= len(chunk):
                length, kind, _, seq, _ = struct.unpack_from("=IHHII", chunk, offset)
                if kind == NLMSG_ERROR and first <= seq < first + len(ops):
                    codes[seq] = -struct.unpack_from("=i", chunk, offset + 16)[0]
                offset += (length + 3) & ~3 if length else len(chunk)
        return [codes[first + i] for i in range(len(ops))]
