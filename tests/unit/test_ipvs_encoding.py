"""The hand-written IPVS encoder must produce what pyroute2's own message class decodes to the
same attributes (the kernel's view is checked by tests/kernel)."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest
from pyroute2.netlink.generic import ipvs as genl

from lvscare.config import Endpoint
from lvscare.ipvs import GENL_VERSION, op_request
from lvscare.netlink import header
from lvscare.plan import (
    AddDest,
    AddService,
    DelDest,
    DelService,
    Dest,
    Op,
    Service,
    ServiceKey,
    SetDest,
    SetService,
)


def ep(host: str, port: int) -> Endpoint:
    return Endpoint(ipaddress.ip_address(host), port)


V4 = ServiceKey(ep("10.103.97.2", 6443))
V6 = ServiceKey(ep("fd00::10", 6443))


def encode_op(op: Op, family_id: int, seq: int) -> bytes:
    """One whole message, framed as ``IPVS.apply`` frames it for the socket."""
    cmd, body, flags = op_request(op)
    return header(family_id, flags, seq, struct.pack("=BBH", cmd, GENL_VERSION, 0) + body)


def decode(data: bytes):  # type: ignore[no-untyped-def]
    msg = genl.ipvsmsg(data)
    msg.decode()
    return msg


@pytest.mark.parametrize("key", [V4, V6])
def test_service_messages(key: ServiceKey) -> None:
    data = encode_op(AddService(Service(key, "wrr")), 33, 7)
    length, kind, _flags, seq, _ = struct.unpack_from("=IHHII", data)
    assert (length, kind, seq) == (len(data), 33, 7)
    msg = decode(data)
    assert msg["cmd"] == genl.IPVS_CMD_NEW_SERVICE
    svc = msg.get_attr("IPVS_CMD_ATTR_SERVICE")
    assert svc.get_attr("IPVS_SVC_ATTR_ADDR") == str(key.endpoint.ip)
    assert svc.get_attr("IPVS_SVC_ATTR_PORT") == 6443
    assert svc.get_attr("IPVS_SVC_ATTR_PROTOCOL") == socket.IPPROTO_TCP
    assert svc.get_attr("IPVS_SVC_ATTR_SCHED_NAME") == "wrr"
    netmask = svc.get_attr("IPVS_SVC_ATTR_NETMASK")
    expected = 0xFFFFFFFF if key is V4 else 128
    assert struct.unpack("=I", socket.inet_aton(netmask))[0] == expected
    assert decode(encode_op(SetService(Service(key, "rr")), 33, 8))["cmd"] == \
        genl.IPVS_CMD_SET_SERVICE
    deleted = decode(encode_op(DelService(key), 33, 9))
    assert deleted["cmd"] == genl.IPVS_CMD_DEL_SERVICE  # never pyroute2's DEL-for-"update"


def test_dest_messages() -> None:
    dest = Dest(ep("10.0.0.5", 6443), weight=7)
    msg = decode(encode_op(AddDest(V4, dest), 33, 1))
    assert msg["cmd"] == genl.IPVS_CMD_NEW_DEST
    d = msg.get_attr("IPVS_CMD_ATTR_DEST")
    assert d.get_attr("IPVS_DEST_ATTR_ADDR") == "10.0.0.5"
    assert d.get_attr("IPVS_DEST_ATTR_WEIGHT") == 7
    assert d.get_attr("IPVS_DEST_ATTR_FWD_METHOD") == 0  # masquerade
    assert msg.get_attr("IPVS_CMD_ATTR_SERVICE").get_attr("IPVS_SVC_ATTR_ADDR") == "10.103.97.2"
    assert decode(encode_op(SetDest(V4, dest), 33, 2))["cmd"] == genl.IPVS_CMD_SET_DEST
    gone = decode(encode_op(DelDest(V6, ep("fd00::5", 6443)), 33, 3))
    assert gone["cmd"] == genl.IPVS_CMD_DEL_DEST
    assert gone.get_attr("IPVS_CMD_ATTR_DEST").get_attr("IPVS_DEST_ATTR_ADDR") == "fd00::5"


def test_decoder_reads_what_pyroute2_encodes() -> None:
    """Replies as the kernel sends them (encoded here by pyroute2) decode to our model."""
    from lvscare.ipvs import decode_dest, decode_service

    msg = genl.ipvsmsg()
    msg["cmd"] = genl.IPVS_CMD_NEW_SERVICE
    msg["version"] = 1
    msg["attrs"] = [("IPVS_CMD_ATTR_SERVICE", {"attrs": [
        ("IPVS_SVC_ATTR_AF", socket.AF_INET6), ("IPVS_SVC_ATTR_PROTOCOL", socket.IPPROTO_TCP),
        ("IPVS_SVC_ATTR_ADDR", "fd00::10"), ("IPVS_SVC_ATTR_PORT", 6443),
        ("IPVS_SVC_ATTR_SCHED_NAME", "wlc"), ("IPVS_SVC_ATTR_FLAGS", {"flags": 2, "mask": 0}),
        ("IPVS_SVC_ATTR_TIMEOUT", 0)]})]
    msg.encode()
    spec = decode_service(msg.data[20:])
    assert spec == Service(V6, "wlc")  # the kernel's HASHED flag is not a difference

    msg = genl.ipvsmsg()
    msg["cmd"] = genl.IPVS_CMD_NEW_DEST
    msg["version"] = 1
    msg["attrs"] = [("IPVS_CMD_ATTR_DEST", {"attrs": [
        ("IPVS_DEST_ATTR_ADDR_FAMILY", socket.AF_INET), ("IPVS_DEST_ATTR_ADDR", "10.0.0.5"),
        ("IPVS_DEST_ATTR_PORT", 6443), ("IPVS_DEST_ATTR_FWD_METHOD", 0),
        ("IPVS_DEST_ATTR_WEIGHT", 3), ("IPVS_DEST_ATTR_ACTIVE_CONNS", 4),
        ("IPVS_DEST_ATTR_INACT_CONNS", 5)]})]
    msg.encode()
    dest = decode_dest(msg.data[20:], socket.AF_INET)
    assert dest == Dest(ep("10.0.0.5", 6443), 3)
    assert (dest.active_conns, dest.inactive_conns) == (4, 5)
