"""The long-running ``lvscare care``: the thin shell around the pure core (``core.py``).

Tasks, timers, sockets and signals live here; every decision is the core's, and every effect goes
through the small protocols of ``effects.py``. One task per real server probes it and feeds the
core; a change of state wakes the reconciler at once, and otherwise it runs every interval: it
reads our virtual servers back, repairs what someone else changed, resets the clients of real
servers it deleted, checks the VIP's route, address and link, and publishes a snapshot for the
exporters. Only the reconciler writes.

Signals only set flags, as uvicorn's server does: SIGTERM and SIGINT stop the daemon and leave the
rules in place (the node keeps reaching the apiservers while the static pod restarts;
``--clean-on-exit`` removes them); SIGHUP asks the reconciler to re-read ``--config`` first.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as errno_mod
import os
import random
import resource
import signal
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from lvscare import log as logsetup
from lvscare.care import reconcile, reconcile_observed, remove_all
from lvscare.config import Config, Endpoint, RsKey, VirtualServer
from lvscare.core import Core, Event, Reload
from lvscare.effects import VipAccess, World
from lvscare.errors import KernelError, RuntimeFailure, UserError
from lvscare.health import ProbeResult, State
from lvscare.log import get_logger
from lvscare.members import apply_members, drain_departed, keep_departed_until_replaced, seed_weights
from lvscare.metrics import Metrics
from lvscare.plan import DelDest, Op, op_key, service_key
from lvscare.snapshot import Snapshot

if TYPE_CHECKING:
    from lvscare.clientreset import Found
    from lvscare.discovery import Discovery
    from lvscare.web import WebServer

log = get_logger("lvscare")

# A first failure is confirmed this much sooner than the next regular probe.
CONFIRM_FRACTION = 0.25
# The VIP's route, address and link are checked every reconcile (netlink dumps, as cheap as the
# IPVS read); the iptables rule of link mode costs a process per check, so only this often.
IPTABLES_EVERY = 10.0
SYSCTLS_EVERY = 10.0  # for the metrics; reading them is three small files
MAX_BACKOFF = 30.0
STANDBY_RETRY = 1.0  # a standing-by daemon's look at the node's lock


def raise_file_limit(ceiling: int = 1 << 16) -> None:
    """Raise the soft limit of open files to the hard one: container runtimes start processes at
    1,024, and a probe must never fail for want of a descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard if hard != resource.RLIM_INFINITY else ceiling, ceiling)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _modes(cfg: Config) -> set[str]:
    return {vs.mode for vs in cfg.virtual_servers}


class Daemon:
    def __init__(self, cfg: Config, reload: Callable[[], Config] | None = None, *,
                 world: World | None = None, wall: Callable[[], float] = time.time,
                 rng: random.Random | None = None, discovery: Discovery | None = None) -> None:
        self.core = Core(cfg)
        self.world = world or World.real()
        self.access: VipAccess = self.world.access(cfg)
        self.metrics = Metrics()
        self.snapshot = Snapshot(cfg)  # the last published; exporters read only this
        self._read_config = reload
        self._wall = wall
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._reload_requested = False
        self._probes: dict[RsKey, asyncio.Task[None]] = {}
        self._iptables_checked: float | None = None  # None: never (check at the first reconcile)
        self._access_ready: set[str] = set()  # VIPs whose access was in place once since (re)load
        self._access_open = False  # a reload's new access may fail to open: reconciles try again
        self._sysctls: dict[str, str | None] = {}
        self._sysctls_read: float | None = None
        self._sysctls_failing = False
        self._warned: set[str] = set()
        self._web: WebServer | None = None
        self._discovery = discovery
        self._seeds = seed_weights(cfg)  # the configured real servers' weights
        self._members: tuple[Endpoint, ...] | None = None  # the last discovered or saved list
        self._departed_kept: frozenset[RsKey] = frozenset()  # left, still serving, kept for now
        # Virtual servers of an earlier configuration still to remove: (its config, it, rules too)
        self._old_leftovers: list[tuple[Config, VirtualServer, bool]] = []

    @property
    def cfg(self) -> Config:
        return self.core.cfg

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    @staticmethod
    def _log(events: Iterable[Event]) -> None:
        for e in events:
            getattr(log, e.level)(e.name, **e.fields)

    def _warn_once(self, what: str, message: str, **fields: object) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning(message, **fields)

    # -- lifecycle -------------------------------------------------------------------------------

    async def run(self) -> int:
        raise_file_limit()
        world = self.world
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self.request_stop, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            if not await self._claim():
                return 0
            for vs in self.cfg.virtual_servers:
                world.prober.prepare(vs.health)
            await world.ipvs.open()
            try:
                await self.access.open()
                self._access_open = True
                await self.access.remove_go_leftovers(self.cfg.virtual_servers)
                self._ensure_sysctls()
                await world.prober.start()
                if self.cfg.metrics_address:
                    await self._serve(self.cfg.metrics_address)
                if self._discovery is not None:
                    self.metrics.discovery_failures = self._discovery.failures
                    saved = self._discovery.load_state()
                    if saved is not None:
                        self._members = saved
                        self.core.cfg = apply_members(self.cfg, saved, self._seeds)
                        self._note_sources(saved, "state")
                self._log(self.core.adopt(await world.ipvs.read(self.core.service_keys), self._now()))
                self._start_probes()
                tasks = [loop.create_task(self._discovery_loop())] if self._discovery else []
                log.info("started", virtual_servers=[str(v.endpoint) for v in self.cfg.virtual_servers],
                         interval=self.cfg.interval, pid=os.getpid())
                try:
                    await self._reconcile_loop()
                finally:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                await self._stop_serving()
                if self.cfg.clean_on_exit:
                    await remove_all(self.cfg, world.ipvs, self.access)
                return 0
            finally:
                await self._stop_probes()
                await self._stop_serving()
                await world.prober.close()
                world.client_reset.close()
                self.access.close()
                world.ipvs.close()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            world.lock.release()

    async def _claim(self) -> bool:
        """Take the node's lock on our virtual servers (``nodelock.py``); while another lvscare
        holds it (the static pod next to the DaemonSet's pod), stand by without touching the
        kernel, and take over within ``STANDBY_RETRY`` of its end. False: stopped meanwhile."""
        endpoints = [vs.endpoint for vs in self.cfg.virtual_servers]
        if self.world.lock.acquire(endpoints):
            self._warn_squatters()
            return True
        names = [str(e) for e in endpoints]
        log.warning("another lvscare manages these virtual servers on this node; standing by "
                    "until it stops", virtual_servers=names, pid=os.getpid())
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), STANDBY_RETRY)
            if not self._stop.is_set() and self.world.lock.acquire(endpoints):
                log.info("the other lvscare has stopped; taking over", virtual_servers=names)
                self._warn_squatters()
                return True
        return False

    def _warn_squatters(self) -> None:
        if self.world.lock.ignored:
            self._warn_once("squatter", "the node lock's name is held by a process that cannot "
                            "manage IPVS: ignored (not an lvscare)", holders=self.world.lock.ignored)

    def request_stop(self, name: str = "stop") -> None:
        log.info("stopping", signal=name, rules="removed" if self.cfg.clean_on_exit else "kept")
        self._stop.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake.set()

    async def _serve(self, address: str) -> None:
        from lvscare import web

        try:
            self._web = await web.serve(lambda: self.snapshot, self.metrics, address)
        except OSError as exc:
            raise RuntimeFailure(f"cannot listen on {address} (--metrics-address): "
                                 f"{exc.strerror or exc}") from None

    async def _stop_serving(self) -> None:
        if self._web is not None:
            await self._web.close()
            self._web = None

    # -- reload ----------------------------------------------------------------------------------

    async def _reload(self) -> None:
        """Leave the daemon as a fresh start with the new file would, keeping the health of the
        real servers that stay."""
        if self._read_config is None:
            log.warning("reload ignored: no --config file to re-read")
            return
        try:
            new = self._read_config()
            for vs in new.virtual_servers:
                self.world.prober.prepare(vs.health)  # certificates, checked as at start
            seeds = seed_weights(new)
            if self._members is not None:  # discovered members stay the truth over the seeds
                new = apply_members(new, self._members, seeds)
        except UserError as exc:
            log.error("reload failed, keeping the running configuration", error=str(exc))
            return
        except Exception as exc:  # a validation bug must not end the daemon
            log.error("reload failed, keeping the running configuration", error=repr(exc))
            return
        # Discovery is set up once, at start (its kubeconfig, state file and thread): a reload
        # that changes it is refused whole rather than half applied in silence.
        fixed = [name for name, attr in (("discoverFrom", "discover_from"),
                                         ("discoverInterval", "discover_interval"),
                                         ("stateDir", "state_dir"))
                 if getattr(new, attr) != getattr(self.cfg, attr)
                 and (self._discovery is not None or new.discover_from)]  # only discovery reads them
        if fixed:
            log.error("reload refused, keeping the running configuration: these settings apply "
                      "at start only; restart lvscare to change them", settings=fixed)
            return
        if not self.world.lock.acquire([vs.endpoint for vs in new.virtual_servers]):
            log.error("reload failed, keeping the running configuration: another lvscare "
                      "manages one of its virtual servers on this node")
            return
        old, old_access = self.cfg, self.access
        self._seeds = seeds
        diff = self.core.reload(new, self._now())
        await self._stop_probes()
        try:
            await self._apply_reload(old, old_access, new, diff)
        finally:
            # Whatever failed on the way, the daemon is never left without probes.
            self._retain_probe_state()
            self._start_probes()
        self._log([diff.event()])

    async def _apply_reload(self, old: Config, old_access: VipAccess, new: Config,
                            diff: Reload) -> None:
        for key in diff.removed:
            self.metrics.forget(key)
        # What the old configuration created and the new one does not want goes with the old
        # settings (its interface), before the new access is built; if that fails, every
        # reconcile tries again (and fails, for /healthz to tell) until it is gone.
        back = {vs.endpoint for vs in new.virtual_servers}  # not to remove after all
        self._old_leftovers = [x for x in self._old_leftovers if x[1].endpoint not in back]
        self._old_leftovers += [(old, vs, True) for vs in diff.dropped]
        self._old_leftovers += [(old, vs, False) for vs in diff.moved]
        try:
            await self._remove_old(old_access)
        except (KernelError, OSError) as exc:  # a netlink OSError too (ENOBUFS, EMSGSIZE)
            log.error("reload: cannot remove what the old configuration created", error=str(exc))
        old_access.close()
        self.access = self.world.access(new)
        self._access_open = False
        try:
            await self.access.open()
            self._access_open = True
        except (KernelError, OSError) as exc:  # EMFILE, ENOBUFS: every reconcile tries again
            log.error("reload: cannot open the VIP access; reconciles try again", error=str(exc))
        self._ensure_sysctls()
        if (new.log_level, new.log_format) != (old.log_level, old.log_format):
            logsetup.configure(new.log_level, new.log_format)
        if new.metrics_address != old.metrics_address:
            await self._stop_serving()
            if new.metrics_address:
                try:
                    await self._serve(new.metrics_address)
                except RuntimeFailure as exc:
                    log.error("reload: metrics not served", error=str(exc))
        self._iptables_checked = None
        self._access_ready.clear()

    async def _remove_old(self, old_access: VipAccess | None = None) -> None:
        """Remove the rules and VIP objects of virtual servers an earlier configuration had and
        the running one dropped or moved, with that configuration's settings."""
        while self._old_leftovers:
            cfg, vs, rules = self._old_leftovers[0]
            if rules:
                await reconcile(self.world.ipvs, {}, [service_key(vs)])
            access = old_access or self.world.access(cfg)
            try:
                if access is not old_access:
                    await access.open()
                await access.remove(vs)
            finally:
                if access is not old_access:
                    access.close()
            self._old_leftovers.pop(0)

    # -- discovery -------------------------------------------------------------------------------

    def _note_sources(self, members: Iterable[Endpoint], source: str) -> None:
        members = set(members)
        self.core.sources = {rs.endpoint: source if rs.endpoint in members else "seed"
                             for vs in self.cfg.virtual_servers for rs in vs.real_servers}

    async def _discovery_loop(self) -> None:
        assert self._discovery is not None
        discovery = self._discovery
        crashed = False
        while not self._stop.is_set():
            try:
                await self._discover_once(discovery)
                if crashed:
                    log.info("discovery round works again")
                crashed = False
            except Exception as exc:  # supervised: a bug or a surprise must not end discovery
                discovery.failures["error"] = discovery.failures.get("error", 0) + 1
                if not crashed:
                    log.error("discovery round crashed; keeping the current real servers",
                              error=repr(exc)[:300])
                crashed = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), discovery.next_wait())

    async def _discover_once(self, discovery: Discovery) -> None:
        known = list(dict.fromkeys(rs.endpoint for vs in self.cfg.virtual_servers
                                   for rs in vs.real_servers))
        result = await discovery.poll(known)
        if result.members is not None:
            self._apply_members(result.members, result.via)
            await discovery.remember(result.members)
            self.core.discovery_last_success = discovery.last_success
            self._wake.set()  # publish the new snapshot

    def _apply_members(self, members: tuple[Endpoint, ...], via: str) -> None:
        """Make the discovered members the real servers: new ones are probed and carry traffic
        after ``rise`` good probes; departed ones (a seed too) are drained while they still serve,
        and go when their connections end."""
        self._members = members
        now = self._now()
        serving = {k for k, h in self.core.health.items() if h.serving}
        new, kept = keep_departed_until_replaced(apply_members(self.cfg, members, self._seeds),
                                                 self.cfg, serving)
        new, leaving = drain_departed(new, self.cfg, self.core.draining() - kept)
        self.core.rejoin(frozenset(_keys_of(new)) - leaving, now)
        if kept - self._departed_kept:
            log.info("control-plane members left: kept until a new member serves",
                     kept=sorted(str(k[1]) for k in kept - self._departed_kept))
        self._departed_kept = kept
        started = self.core.depart(leaving, now)
        if started:
            log.info("control-plane members left while serving: drained until their connections end",
                     draining=[str(k[1]) for k in started])
            self._wake.set()
        if new != self.cfg:
            diff = self.core.reload(new, now)
            for key in diff.removed:
                task = self._probes.pop(key, None)
                if task is not None:
                    task.cancel()
                self.metrics.forget(key)
            self._retain_probe_state()
            for key in sorted(diff.added, key=lambda k: (k[0], k[1])):
                self._start_probe(key)
            log.info("control-plane members changed", added=sorted(str(k[1]) for k in diff.added),
                     removed=sorted(str(k[1]) for k in diff.removed),
                     members=[str(m) for m in members], via=via)
        self._note_sources(members, "discovered")

    # -- probing ---------------------------------------------------------------------------------

    def _retain_probe_state(self) -> None:
        """Let the prober close what it holds for real servers and checks no longer configured."""
        self.world.prober.retain({(rs.endpoint, vs.health) for vs in self.cfg.virtual_servers
                                  for rs in vs.real_servers})

    def _start_probes(self) -> None:
        for vs in self.cfg.virtual_servers:
            for rs in vs.real_servers:
                self._start_probe((vs.endpoint, rs.endpoint))

    def _start_probe(self, key: RsKey) -> None:
        if key not in self._probes:
            self._probes[key] = asyncio.get_running_loop().create_task(self._probe_loop(key))

    async def _stop_probes(self) -> None:
        tasks = list(self._probes.values())
        self._probes.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _probe_loop(self, key: RsKey) -> None:
        # A random phase, so that a fleet of nodes started together does not probe in step.
        await asyncio.sleep(self._rng.uniform(0, self.cfg.interval))
        prober = self.world.prober
        while True:
            vs = self.core.virtual_server(key[0])
            if vs is None or key not in self.core.health:
                return
            interval = self.cfg.interval
            started = self._now()
            try:
                result = await prober.probe(key[1], vs.health)
            except Exception as exc:  # a bug in a probe must not end probing
                log.error("probe crashed", vs=str(key[0]), rs=str(key[1]), error=repr(exc))
                result = None
            if result is not None:
                self._observe(key, result)
            h = self.core.health.get(key)
            if h is None:
                return
            wait = interval * self._rng.uniform(0.95, 1.05)
            if h.state is State.FAILING or h.state is State.RECOVERING:
                wait = interval * CONFIRM_FRACTION
            wait = max(0.0, wait - (self._now() - started))
            closed = prober.closed(key[1], vs.health)
            if closed is None:
                await asyncio.sleep(wait)
                continue
            # Probe at once if the server closes our connection before the next probe is due.
            done, _ = await asyncio.wait([closed], timeout=wait)
            if done:
                log.debug("probe connection closed by the server: probing now",
                          vs=str(key[0]), rs=str(key[1]))

    def _observe(self, key: RsKey, result: ProbeResult) -> None:
        change = self.core.observe(key, result, self._now())
        self.metrics.probe(key, result.outcome, result.latency)
        if change is None:
            log.debug("probe", vs=str(key[0]), rs=str(key[1]), probe=result.outcome.value,
                      latency=round(result.latency, 4))
            return
        self._log([change.event()])
        if change.state_changed:
            self.metrics.transition(key, change.new.state)
            if (self._departed_kept and change.new.serving and self._members is not None
                    and key not in self._departed_kept):
                self._apply_members(self._members, "health")  # a member serves: they may go
        self._wake.set()  # the reconcile also publishes the snapshot that shows slowness

    # -- reconciling -----------------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        backoff = 0.0
        failing = False
        while not self._stop.is_set():
            # Cleared before the work (the reload too), so that a state change or a stop request
            # during it is not lost.
            self._wake.clear()
            if self._reload_requested:
                self._reload_requested = False
                try:
                    await self._reload()
                except Exception as exc:  # the reconciles that follow repair what it left
                    log.error("reload failed midway; reconciling towards the new configuration",
                              error=repr(exc)[:300])
                if self._stop.is_set():
                    break
            try:
                await self.reconcile_once()
                if failing:
                    log.info("reconcile recovered")
                failing, backoff = False, 0.0
            except Exception as exc:  # kernel errors back off, they never end the daemon
                self.core.failed(str(exc))
                kind = type(exc).__name__
                if isinstance(exc, KernelError) and exc.errno:
                    kind = errno_mod.errorcode.get(exc.errno, str(exc.errno))
                self.metrics.reconcile_error(kind)
                backoff = min(MAX_BACKOFF, max(self.cfg.interval, backoff * 2))
                if not failing:
                    log.error("reconcile failed, will retry", error=str(exc),
                              retry_in=backoff, kind=type(exc).__name__)
                failing = True
            self._publish()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), backoff or self.cfg.interval)

    async def reconcile_once(self) -> list[Op]:
        await self._remove_old()
        if self.core.draining_shutdowns:
            self.core.read(await self.world.ipvs.read(self.core.service_keys))
        now = self._now()
        want, events = self.core.desired(now)
        self._log(events)
        found = await self._find_clients(self.core.deletions(want))
        with self.metrics.reconcile_timer():
            ops, observed = await reconcile_observed(self.world.ipvs, want, self.core.service_keys)
        done = self.core.reconciled(ops, want, observed)
        self._log(done.events)
        for op in done.repairs:
            self.metrics.repair(op_key(op).endpoint)
        await self._reset_clients(done.deleted, found)
        await self._ensure_access(now)
        self.core.succeeded(self._wall())
        return ops

    def _pairs(self, keys: Iterable[RsKey]) -> list[tuple[VirtualServer, Endpoint]]:
        return [(vs, rs) for vip, rs in keys if (vs := self.core.virtual_server(vip)) is not None]

    async def _find_clients(self, deleting: list[RsKey]) -> Found:
        if not deleting:
            return {}
        # Never raises: an unreadable table means no client found (nudge.read_clients).
        return await self.world.client_reset.find(self._pairs(deleting))

    async def _ensure_access(self, now: float) -> None:
        """The VIP's route, address and link every reconcile; the iptables rule less often."""
        if not self._access_open:
            await self.access.open()
            self._access_open = True
        iptables = self._iptables_checked is None or now - self._iptables_checked >= IPTABLES_EVERY
        failures: list[Exception] = []
        for vs in self.cfg.virtual_servers:
            vip = str(vs.endpoint)
            try:
                changed = await self.access.ensure(vs, iptables=iptables)
            except Exception as exc:  # one VIP's failure must not leave the others unrepaired
                failures.append(exc)
                continue
            if changed and vip in self._access_ready:
                self.metrics.repair(vs.endpoint)
                log.info("VIP access repaired", vs=vip, mode=vs.mode)
            self._access_ready.add(vip)
        if failures:
            raise failures[0]
        if iptables:
            self._iptables_checked = now

    async def _reset_clients(self, deleted: list[DelDest], found: Found) -> None:
        pairs = self._pairs((op.key.endpoint, op.endpoint) for op in deleted)
        if not pairs or not found:
            return
        try:
            result = await self.world.client_reset.reset(pairs, found)
        except OSError as exc:
            self._warn_once("nudge", "cannot nudge clients of a removed real server (needs "
                            "CAP_NET_RAW); they reconnect at their next retransmission",
                            error=str(exc))
            return
        if result.conntrack_error:
            self._warn_once("conntrack", "cannot delete conntrack entries of a removed real "
                            "server; its clients reconnect at their next retransmission",
                            error=result.conntrack_error)
        if result.truncated:
            self._warn_once("truncated", "more clients of a removed real server than are reset "
                            "at once; the rest reconnect at their next packet")
        for (vip, rs), n in result.clients.items():
            self.metrics.nudged(vip, n)
            log.info("clients nudged", vs=str(vip), rs=str(rs), clients=n)

    def _ensure_sysctls(self) -> None:
        """Set the sysctls the configuration needs. The pod's daemon cannot write them (its
        ``/proc/sys`` is read-only: the init container does), and kubelet re-runs init containers
        only when the pod is recreated: a crash here would loop. So a sysctl that is wrong and
        cannot be written is logged once per episode, counted, and the daemon keeps serving:
        failover works without it, only slower for clients of a deleted real server."""
        try:
            changed = self.world.sysctls.ensure(_modes(self.cfg))
        except KernelError as exc:
            if not self._sysctls_failing:
                self._sysctls_failing = True
                self.metrics.reconcile_error("sysctl")
                log.error("sysctl not as lvscare needs and cannot be written; serving without it "
                          "(set it on the node, or recreate the pod to re-run its init container)",
                          error=str(exc))
            return
        if self._sysctls_failing:
            self._sysctls_failing = False
            log.info("sysctls as lvscare needs again")
        if changed:
            log.info("sysctls set", names=changed)

    def _publish(self) -> None:
        now = self._now()
        if self._sysctls_read is None or now - self._sysctls_read >= SYSCTLS_EVERY:
            self._ensure_sysctls()
            self._sysctls = self.world.sysctls.read()
            self._sysctls_read = now
        self.snapshot = self.core.snapshot(self._sysctls)


def run(cfg: Config, reload: Callable[[], Config] | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; the exit code. ``reload`` re-reads the config."""
    discovery = None
    if cfg.discover_from:
        from lvscare import kubeconfig
        from lvscare.discovery import Discovery

        discovery = Discovery(kubeconfig.load(cfg.discover_from), cfg)  # bad input: exit 2 here
    return asyncio.run(Daemon(cfg, reload if cfg.config_file else None, discovery=discovery).run())


def _keys_of(cfg: Config) -> set[RsKey]:
    return {(vs.endpoint, rs.endpoint) for vs in cfg.virtual_servers for rs in vs.real_servers}
