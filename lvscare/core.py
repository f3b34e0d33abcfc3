"""The daemon's decisions, with no I/O: the shell (``daemon.py``) feeds it what happened, with the
time passed in, and carries out what it returns.

It holds the health of every real server, the table last written and last read, fail-open
holds, and which operations follow from a health change and which repair somebody else's change.
What it has to say is returned as ``Event`` values (the shell logs them), so that every log line
of a state change can be checked by a host test without a kernel.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from lvscare.config import Config, Endpoint, RsKey, VirtualServer
from lvscare.health import Decision, Health, ProbeResult, State, decide, departed, initial, step
from lvscare.plan import (
    AddDest,
    DelDest,
    Op,
    ServiceKey,
    SetDest,
    Table,
    describe_op,
    desired_table,
    op_key,
    service_key,
)
from lvscare.snapshot import RealServerView, Snapshot, VirtualServerView

Level = Literal["debug", "info", "warning", "error"]


@dataclass(frozen=True)
class Event:
    """One log line: the event's name, its level and its fields."""

    name: str
    level: Level = "info"
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Transition:
    """A real server's health changed state."""

    key: RsKey
    old: Health
    new: Health
    result: ProbeResult

    @property
    def state_changed(self) -> bool:
        return self.new.state is not self.old.state

    def event(self) -> Event:
        r = self.result
        if self.new.departed:
            return Event("control-plane member that left stopped answering: out, its clients reset",
                         "warning", {"vs": str(self.key[0]), "rs": str(self.key[1]),
                                     "probe": r.outcome.value, "reason": r.detail or None})
        if not self.state_changed:  # only slowness changed; the state says whether it serves
            return Event("real server slow: kept, it answers PINGs" if self.new.slow else
                         "real server answers readiness in time again",
                         "warning" if self.new.slow else "info", {
                             "vs": str(self.key[0]), "rs": str(self.key[1]),
                             "state": self.new.state.value, "reason": r.detail or None})
        return Event("real server " + self.new.state.value, "info", {
            "vs": str(self.key[0]), "rs": str(self.key[1]), "was": self.old.state.value,
            "probe": r.outcome.value, "reason": r.detail or None, "latency": round(r.latency, 4)})


@dataclass(frozen=True)
class Reconciled:
    """What one reconcile's operations meant."""

    planned: list[Op]  # followed from a change of desired state
    repairs: list[Op]  # undid somebody else's change
    deleted: list[DelDest]  # real servers taken out: their clients are to be reset
    events: list[Event]


def access_of(vs: VirtualServer, cfg: Config) -> tuple[str, str | None]:
    """What decides the objects a virtual server's mode creates for its VIP, beyond the VIP:
    the interface that holds it in link mode. (The node address of route mode is corrected in
    place by the next ensure; an interface is not.)"""
    return vs.mode, cfg.iface if vs.mode == "link" else None


@dataclass(frozen=True)
class Reload:
    """The difference between the running configuration and a re-read one."""

    added: frozenset[RsKey]
    removed: frozenset[RsKey]
    # Virtual servers of the old configuration whose rules and VIP objects go, with the old
    # settings: dropped ones entirely, and those whose mode or interface changes (their VIP objects
    # are then created anew from the new configuration).
    dropped: tuple[VirtualServer, ...]
    moved: tuple[VirtualServer, ...]

    def event(self) -> Event:
        return Event("reloaded", "info", {
            "added": sorted(str(k[1]) for k in self.added),
            "removed": sorted(str(k[1]) for k in self.removed),
            "virtual_servers_removed": [str(service_key(v)) for v in self.dropped]})


def _keys(cfg: Config) -> set[RsKey]:
    return {(vs.endpoint, rs.endpoint) for vs in cfg.virtual_servers for rs in vs.real_servers}


def reload_diff(old: Config, new: Config) -> Reload:
    new_vs = {vs.endpoint: vs for vs in new.virtual_servers}
    dropped = tuple(vs for vs in old.virtual_servers if vs.endpoint not in new_vs)
    moved = tuple(vs for vs in old.virtual_servers if vs.endpoint in new_vs
                  and access_of(vs, old) != access_of(new_vs[vs.endpoint], new))
    return Reload(frozenset(_keys(new) - _keys(old)), frozenset(_keys(old) - _keys(new)),
                  dropped, moved)


class Core:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.health: dict[RsKey, Health] = {}
        self.decision: Decision | None = None
        self._last_healthy: dict[Endpoint, frozenset[Endpoint]] = {}
        self._held: frozenset[Endpoint] = frozenset()
        self._expected: Table = {}  # what the last reconcile made the kernel hold
        self._observed: Table = {}  # what it read before writing (connection counts)
        self._applied_once = False
        self.repairs = 0
        self.last_reconcile: float | None = None
        self.last_error: str | None = None
        # Where each real server's address came from: seed (--rs, the file), state (the
        # discovery state file) or discovered; absent means seed.
        self.sources: dict[Endpoint, str] = {}
        self.discovery_last_success: float | None = None

    @property
    def service_keys(self) -> list[ServiceKey]:
        return [service_key(vs) for vs in self.cfg.virtual_servers]

    def virtual_server(self, endpoint: Endpoint) -> VirtualServer | None:
        return next((vs for vs in self.cfg.virtual_servers if vs.endpoint == endpoint), None)

    def adopt(self, observed: Table, now: float) -> list[Event]:
        """Health before the first probe, from what the kernel already serves, so that a
        restarted daemon changes nothing until probes say so."""
        self._observed = observed
        adopted = []
        for vs in self.cfg.virtual_servers:
            existing = observed.get(service_key(vs))
            for rs in vs.real_servers:
                if existing is None:
                    h = initial(now, None)
                else:
                    dest = existing.dests.get(rs.endpoint)
                    h = initial(now, dest is not None and dest.weight > 0,
                                draining=dest is not None and dest.weight == 0)
                self.health[(vs.endpoint, rs.endpoint)] = h
            if existing is not None:
                adopted.append(str(vs.endpoint))
        return [Event("adopted existing rules", "info", {"virtual_servers": adopted})] if adopted else []

    def observe(self, key: RsKey, result: ProbeResult, now: float) -> Transition | None:
        """Feed one probe result; a Transition when the state or its slowness changed (the
        reconciler should run at once after a state change)."""
        old = self.health.get(key)
        vs = self.virtual_server(key[0])
        if old is None or vs is None:
            return None  # removed by a reload while the probe ran
        new = step(old, result, now, vs.health.rise, vs.health.fall)
        self.health[key] = new
        changed = (new.state is not old.state or new.slow is not old.slow
                   or (new.departed and new.dead and not old.dead))
        return Transition(key, old, new, result) if changed else None

    def desired(self, now: float) -> tuple[Table, list[Event]]:
        """The table health asks for now, and what changed about fail-open."""
        decision = decide(self.cfg.virtual_servers, self.health, self._last_healthy, now,
                          self.cfg.drain_period, self.cfg.all_down, self._active())
        self._last_healthy = dict(decision.last_healthy)
        self.decision = decision
        events = []
        for vs_ep in sorted(decision.all_down - self._held):
            kept = sorted(str(k[1]) for k, w in decision.weights.items() if k[0] == vs_ep and w)
            events.append(Event("all real servers down: keeping the last healthy ones (fail-open)",
                                "warning", {"vs": str(vs_ep), "kept": kept}))
        for vs_ep in sorted(self._held - decision.all_down):
            events.append(Event("a real server is healthy again: fail-open over", "info",
                                {"vs": str(vs_ep)}))
        self._held = decision.all_down
        return desired_table(self.cfg.virtual_servers, decision.weights), events

    @property
    def draining_shutdowns(self) -> bool:
        """A real server drains a graceful shutdown: its removal waits on the kernel's count of its
        connections, which must then be read fresh, not from before the last write."""
        return any(h.shutdown and not h.dead for h in self.health.values())

    def draining(self) -> frozenset[RsKey]:
        """Real servers that serve, or that the kernel holds at weight 0 while a graceful
        shutdown's or a departed member's connections finish."""
        held = {(key.endpoint, ep) for key, state in self._expected.items() for ep in state.dests}
        return frozenset(k for k, h in self.health.items()
                         if h.serving or (h.shutdown and not h.dead and k in held))

    def depart(self, keys: frozenset[RsKey], now: float) -> list[RsKey]:
        """Drain real servers that left the members; those that had not been leaving yet."""
        started = []
        for key in sorted(keys, key=lambda k: (k[0], k[1])):
            h = self.health.get(key)
            if h is not None and not h.departed:
                self.health[key] = departed(h, now)
                started.append(key)
        return started

    def rejoin(self, keys: frozenset[RsKey], now: float) -> None:
        """Members again after they had left: new real servers, probed before they serve."""
        for key in keys:
            h = self.health.get(key)
            if h is not None and h.departed:
                self.health[key] = Health(State.RECOVERING, since=now)

    def read(self, observed: Table) -> None:
        """The kernel's table, read now (connection counts for the decision)."""
        self._observed = observed

    def _active(self) -> dict[RsKey, int]:
        """Established connections per real server, as the kernel counted at the last read."""
        return {(key.endpoint, ep): d.active_conns for key, state in self._observed.items()
                for ep, d in state.dests.items()}

    def deletions(self, want: Table) -> list[RsKey]:
        """Real servers in the kernel, as last read, that ``want`` takes out and whose clients
        are to be reset: found before the reconcile deletes them."""
        out = []
        active = self._active()
        for key, state in want.items():
            # What was read before the last write, and what that write added: a real server
            # re-added and killed within one interval is in the second only.
            have: set[Endpoint] = set()
            for table in (self._observed, self._expected):
                if key in table:
                    have |= set(table[key].dests)
            out += [(key.endpoint, ep) for ep in sorted(have) if ep not in state.dests
                    and self._resets_clients((key.endpoint, ep), active)]
        return out

    def _resets_clients(self, key: RsKey, active: Mapping[RsKey, int]) -> bool:
        """A graceful drain (a shutdown, a member that left) that ends because the kernel counts
        none of its connections established leaves only connections being closed, by a server
        whose kernel answers for them: a reset could only cut a last answer still being read.
        Every other removal resets its clients: a death, a sick server's drain, a drain past
        its bound."""
        h = self.health.get(key)
        if h is None or h.dead or not h.shutdown:
            return True
        return bool(active.get(key))

    def _planned(self, op: Op) -> bool:
        """True if ``op`` follows from a change of desired state since the last reconcile."""
        if not self._applied_once:
            return True
        previous = self._expected.get(op_key(op))
        match op:
            case AddDest(_, d) | SetDest(_, d):
                return previous is None or previous.dests.get(d.endpoint) != d
            case DelDest(_, e):
                return previous is None or e in previous.dests
        return False

    def reconciled(self, ops: list[Op], want: Table, observed: Table) -> Reconciled:
        """Record that the kernel's table was brought to ``want`` by ``ops``. The reconcile as a
        whole succeeded only once ``succeeded`` is called: the VIP's access comes after."""
        planned = [op for op in ops if self._planned(op)]
        repairs = [op for op in ops if not self._planned(op)]
        events = []
        if repairs:
            self.repairs += len(repairs)
            events.append(Event("rules repaired", "info",
                                {"changes": [describe_op(op) for op in repairs]}))
        events += [Event("ipvs", "info", {"change": describe_op(op)}) for op in planned]
        self._applied_once = True
        self._expected = want
        self._observed = observed
        return Reconciled(planned, repairs, [op for op in ops if isinstance(op, DelDest)], events)

    def succeeded(self, wall: float) -> None:
        """The whole reconcile succeeded: table, client reset and every VIP's access. Only this
        stamps the time /healthz and the metrics call the last successful reconcile."""
        self.last_reconcile = wall
        self.last_error = None

    def failed(self, error: str) -> None:
        self.last_error = error

    def reload(self, new: Config, now: float) -> Reload:
        """Take ``new`` as the configuration, keeping the health of real servers in both."""
        diff = reload_diff(self.cfg, new)
        for key in diff.removed:
            self.health.pop(key, None)
        for key in diff.added:
            # A real server added at run time carries traffic after its first good probes.
            self.health[key] = Health(State.RECOVERING, since=now)
        for vs in diff.dropped:
            self._expected.pop(service_key(vs), None)
            self._last_healthy.pop(vs.endpoint, None)
        self.cfg = new
        self._applied_once = False  # what the new configuration adds is not a repair
        return diff

    def snapshot(self, sysctls: Mapping[str, str | None]) -> Snapshot:
        views = []
        all_down = self.decision.all_down if self.decision is not None else frozenset()
        for vs in self.cfg.virtual_servers:
            key = service_key(vs)
            written = self._expected.get(key)
            seen = self._observed.get(key)
            rss = []
            for rs in vs.real_servers:
                h = self.health.get((vs.endpoint, rs.endpoint))
                if h is None:
                    continue
                kernel = written if written is not None else seen
                dest = kernel.dests.get(rs.endpoint) if kernel is not None else None
                if dest is not None and written is not None:
                    # The weight as written, the connection counts as last read.
                    read = seen.dests.get(rs.endpoint) if seen is not None else None
                    dest = replace(dest, active_conns=read.active_conns if read else 0,
                                   inactive_conns=read.inactive_conns if read else 0)
                rss.append(RealServerView(rs, h, dest, self.sources.get(rs.endpoint, "seed")))
            views.append(VirtualServerView(vs, vs.endpoint in all_down, tuple(rss)))
        return Snapshot(self.cfg, tuple(views), self.last_reconcile, self.last_error, self.repairs,
                        dict(sysctls), self.discovery_last_success)
