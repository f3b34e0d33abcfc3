"""The daemon's kernel calls at their limits, in the real kernel: what a mock of netlink would
never refuse."""

from __future__ import annotations

import sys

import pytest
from lvscare_rig.topology import Lab

FORGET_MANY = """
import asyncio, ipaddress
from lvscare.config import Endpoint
from lvscare.conntrack import Conntrack
vip = Endpoint(ipaddress.ip_address("10.103.97.2"), 6443)
flows = [(Endpoint(ipaddress.ip_address(f"10.200.{i // 250}.{i % 250 + 1}"), 40000 + i), vip)
         for i in range(4096)]
ct = Conntrack()
asyncio.run(ct.forget(flows))
ct.close()
print("forgot", len(flows))
"""


@pytest.mark.smoke
def test_forgetting_the_most_clients_at_once_does_not_overflow_the_netlink_socket(
        lab: Lab) -> None:
    """The client reset forgets up to 4,096 conntrack entries at once (clientreset.MAX_CLIENTS).
    None exists here, so each delete is answered ENOENT with the request copied back: sent in
    one go, those answers overflow the socket's buffer (measured: ENOBUFS from 1,024 deletes on;
    512 pass). Sent 256 at a time, as the IPVS writes, 4,096 pass."""
    lab.run("/run/modprobe", "nf_conntrack_netlink", check=False)  # the test kernel's wrapper
    out = lab.run(sys.executable, "-c", FORGET_MANY, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "forgot 4096"
