"""The long-running ``lvscare care``: probes, health state, continuous reconcile, signals.

One task per real server probes it and feeds the pure state machine (``health.step``). A change of
state wakes the reconciler at once; otherwise it runs every interval, reads our virtual servers
back from the kernel and repairs whatever someone else changed. Only the reconciler writes.

Signals: SIGTERM and SIGINT stop the daemon and leave the rules in place (the node keeps reaching
the apiservers while the static pod restarts); ``--clean-on-exit`` removes them. SIGHUP re-reads
``--config`` and applies only the difference, keeping the health of unchanged real servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as errno_mod
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from lvscare.care import reconcile, reconcile_observed
from lvscare.config import Config, Endpoint, VirtualServer
from lvscare.conntrack import Conntrack
from lvscare.errors import KernelError, UserError
from lvscare.health import Decision, Health, ProbeResult, State, decide, initial, step
from lvscare.ipvs import IPVS, describe_op
from lvscare.metrics import Metrics
from lvscare.nudge import EXPIRE_WAIT, Nudger
from lvscare.plan import AddDest, DelDest, Dest, Op, SetDest, Table, desired_table, op_key, service_key
from lvscare.prober import Prober
from lvscare.vip import Access, ensure_sysctls, sysctl_values

log = structlog.get_logger("lvscare")

# A first failure is confirmed this much sooner than the next regular probe.
CONFIRM_FRACTION = 0.25
# Routes, addresses and iptables are checked this often (iptables means a process per check).
ACCESS_EVERY = 10.0
MAX_BACKOFF = 30.0

RsKey = tuple[Endpoint, Endpoint]  # (virtual server, real server)


@dataclass
class Stats:
    """What the daemon has done, for logs, metrics and tests."""

    reconciles: int = 0
    reconcile_errors: int = 0
    repairs: int = 0  # operations that undid someone else's change
    last_reconcile: float = 0.0  # wall clock of the last successful reconcile
    transitions: dict[RsKey, int] = field(default_factory=dict)


class Daemon:
    def __init__(self, cfg: Config, reload: Callable[[], Config] | None = None) -> None:
        self.cfg = cfg
        self._reload = reload
        self.health: dict[RsKey, Health] = {}
        self.last_healthy: dict[Endpoint, frozenset[Endpoint]] = {}
        self.decision: Decision | None = None
        self.stats = Stats()
        self.prober = Prober()
        self.ipvs = IPVS()
        self.access = Access(cfg.iface, cfg.ip)
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._probes: dict[RsKey, asyncio.Task[None]] = {}
        self._held: frozenset[Endpoint] = frozenset()
        self._last_access = 0.0
        self._applied_once = False
        self._expected: Table = {}
        self.observed: Table = {}
        self.last_error: str | None = None
        self.metrics = Metrics()
        self.metrics.attach(self)
        self._sysctls: dict[str, str | None] = {}
        self._sysctls_read = 0.0
        self.nudger = Nudger()
        self.conntrack = Conntrack()
        self._nudge_failed = False
        self._forget_failed = False

    def kernel_state(self, vs: VirtualServer) -> dict[Endpoint, Dest]:
        """Our best knowledge of the kernel for ``vs``: weights as last written, connection
        counts as last read."""
        key = service_key(vs)
        written = self._expected.get(key)
        seen = self.observed.get(key)
        if written is None:
            return dict(seen.dests) if seen else {}
        out = {}
        for endpoint, dest in written.dests.items():
            current = seen.dests.get(endpoint) if seen else None
            out[endpoint] = Dest(endpoint, dest.weight, dest.fwd_method,
                                 current.active_conns if current else 0,
                                 current.inactive_conns if current else 0)
        return out

    def sysctls(self) -> dict[str, str | None]:
        if time.monotonic() - self._sysctls_read > 10:
            self._sysctls = sysctl_values()
            self._sysctls_read = time.monotonic()
        return self._sysctls

    # -- lifecycle -------------------------------------------------------------------------------

    async def run(self) -> int:
        for vs in self.cfg.virtual_servers:
            self.prober.prepare(vs.health)
        await self.ipvs.open()
        try:
            await self.access.open()
            changed = ensure_sysctls({vs.mode for vs in self.cfg.virtual_servers})
            if changed:
                log.info("sysctls set", names=changed)
            await self.prober.start()
            web_runner = None
            if self.cfg.metrics_address:
                from lvscare.web import serve

                try:
                    web_runner = await serve(self, self.cfg.metrics_address)
                except OSError as exc:
                    raise KernelError(f"cannot listen on {self.cfg.metrics_address} "
                                      f"(--metrics-address): {exc.strerror}", exc.errno) from None
            await self._adopt()
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, self._on_stop, "SIGTERM")
            loop.add_signal_handler(signal.SIGINT, self._on_stop, "SIGINT")
            loop.add_signal_handler(signal.SIGHUP, self._on_reload)
            for vs in self.cfg.virtual_servers:
                for rs in vs.real_servers:
                    self._start_probe(vs, rs.endpoint)
            log.info("started", virtual_servers=[str(v.endpoint) for v in self.cfg.virtual_servers],
                     interval=self.cfg.interval, pid=os.getpid())
            await self._reconcile_loop()
            if web_runner is not None:
                await web_runner.cleanup()
            if self.cfg.clean_on_exit:
                from lvscare.care import clean

                self.ipvs.close()
                self.access.close()
                await clean(self.cfg)
            return 0
        finally:
            for task in self._probes.values():
                task.cancel()
            await asyncio.gather(*self._probes.values(), return_exceptions=True)
            await self.prober.close()
            self.nudger.close()
            self.conntrack.close()
            self.access.close()
            self.ipvs.close()

    def _on_stop(self, name: str) -> None:
        log.info("stopping", signal=name, rules="removed" if self.cfg.clean_on_exit else "kept")
        self._stop.set()
        self._wake.set()

    def _on_reload(self) -> None:
        asyncio.get_running_loop().create_task(self.reload())

    async def reload(self) -> None:
        if self._reload is None:
            log.warning("reload ignored: no --config file to re-read")
            return
        try:
            new = self._reload()
        except UserError as exc:
            log.error("reload failed, keeping the running configuration", error=str(exc))
            return
        old_keys = {(vs.endpoint, rs.endpoint) for vs in self.cfg.virtual_servers
                    for rs in vs.real_servers}
        new_keys = {(vs.endpoint, rs.endpoint) for vs in new.virtual_servers
                    for rs in vs.real_servers}
        dropped = [service_key(vs) for vs in self.cfg.virtual_servers
                   if vs.endpoint not in {v.endpoint for v in new.virtual_servers}]
        for key in old_keys - new_keys:
            task = self._probes.pop(key, None)
            if task is not None:
                task.cancel()
            self.health.pop(key, None)
            self.metrics.forget(str(key[0]), str(key[1]))
        now = time.monotonic()
        old_vs = {vs.endpoint: vs for vs in self.cfg.virtual_servers}
        self.cfg = new
        for vs in new.virtual_servers:
            for rs in vs.real_servers:
                key = (vs.endpoint, rs.endpoint)
                if key in old_keys and vs.health == old_vs[vs.endpoint].health:
                    continue
                if key in self._probes:
                    self._probes.pop(key).cancel()
                if key not in self.health:
                    # A real server added at run time joins after its first good probes.
                    self.health[key] = Health(State.RECOVERING, since=now)
                self._start_probe(vs, rs.endpoint)
        if dropped:
            await reconcile(self.ipvs, {}, dropped)
            async with Access(new.iface, new.ip) as access:
                for vs in old_vs.values():
                    if service_key(vs) in dropped:
                        await access.remove(vs)
        log.info("reloaded", added=sorted(str(k[1]) for k in new_keys - old_keys),
                 removed=sorted(str(k[1]) for k in old_keys - new_keys),
                 virtual_servers_removed=[str(k) for k in dropped])
        self._last_access = 0.0
        self._applied_once = False  # what the new config adds is not a repair
        self._wake.set()

    async def _adopt(self) -> None:
        """Health before the first probe, from what the kernel already serves, so that a
        restarted daemon changes nothing until probes say so."""
        now = time.monotonic()
        keys = [service_key(vs) for vs in self.cfg.virtual_servers]
        self.observed = await self.ipvs.read(keys)
        adopted = []
        for vs in self.cfg.virtual_servers:
            existing = self.observed.get(service_key(vs))
            for rs in vs.real_servers:
                if existing is None:
                    h = initial(now, None)
                else:
                    dest = existing.dests.get(rs.endpoint)
                    h = initial(now, dest is not None and dest.weight > 0)
                self.health[(vs.endpoint, rs.endpoint)] = h
            if existing is not None:
                adopted.append(str(vs.endpoint))
        if adopted:
            log.info("adopted existing rules", virtual_servers=adopted)

    # -- probing ---------------------------------------------------------------------------------

    def _start_probe(self, vs: VirtualServer, rs: Endpoint) -> None:
        key = (vs.endpoint, rs)
        self._probes[key] = asyncio.get_running_loop().create_task(self._probe_loop(vs, rs))

    async def _probe_loop(self, vs: VirtualServer, rs: Endpoint) -> None:
        key = (vs.endpoint, rs)
        hc = vs.health
        interval = self.cfg.interval
        # A random phase, so that a fleet of nodes started together does not probe in step.
        await asyncio.sleep(random.uniform(0, interval))
        while True:
            started = time.monotonic()
            try:
                result = await self.prober.probe(rs, hc)
                self._observe(vs, rs, result)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("probe crashed", vs=str(vs.endpoint), rs=str(rs), error=repr(exc))
            h = self.health.get(key)
            if h is None:
                return
            wait = interval * random.uniform(0.95, 1.05)
            if h.state is State.FAILING or h.state is State.RECOVERING:
                wait = interval * CONFIRM_FRACTION
            wait = max(0.0, wait - (time.monotonic() - started))
            closed = self.prober.closed(rs)
            if closed is None:
                await asyncio.sleep(wait)
                continue
            # Probe at once if the server closes our connection before the next probe is due.
            done, _ = await asyncio.wait([closed], timeout=wait)
            if done:
                log.debug("probe connection closed by the server: probing now",
                          vs=str(vs.endpoint), rs=str(rs))

    def _observe(self, vs: VirtualServer, rs: Endpoint, result: ProbeResult) -> None:
        key = (vs.endpoint, rs)
        old = self.health.get(key)
        if old is None:
            return
        now = time.monotonic()
        new = step(old, result, now, vs.health.rise, vs.health.fall)
        self.health[key] = new
        self.metrics.probe(str(vs.endpoint), str(rs), result.outcome, result.latency)
        if new.state is not old.state:
            self.stats.transitions[key] = self.stats.transitions.get(key, 0) + 1
            self.metrics.transition(str(vs.endpoint), str(rs), new.state)
            log.info("real server " + new.state.value, vs=str(vs.endpoint), rs=str(rs),
                     was=old.state.value, probe=result.outcome.value,
                     reason=result.detail or None, latency=round(result.latency, 4))
            self._wake.set()
        else:
            log.debug("probe", vs=str(vs.endpoint), rs=str(rs), state=new.state.value,
                      probe=result.outcome.value, latency=round(result.latency, 4))

    # -- reconciling -----------------------------------------------------------------------------

    def desired(self, now: float) -> Table:
        decision = decide(self.cfg.virtual_servers, self.health, self.last_healthy, now,
                          self.cfg.drain_period, self.cfg.all_down)
        self.last_healthy = dict(decision.last_healthy)
        self.decision = decision
        for vs_ep in decision.all_down - self._held:
            log.warning("all real servers down: keeping the last healthy ones (fail-open)",
                        vs=str(vs_ep), kept=sorted(str(e[1]) for e, w in decision.weights.items()
                                                   if e[0] == vs_ep and w))
        for vs_ep in self._held - decision.all_down:
            log.info("a real server is healthy again: fail-open over", vs=str(vs_ep))
        self._held = decision.all_down
        return desired_table(self.cfg.virtual_servers, decision.weights)

    async def _reconcile_loop(self) -> None:
        backoff = 0.0
        failing = False
        while not self._stop.is_set():
            try:
                await self.reconcile_once()
                if failing:
                    log.info("reconcile recovered")
                failing, backoff = False, 0.0
                self.last_error = None
            except Exception as exc:  # kernel errors back off, they never end the daemon
                self.stats.reconcile_errors += 1
                self.last_error = str(exc)
                kind = type(exc).__name__
                if isinstance(exc, KernelError) and exc.errno:
                    kind = errno_mod.errorcode.get(exc.errno, str(exc.errno))
                self.metrics.reconcile_error(kind)
                backoff = min(MAX_BACKOFF, max(self.cfg.interval, backoff * 2))
                if not failing:
                    log.error("reconcile failed, will retry", error=str(exc),
                              retry_in=backoff, kind=type(exc).__name__)
                failing = True
            self._wake.clear()
            wait = backoff or self.cfg.interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def reconcile_once(self) -> list[Op]:
        now = time.monotonic()
        want = self.desired(now)
        keys = [service_key(vs) for vs in self.cfg.virtual_servers]
        with self.metrics.reconcile_timer():
            ops, self.observed = await reconcile_observed(self.ipvs, want, keys)
        # An operation we did not plan from a health change repairs an outside change.
        repairs = [op for op in ops if not self._planned(op)]
        if repairs and self._applied_once:
            self.stats.repairs += len(repairs)
            for op in repairs:
                self.metrics.repair(str(op_key(op).endpoint))
            log.info("rules repaired", changes=[describe_op(op) for op in repairs])
        for op in ops:
            if self._planned(op):
                log.info("ipvs", change=describe_op(op))
        await self._nudge([op for op in ops if isinstance(op, DelDest)])
        self._applied_once = True
        self._expected = want
        if time.monotonic() - self._last_access >= ACCESS_EVERY:
            for vs in self.cfg.virtual_servers:
                await self.access.ensure(vs)
            self._last_access = time.monotonic()
        self.stats.reconciles += 1
        self.stats.last_reconcile = time.time()
        return ops

    def _mode(self, vip: Endpoint) -> str | None:
        return next((vs.mode for vs in self.cfg.virtual_servers if vs.endpoint == vip), None)

    async def _nudge(self, deleted: list[DelDest]) -> None:
        """Reset the clients of deleted real servers now rather than at their next packet."""
        work = [(op, self.nudger.clients(op.key.endpoint, op.endpoint)) for op in deleted]
        work = [(op, clients) for op, clients in work if clients]
        if not work:
            return
        try:
            for op, clients in work:
                self.nudger.expire(op.key.endpoint, clients)
            await asyncio.sleep(EXPIRE_WAIT)
            await self._forget_tracked([(c, op.key.endpoint) for op, clients in work
                                        if self._mode(op.key.endpoint) == "link" for c in clients])
            for op, clients in work:
                self.nudger.poke(op.key.endpoint, clients)
        except OSError as exc:
            if not self._nudge_failed:
                log.warning("cannot nudge clients of a removed real server (needs CAP_NET_RAW); "
                            "they reconnect at their next retransmission", error=str(exc))
            self._nudge_failed = True
            return
        for op, clients in work:
            self.metrics.nudged(str(op.key.endpoint), len(clients))
            log.info("clients nudged", vs=str(op.key.endpoint), rs=str(op.endpoint), clients=len(clients))

    async def _forget_tracked(self, flows: list[tuple[Endpoint, Endpoint]]) -> None:
        """Link mode source-NATs IPVS's connections in conntrack: until a dead connection's
        entry is gone, the client's answer to the nudge is rewritten like the old connection and
        the node's reset goes to the NAT address instead of the client (nudge.py)."""
        try:
            await self.conntrack.forget(flows)
        except OSError as exc:
            if not self._forget_failed:
                log.warning("cannot delete conntrack entries of a removed real server; its "
                            "clients reconnect at their next retransmission", error=str(exc))
            self._forget_failed = True

    def _planned(self, op: Op) -> bool:
        """True if ``op`` follows from a change of desired state since the last reconcile."""
        previous = self._expected.get(op.key) if isinstance(op, AddDest | SetDest | DelDest) \
            else None
        if not self._applied_once:
            return True
        match op:
            case AddDest(_, d) | SetDest(_, d):
                return previous is None or previous.dests.get(d.endpoint) != d
            case DelDest(_, e):
                return previous is None or e in previous.dests
        return False


def run(cfg: Config, reload: Callable[[], Config] | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; the exit code. ``reload`` re-reads the config."""
    return asyncio.run(Daemon(cfg, reload if cfg.config_file else None).run())
