"""The daemon's boundary with the world: one small protocol for each kind of effect.

The shell (``daemon.py``) acts only through these. ``World.real()`` gives the kernel and network
implementations; the host tests give in-memory fakes (``tests/unit/fakes.py``) and run the whole
daemon without a kernel, the kernel tests prove the real ones. Modelled on kube-proxy's
injectable IPVS interface and httpx's transports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from lvscare.config import Config, Endpoint, HealthCheck, VirtualServer
from lvscare.health import ProbeResult
from lvscare.plan import Op, ServiceKey, Table

if TYPE_CHECKING:
    from lvscare.clientreset import Found, ResetResult
    from lvscare.ipvs import ApplyResult


class IpvsTable(Protocol):
    """The kernel's IPVS table (``ipvs.IPVS``)."""

    async def open(self) -> object: ...
    def close(self) -> None: ...
    async def read(self, keys: Iterable[ServiceKey]) -> Table: ...
    async def apply(self, ops: Sequence[Op]) -> ApplyResult: ...


class VipAccess(Protocol):
    """How node-local clients reach a VIP (``vip.Access``): route, link or none."""

    async def open(self) -> object: ...
    def close(self) -> None: ...

    async def ensure(self, vs: VirtualServer, *, iptables: bool = True) -> bool:
        """Create or repair what ``vs.mode`` needs; True if anything changed. ``iptables``: also
        check the NAT rule (a process per check, so the daemon does it less often)."""
        ...

    async def remove(self, vs: VirtualServer) -> bool: ...

    async def remove_go_leftovers(self, vss: Sequence[VirtualServer]) -> list[str]:
        """Remove what the Go lvscare left for these VIPs; say what was removed. Never raises:
        a leftover must not stop the daemon."""
        ...


class ClientReset(Protocol):
    """Resets the clients of real servers as they are deleted (``clientreset.ClientReset``):
    ``find`` before the deletion, ``reset`` after it."""

    async def find(self, deleting: Sequence[tuple[VirtualServer, Endpoint]]) -> Found: ...

    async def reset(self, deleted: Sequence[tuple[VirtualServer, Endpoint]],
                    found: Found) -> ResetResult:
        """Raises OSError when it cannot send at all (no CAP_NET_RAW)."""
        ...

    def close(self) -> None: ...


class Prober(Protocol):
    """Health probes (``prober.Prober``); ``probe`` never raises."""

    def prepare(self, hc: HealthCheck) -> None: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def probe(self, rs: Endpoint, hc: HealthCheck) -> ProbeResult: ...
    def closed(self, rs: Endpoint, hc: HealthCheck) -> asyncio.Future[None] | None: ...

    def retain(self, targets: Iterable[tuple[Endpoint, HealthCheck]]) -> None:
        """Drop the connections and state of every (real server, check) not in ``targets``."""
        ...


class Sysctls(Protocol):
    def ensure(self, modes: set[str]) -> list[str]: ...
    def read(self) -> dict[str, str | None]: ...


class Lock(Protocol):
    """One daemon per virtual server on a node (``nodelock.NodeLock``)."""

    ignored: list[str]  # holders the last acquire() did not count: not an lvscare

    def acquire(self, virtual_servers: Iterable[Endpoint]) -> bool: ...
    def release(self) -> None: ...


@dataclass
class World:
    """Everything the daemon acts on. ``access`` is built per configuration (it holds the
    interface and node address), so a reload builds it anew."""

    ipvs: IpvsTable
    access: Callable[[Config], VipAccess]
    client_reset: ClientReset
    prober: Prober
    sysctls: Sysctls
    lock: Lock

    @classmethod
    def real(cls) -> World:
        from lvscare import clientreset, ipvs, nodelock, prober, vip

        return cls(ipvs.IPVS(), lambda cfg: vip.Access(cfg.iface, cfg.ip),
                   clientreset.ClientReset(), prober.Prober(), vip.KernelSysctls(),
                   nodelock.NodeLock())
