"""The ctnetlink delete request decodes, with pyroute2's own message class, to the tuple that
``conntrack -D -p tcp -s <client> --sport <p> -d <vip> --dport <p>`` would send. (That the kernel
deletes the entry, and why it must, is tested in tests/kernel: the idle client in link mode.)"""

from __future__ import annotations

import ipaddress
import socket

import pytest
from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

from lvscare import conntrack, netlink
from lvscare.config import Endpoint


@pytest.mark.parametrize(("client", "vip", "family"), [
    ("10.200.1.1", "10.103.97.2", socket.AF_INET),  # src and dst differ: a swap shows
    ("fd00:200:1::1", "fd00::97:2", socket.AF_INET6),
])
def test_delete_names_the_original_tuple(client: str, vip: str, family: int) -> None:
    src = Endpoint(ipaddress.ip_address(client), 49860)
    dst = Endpoint(ipaddress.ip_address(vip), 6443)
    kind = (conntrack.NFNL_SUBSYS_CTNETLINK << 8) | conntrack.IPCTNL_MSG_CT_DELETE
    data = netlink.header(kind, netlink.NLM_F_REQUEST | netlink.NLM_F_ACK, 3,
                          conntrack.delete_request(src, dst))
    msg = nfct_msg(data)
    msg.decode()
    assert msg["header"]["type"] == 0x102 and msg["nfgen_family"] == family
    assert msg["version"] == 0 and msg["res_id"] == 0
    orig = msg.get_attr("CTA_TUPLE_ORIG")
    ip = orig.get_attr("CTA_TUPLE_IP")
    proto = orig.get_attr("CTA_TUPLE_PROTO")
    key = "V4" if family == socket.AF_INET else "V6"
    assert ip.get_attr(f"CTA_IP_{key}_SRC") == client
    assert ip.get_attr(f"CTA_IP_{key}_DST") == vip
    assert proto.get_attr("CTA_PROTO_NUM") == socket.IPPROTO_TCP
    assert (proto.get_attr("CTA_PROTO_SRC_PORT"), proto.get_attr("CTA_PROTO_DST_PORT")) == (49860, 6443)
    assert len(data) == msg["header"]["length"]
