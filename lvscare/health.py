"""Health of each real server, and the weights that follow from it. Pure functions only.

States: ``healthy`` -> (a failure) -> ``failing`` -> (``fall`` failures) -> ``down`` ->
(a success) -> ``recovering`` -> (``rise`` successes) -> ``healthy``.

What a failure means decides what happens in the kernel:

* dead (refused, reset, timeout, TLS failure): the real server is deleted, so that with
  ``expire_nodest_conn=1`` its established connections end at their next packet and clients
  reconnect at once. A refused or reset connection is conclusive (nothing listens) and takes the
  server down without waiting for ``fall``.
* unhealthy (an HTTP status that does not count): weight 0 first, so established connections
  finish (an apiserver in its shutdown delay still serves them); deleted after the drain period,
  or at once if it turns dead.
* shutting down (readiness answers ``[-]shutdown failed``, or the server stopped listening right
  after a GOAWAY(NO_ERROR)): a graceful shutdown still serving what it accepted. Weight 0 at once
  (no new connections), never reset: deleted only when the kernel shows none of its connections
  established any more, or when it turns dead (timeout, reset, TLS), or after
  ``SHUTDOWN_DRAIN_MAX``. A refused connection then is the closed listener, not a death.
* slow (HTTP/2 only: PINGs answered, the readiness request not in time): alive but overloaded.
  Neither a success nor a failure: a serving real server stays serving (marked ``slow``), one
  that is out stays out until it answers readiness in time. Ejecting a server for slowness moves
  its load onto the others and makes them slow in turn (docs/design.md, "Slow is not dead").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import Enum

from lvscare.config import Endpoint, RsKey, VirtualServer


class _Text(str, Enum):
    """enum.StrEnum (3.11) for the nodes' python3 >= 3.9: compares and prints as its value."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return str(self.value).__format__(spec)


class State(_Text):
    HEALTHY = "healthy"
    FAILING = "failing"
    DOWN = "down"
    RECOVERING = "recovering"


class Outcome(_Text):
    OK = "ok"
    REFUSED = "refused"
    RESET = "reset"
    TIMEOUT = "timeout"
    TLS = "tls"
    HTTP_STATUS = "http_status"
    ERROR = "error"
    SLOW = "slow"
    SHUTDOWN = "shutdown"  # /readyz says shutting down, or it stopped listening after a GOAWAY

    @property
    def dead(self) -> bool:
        return self not in (Outcome.OK, Outcome.HTTP_STATUS, Outcome.SLOW, Outcome.SHUTDOWN)

    @property
    def conclusive(self) -> bool:
        return self in (Outcome.REFUSED, Outcome.RESET)


@dataclass(frozen=True)
class ProbeResult:
    outcome: Outcome
    latency: float = 0.0
    status: int | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


@dataclass(frozen=True)
class Health:
    state: State = State.HEALTHY
    successes: int = 0
    failures: int = 0
    since: float = 0.0
    dead: bool = False  # the failure that took it down (or keeps it down) was "dead"
    drain_since: float | None = None  # weight 0 since; None when not draining
    last: ProbeResult | None = None
    slow: bool = False  # alive, readiness late (only HTTP/2 probes tell)
    shutdown: bool = False  # draining a graceful shutdown: out when its connections end
    departed: bool = False  # left the control plane's members while serving: drained, never back

    @property
    def serving(self) -> bool:
        """Whether it should take new connections."""
        return self.state in (State.HEALTHY, State.FAILING)


def initial(now: float, present: bool | None = True, draining: bool = False) -> Health:
    """Health before any probe. ``present``: the kernel already serves it (True), the kernel
    has the virtual server but not it (False: wait for probes), or a fresh start (None).
    ``draining``: the kernel holds it at weight 0 (a restarted daemon's predecessor was draining
    it): it stays so, its clients untouched, until a probe says what it is."""
    if draining:
        return Health(State.DOWN, since=now, drain_since=now, shutdown=True)
    if present is False:
        return Health(State.DOWN, since=now, dead=True)
    return Health(State.HEALTHY, since=now)


def departed(h: Health, now: float) -> Health:
    """A serving real server that left the members (kube-apiserver removes itself from the
    Endpoints at SIGTERM, before its listener closes): weight 0, its connections left to finish,
    as a graceful shutdown's."""
    if h.departed:
        return h
    return Health(State.DOWN, since=now, drain_since=now, last=h.last, shutdown=True, departed=True)


def step(h: Health, result: ProbeResult, now: float, rise: int, fall: int) -> Health:
    """The health after one probe result."""
    if h.departed:
        # No longer a member: no answer brings it back; a member again is a new real server
        # (Core.rejoin). Its drain ends early, with its clients reset, only when it is silent
        # for ``fall`` probes in a row, as a serving one goes: a busy node's single late answer
        # must not cut what it serves. A refusal or a reset is no death here: it comes from the
        # server's own kernel, which closes the connections of a process that is gone, and
        # kube-apiserver closes its listener at the end of its shutdown delay and goes on
        # answering what is in flight (a probe that missed its goodbye sees only the refusal).
        if not result.outcome.dead or result.outcome in (Outcome.REFUSED, Outcome.RESET):
            return replace(h, failures=0, last=result)
        if h.failures + 1 >= fall:
            return replace(h, dead=True, shutdown=False, failures=h.failures + 1, last=result)
        return replace(h, failures=h.failures + 1, last=result)
    if result.outcome is Outcome.SLOW:
        if h.state in (State.HEALTHY, State.FAILING):
            return replace(h, state=State.HEALTHY, failures=0, drain_since=None, dead=False,
                           since=h.since if h.state is State.HEALTHY else now, slow=True,
                           last=result)
        return replace(h, slow=True, last=result)
    if h.slow:
        h = replace(h, slow=False)
    stopped = result.outcome is Outcome.REFUSED and h.shutdown and not h.dead
    if result.outcome is Outcome.SHUTDOWN or stopped:
        # Asked to stop, or its listener closed while shutting down: no new connections, and
        # what it serves is left to finish. Not a failure that needs `fall` confirmations.
        if h.dead and not h.serving:
            return replace(h, state=State.DOWN, successes=0, last=result)
        return Health(State.DOWN, successes=0, failures=h.failures + 1,
                      since=h.since if h.state is State.DOWN else now,
                      drain_since=h.drain_since if not h.serving and h.drain_since is not None
                      else now, last=result, shutdown=True)
    if h.shutdown and not result.ok and not result.outcome.dead:
        h = replace(h, shutdown=False)  # sick after all (a check other than shutdown fails)
    if result.ok:
        if h.state in (State.HEALTHY, State.FAILING):
            return replace(h, state=State.HEALTHY, successes=h.successes + 1, failures=0,
                           since=h.since if h.state is State.HEALTHY else now,
                           drain_since=None, dead=False, last=result)
        successes = h.successes + 1 if h.state is State.RECOVERING else 1
        if successes >= rise:
            return Health(State.HEALTHY, successes=successes, since=now, last=result)
        return replace(h, state=State.RECOVERING, successes=successes, failures=0,
                       since=h.since if h.state is State.RECOVERING else now, last=result,
                       shutdown=False)

    dead = result.outcome.dead
    failures = h.failures + 1
    if h.state in (State.DOWN, State.RECOVERING):
        # Still down; a dead result ends a drain early.
        return replace(h, state=State.DOWN, successes=0, failures=failures,
                       since=h.since if h.state is State.DOWN else now,
                       dead=h.dead or dead, last=result, shutdown=h.shutdown and not dead)
    if failures >= fall or (dead and result.outcome.conclusive):
        return Health(State.DOWN, successes=0, failures=failures, since=now, dead=dead,
                      drain_since=None if dead else now, last=result)
    return replace(h, state=State.FAILING, successes=0, failures=failures,
                   since=h.since if h.state is State.FAILING else now, last=result)


# A shutdown's drain ends with its connections; this bounds it if they never end (kube-apiserver:
# --shutdown-delay-duration, then up to --request-timeout 60 s for what is in flight).
SHUTDOWN_DRAIN_MAX = 300.0


def kernel_weight(h: Health, weight: int, now: float, drain_period: float,
                  active: int | None = None) -> int | None:
    """The weight this real server should have in the kernel; None means not in the kernel.
    ``active``: its established connections as the kernel last counted them (None: it does not
    hold it)."""
    if h.serving:
        return weight
    if h.dead or h.drain_since is None:
        return None
    if h.shutdown:
        if h.last is None and not h.departed:
            return 0  # adopted at weight 0: so until a probe says what it is
        if active is None or active == 0 or now - h.drain_since >= SHUTDOWN_DRAIN_MAX:
            return None
        return 0
    if now - h.drain_since >= drain_period:
        return None
    return 0


@dataclass(frozen=True)
class Decision:
    weights: dict[RsKey, int | None]
    all_down: frozenset[Endpoint]  # virtual servers held open by fail-open
    last_healthy: dict[Endpoint, frozenset[Endpoint]]


def decide(
    virtual_servers: Iterable[VirtualServer],
    health: Mapping[RsKey, Health],
    last_healthy: Mapping[Endpoint, frozenset[Endpoint]],
    now: float,
    drain_period: float,
    all_down: str = "keep",
    active: Mapping[RsKey, int] | None = None,
) -> Decision:
    """Weights for every real server, with fail-open when a virtual server would be left with
    no real server taking new connections: then it keeps the ones that were healthy last."""
    weights: dict[RsKey, int | None] = {}
    held: set[Endpoint] = set()
    remembered = dict(last_healthy)
    for vs in virtual_servers:
        serving = frozenset(rs.endpoint for rs in vs.real_servers
                            if health[(vs.endpoint, rs.endpoint)].serving)
        fail_open = not serving and all_down == "keep" and bool(vs.real_servers)
        if serving:
            remembered[vs.endpoint] = serving
        present = frozenset(rs.endpoint for rs in vs.real_servers)
        # Only real servers still configured can be kept: the memory of departed ones (every
        # member replaced) is no memory at all.
        keep = remembered.get(vs.endpoint, frozenset()) & present if fail_open else frozenset()
        if fail_open:
            held.add(vs.endpoint)
            if not keep:  # never seen healthy (e.g. adopted while all were down): keep all
                keep = frozenset(rs.endpoint for rs in vs.real_servers)
        for rs in vs.real_servers:
            key = (vs.endpoint, rs.endpoint)
            if rs.endpoint in keep:
                weights[key] = rs.weight
            else:
                weights[key] = kernel_weight(health[key], rs.weight, now, drain_period,
                                             (active or {}).get(key))
    return Decision(weights, frozenset(held), remembered)
