"""In-memory stand-ins for the daemon's effects (``lvscare.effects``) and an event loop whose clock
jumps, so that host tests run the whole daemon through minutes of probing in milliseconds.

The fakes keep the semantics the daemon relies on (EEXIST/ESRCH from the IPVS table, one state
of the node shared by every ``Access`` built for it), not the kernel's mechanisms: those are
proven by tests/kernel.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import selectors
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from lvscare.clientreset import Found, ResetResult
from lvscare.config import Config, Endpoint, HealthCheck, IPAddress, VirtualServer
from lvscare.effects import World
from lvscare.errors import KernelError
from lvscare.health import Outcome, ProbeResult
from lvscare.ipvs import ApplyResult, OpError
from lvscare.plan import (
    AddDest,
    AddService,
    DelDest,
    DelService,
    Op,
    ServiceKey,
    ServiceState,
    SetDest,
    SetService,
    Table,
)

# -- a loop whose clock jumps to the next timer instead of waiting -------------------------------


class _JumpingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    loop: VirtualTimeLoop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if ready or not timeout:
            return ready
        if timeout is None:  # no timer at all: only real I/O (a signal) can wake us
            return list(super().select(None))
        self.loop.virtual += timeout
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """``time()`` is virtual: when no callback is ready, the clock moves to the next timer.
    Real file descriptors (the signal wakeup pipe) are still polled, without blocking.

    ``start``: the clock's first reading, like a node's uptime (the daemon must not treat a
    small monotonic clock as "long ago")."""

    def __init__(self, start: float = 3.0) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self.virtual = start

    def time(self) -> float:
        return self.virtual


def run_virtual(coro: object, start: float = 3.0) -> object:
    loop = VirtualTimeLoop(start)
    try:
        return loop.run_until_complete(coro)  # type: ignore[arg-type]
    finally:
        loop.close()


# -- the IPVS table ------------------------------------------------------------------------------


class FakeIpvs:
    def __init__(self) -> None:
        self.table: Table = {}
        self.applied: list[Op] = []
        self.reads = 0
        self.is_open = False
        self.refuse: int | None = None  # an errno every write fails with, while set
        self.broken: OSError | None = None  # raised by every write, as a socket error, while set
        self.active: dict[str, int] = {}  # established connections per real server, as read

    async def open(self) -> FakeIpvs:
        self.is_open = True
        return self

    def close(self) -> None:
        self.is_open = False

    async def read(self, keys: Iterable[ServiceKey]) -> Table:
        self.reads += 1
        return {k: ServiceState(self.table[k].service, {
                    ep: replace(d, active_conns=self.active.get(str(ep), 0))
                    for ep, d in self.table[k].dests.items()})
                for k in keys if k in self.table}

    async def apply(self, ops: Sequence[Op]) -> ApplyResult:
        if self.broken is not None:
            raise self.broken
        result = ApplyResult()
        for op in ops:
            code = self.refuse or self._apply(op)
            if code:
                result.failed.append(OpError(op, code))
            else:
                result.applied.append(op)
                self.applied.append(op)
        return result

    def _apply(self, op: Op) -> int:
        match op:
            case AddService(s):
                if s.key in self.table:
                    return errno.EEXIST
                self.table[s.key] = ServiceState(s)
            case SetService(s):
                if s.key not in self.table:
                    return errno.ESRCH
                self.table[s.key].service = s
            case DelService(key):
                if self.table.pop(key, None) is None:
                    return errno.ESRCH
            case AddDest(key, d) | SetDest(key, d):
                state = self.table.get(key)
                if state is None:
                    return errno.ESRCH
                if (d.endpoint in state.dests) == isinstance(op, AddDest):
                    return errno.EEXIST if isinstance(op, AddDest) else errno.ENOENT
                state.dests[d.endpoint] = d
            case DelDest(key, endpoint):
                state = self.table.get(key)
                if state is None:
                    return errno.ESRCH
                if state.dests.pop(endpoint, None) is None:
                    return errno.ENOENT
        return 0

    def weights(self, vs: str = "10.103.97.2:6443") -> dict[str, int]:
        """Real servers of ``vs`` and their weights, as ``ipvsadm -Ln`` would list them."""
        for key, state in self.table.items():
            if str(key.endpoint) == vs:
                return {str(e): d.weight for e, d in state.dests.items()}
        return {}


# -- VIP access ----------------------------------------------------------------------------------


@dataclass
class FakeNode:
    """What the VIP's mode has created on the node: ("route", vip, source), ("addr", iface, vip),
    ("link", iface), ("nat", vip). Shared by every Access built for it, as the kernel is."""

    objects: set[tuple[str, ...]] = field(default_factory=set)
    ensures: list[tuple[str, str, bool]] = field(default_factory=list)  # (vip, iface, iptables)
    removes: list[tuple[str, str]] = field(default_factory=list)  # (vip, iface)
    open_accesses: int = 0
    failing: set[str] = field(default_factory=set)  # VIPs whose ensure fails, as a netlink error
    open_error: OSError | None = None  # what opening an access raises (EMFILE), if anything


class FakeAccess:
    def __init__(self, node: FakeNode, iface: str, node_ip: IPAddress | None) -> None:
        self.node, self.iface, self.node_ip = node, iface, node_ip
        self.opened = False

    async def open(self) -> FakeAccess:
        if self.node.open_error is not None:
            raise self.node.open_error
        self.node.open_accesses += 1
        self.opened = True
        return self

    def close(self) -> None:
        if self.opened:
            self.node.open_accesses -= 1
        self.opened = False

    async def ensure(self, vs: VirtualServer, *, iptables: bool = True) -> bool:
        vip = str(vs.endpoint.ip)
        self.node.ensures.append((vip, self.iface, iptables))
        if vip in self.node.failing:
            raise KernelError(f"cannot add route to {vip}: Network is unreachable", errno.ENETUNREACH)
        want: set[tuple[str, ...]] = set()
        if vs.mode == "route":
            source = str(self.node_ip or "auto")
            stale = {o for o in self.node.objects if o[:2] == ("route", vip) and o[2] != source}
            self.node.objects -= stale
            want = {("route", vip, source)}
        elif vs.mode == "link":
            want = {("link", self.iface), ("addr", self.iface, vip)}
            if iptables:
                want.add(("nat", vip))
        changed = bool(want - self.node.objects)
        self.node.objects |= want
        return changed

    async def remove_go_leftovers(self, vss: Sequence[VirtualServer]) -> list[str]:
        vips = {str(vs.endpoint.ip) for vs in vss}
        gone = sorted(o for o in self.node.objects if o[0] == "go" and o[1] in vips)
        self.node.objects -= set(gone)
        return [" ".join(o) for o in gone]

    async def remove(self, vs: VirtualServer) -> bool:
        vip = str(vs.endpoint.ip)
        self.node.removes.append((vip, self.iface))
        gone = {o for o in self.node.objects
                if o[:2] == ("route", vip) or o == ("addr", self.iface, vip) or o == ("nat", vip)}
        self.node.objects -= gone
        if not any(o[:2] == ("addr", self.iface) for o in self.node.objects):
            self.node.objects.discard(("link", self.iface))
        return bool(gone)


# -- probes --------------------------------------------------------------------------------------


class FakeProber:
    """Each real server answers as its fault says: ok, refused, timeout (nothing comes back
    within the probe's timeout), slow (PINGs answered, readiness late), or an HTTP status
    ("500")."""

    def __init__(self) -> None:
        self.faults: dict[Endpoint, str] = {}
        self.probes: list[tuple[float, Endpoint, HealthCheck]] = []
        self.prepared: list[HealthCheck] = []
        self._closed: dict[Endpoint, asyncio.Future[None]] = {}
        self.bad_ca: set[str] = set()  # CA paths prepare() refuses, as a missing file
        self.retained: set[Endpoint] | None = None  # the last retain(): None before any

    def prepare(self, hc: HealthCheck) -> None:
        from lvscare.errors import UserError

        if hc.ca in self.bad_ca:
            raise UserError(f"--health-ca ({hc.ca}): No such file or directory")
        self.prepared.append(hc)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def set_fault(self, rs: Endpoint, fault: str) -> None:
        self.faults[rs] = fault

    def kill(self, rs: Endpoint) -> None:
        """The server dies: refused from now on, and its open probe connection is closed."""
        self.faults[rs] = "refused"
        fut = self._closed.pop(rs, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def probe(self, rs: Endpoint, hc: HealthCheck) -> ProbeResult:
        loop = asyncio.get_running_loop()
        self.probes.append((loop.time(), rs, hc))
        fault = self.faults.get(rs, "ok")
        if fault == "timeout":
            await asyncio.sleep(hc.timeout)
            return ProbeResult(Outcome.TIMEOUT, hc.timeout, detail="no answer")
        await asyncio.sleep(0.002)
        if fault == "refused":
            return ProbeResult(Outcome.REFUSED, 0.002, detail="connection refused")
        if fault.isdigit():
            return ProbeResult(Outcome.HTTP_STATUS, 0.002, int(fault), f"HTTP {fault}")
        if fault == "slow":
            return ProbeResult(Outcome.SLOW, 0.002, None, "/readyz unanswered after 0.80s; PINGs answered")
        if fault == "shutdown":  # /readyz said so, or it stopped listening after its GOAWAY
            return ProbeResult(Outcome.SHUTDOWN, 0.002, None, "stopped listening after GOAWAY")
        if rs not in self._closed:
            self._closed[rs] = loop.create_future()
        return ProbeResult(Outcome.OK, 0.002, 200)

    def closed(self, rs: Endpoint, hc: HealthCheck) -> asyncio.Future[None] | None:
        fut = self._closed.get(rs)
        return fut if fut is not None and not fut.done() else None

    def retain(self, targets: Iterable[tuple[Endpoint, HealthCheck]]) -> None:
        self.retained = {rs for rs, _ in targets}

    def count(self, rs: Endpoint, since: float = 0.0) -> int:
        return sum(1 for t, r, _ in self.probes if r == rs and t >= since)


# -- client reset and sysctls --------------------------------------------------------------------


class FakeClientReset:
    """Every real server has one live client, found before its deletion as the kernel's
    table would show it (after the deletion the kernel flushes them)."""

    def __init__(self) -> None:
        self.found: list[tuple[str, str]] = []
        self.resets: list[tuple[str, str]] = []
        self.refuse = False
        self.kernel: FakeIpvs | None = None

    async def find(self, deleting: Sequence[tuple[VirtualServer, Endpoint]]) -> Found:
        assert self.kernel is not None
        in_kernel = [(vs, rs) for vs, rs in deleting if str(rs) in self.kernel.weights(str(vs.endpoint))]
        self.found += [(str(vs.endpoint), str(rs)) for vs, rs in in_kernel]
        return {(vs.endpoint, rs): [Endpoint(rs.ip, 50000)] for vs, rs in in_kernel if vs.mode != "none"}

    async def reset(self, deleted: Sequence[tuple[VirtualServer, Endpoint]], found: Found) -> ResetResult:
        if self.refuse:
            raise PermissionError(1, "Operation not permitted")
        done = [(vs, rs) for vs, rs in deleted if (vs.endpoint, rs) in found]
        self.resets += [(str(vs.endpoint), str(rs)) for vs, rs in done]
        return ResetResult({(vs.endpoint, rs): len(found[(vs.endpoint, rs)]) for vs, rs in done})

    def close(self) -> None:
        pass


class FakeSysctls:
    """``values`` as the kernel holds them; ``writable``: False as in the pod's daemon container."""

    def __init__(self) -> None:
        self.modes: list[set[str]] = []
        self.values: dict[str, str | None] = {"net/ipv4/vs/expire_nodest_conn": "1"}
        self.writable = True

    def ensure(self, modes: set[str]) -> list[str]:
        self.modes.append(modes)
        if self.values.get("net/ipv4/vs/expire_nodest_conn") == "1":
            return []
        if not self.writable:
            raise KernelError("cannot set sysctl net.ipv4.vs.expire_nodest_conn=1: Read-only file system")
        self.values["net/ipv4/vs/expire_nodest_conn"] = "1"
        return ["net.ipv4.vs.expire_nodest_conn"]

    def read(self) -> dict[str, str | None]:
        return dict(self.values)


class FakeLock:
    """The node's locks: ``others`` are held by another lvscare."""

    def __init__(self) -> None:
        self.others: set[str] = set()
        self.held: set[str] = set()
        self.ignored: list[str] = []

    def acquire(self, virtual_servers: Iterable[Endpoint]) -> bool:
        wanted = {str(v) for v in virtual_servers}
        if wanted & self.others:
            return False
        self.held = wanted
        return True

    def release(self) -> None:
        self.held = set()


@dataclass
class FakeWorld:
    ipvs: FakeIpvs = field(default_factory=FakeIpvs)
    node: FakeNode = field(default_factory=FakeNode)
    prober: FakeProber = field(default_factory=FakeProber)
    client_reset: FakeClientReset = field(default_factory=FakeClientReset)
    sysctls: FakeSysctls = field(default_factory=FakeSysctls)
    lock: FakeLock = field(default_factory=FakeLock)

    def __post_init__(self) -> None:
        self.client_reset.kernel = self.ipvs

    def world(self) -> World:
        return World(self.ipvs, lambda cfg: FakeAccess(self.node, cfg.iface, cfg.ip),
                     self.client_reset, self.prober, self.sysctls, self.lock)


def ep(text: str) -> Endpoint:
    host, _, port = text.rpartition(":")
    return Endpoint(ipaddress.ip_address(host.strip("[]")), int(port))


def config(rs: Sequence[str] = ("10.0.0.1:6443", "10.0.0.2:6443", "10.0.0.3:6443"),
           **kw: object) -> Config:
    from lvscare.config import build_config

    cli: dict[str, object] = {"vs": "10.103.97.2:6443", "rs": list(rs), "metrics-address": "off"}
    cli.update({k.replace("_", "-"): v for k, v in kw.items()})
    return build_config(cli, {})
