"""Reset the clients of real servers just deleted, now rather than at their next packet.

The order of the steps is the mechanism (``nudge.py`` says why each is needed): find the live
clients in the kernel's connection table before the deletion, then after it send each the packet
that expires its IPVS connection, wait for the kernel's timer, in link mode delete the flows'
conntrack entries, then send the packet the client answers and the node resets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from lvscare.config import Endpoint, VirtualServer
from lvscare.conntrack import Conntrack
from lvscare.nudge import EXPIRE_WAIT, Nudger, Target, read_clients

# Clients reset per reconcile at most. The VIP's clients are the node's own components (kubelet,
# kube-proxy: tens of connections); this bounds the memory and the packets of one deletion on a
# node where something else opened far more.
MAX_CLIENTS = 4096


Found = dict[Target, list[Endpoint]]


@dataclass(frozen=True)
class ResetResult:
    clients: dict[Target, int]
    truncated: bool = False  # more clients than MAX_CLIENTS: the rest reconnect on their own
    conntrack_error: str | None = None  # link mode: entries not deleted, clients not reset


class ClientReset:
    def __init__(self, limit: int = MAX_CLIENTS) -> None:
        self.limit = limit
        self._nudger = Nudger()
        self._conntrack = Conntrack()

    async def find(self, deleting: Sequence[tuple[VirtualServer, Endpoint]]) -> Found:
        """The live clients of real servers about to be deleted. Read before the deletion:
        since Linux 5.9, with expire_nodest_conn=1, IPVS drops a deleted real server's
        connections from its table one jiffy after the deletion, and a read after it finds none
        (the rare "nothing nudged" of earlier versions, which read after deleting)."""
        # In mode none the VIP is not an address of this node: the first packet, from the
        # client to the VIP, would leave the node for the network. Nothing is sent then.
        targets = [(vs.endpoint, rs) for vs, rs in deleting if vs.mode != "none"]
        if not targets:
            return {}
        return await asyncio.to_thread(read_clients, targets, self.limit)

    async def reset(self, deleted: Sequence[tuple[VirtualServer, Endpoint]],
                    found: Found) -> ResetResult:
        """Reset the clients ``find`` found of the real servers now deleted. Raises OSError
        when the packets cannot be sent at all (no CAP_NET_RAW)."""
        wanted = {(vs.endpoint, rs) for vs, rs in deleted if vs.mode != "none"}
        work = {t: clients for t, clients in found.items() if t in wanted and clients}
        if not work:
            return ResetResult({})
        for (vip, _), clients in work.items():
            self._nudger.expire(vip, clients)
        await asyncio.sleep(EXPIRE_WAIT)
        link = {vs.endpoint for vs, _ in deleted if vs.mode == "link"}
        flows = [(c, vip) for (vip, _), clients in work.items() if vip in link for c in clients]
        error = None
        if flows:
            try:
                await self._conntrack.forget(flows)
            except OSError as exc:
                error = str(exc)
        for (vip, _), clients in work.items():
            self._nudger.poke(vip, clients)
        counts = {t: len(c) for t, c in work.items()}
        return ResetResult(counts, sum(len(c) for c in found.values()) >= self.limit, error)

    def close(self) -> None:
        self._nudger.close()
        self._conntrack.close()
