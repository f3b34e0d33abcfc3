"""The whole daemon (core and shell) on a virtual clock, with fakes for the kernel, the VIP's
access, the client reset and the probes: each scenario is seconds to minutes of daemon time and a
few milliseconds of wall time. tests/kernel/test_daemon.py runs the same stories against the real
kernel."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
from structlog.testing import capture_logs

from lvscare.config import Config
from lvscare.daemon import IPTABLES_EVERY, Daemon
from lvscare.discovery import Discovery
from lvscare.errors import UserError
from lvscare.members import State
from lvscare.plan import DelDest, op_key
from lvscare.web import healthz, status

from .fakes import FakeWorld, config, ep, run_virtual

RS1, RS2, RS3 = "10.0.0.1:6443", "10.0.0.2:6443", "10.0.0.3:6443"
VIP = "10.103.97.2"
WALL0 = 1.8e9


class Run:
    def __init__(self, cfg: Config, reload: Callable[[], Config] | None,
                 discovery: Discovery | None = None) -> None:
        self.fake = FakeWorld()
        self.daemon = Daemon(cfg, reload, world=self.fake.world(),
                             wall=lambda: WALL0 + asyncio.get_running_loop().time(),
                             rng=random.Random(7), discovery=discovery)
        self.logs: list[dict[str, Any]] = []
        self.task: asyncio.Task[int] | None = None

    @property
    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.logs if e["event"] == name]

    async def until(self, predicate: Callable[[], object], within: float) -> float:
        """Daemon seconds until ``predicate`` holds; fails after ``within``."""
        start = self.now
        while not predicate():
            if self.now - start > within:
                raise AssertionError(f"not within {within}s of daemon time")
            await asyncio.sleep(0.01)
        return self.now - start

    async def hold(self, predicate: Callable[[], object], seconds: float) -> None:
        """``predicate`` holds all along ``seconds`` of daemon time."""
        end = self.now + seconds
        while self.now < end:
            assert predicate()
            await asyncio.sleep(0.05)


def play(drive: Callable[[Run], Awaitable[None]], cfg: Config | None = None,
         reload: Callable[[], Config] | None = None, start: float = 3.0,
         node: set[tuple[str, ...]] | None = None, setup: Callable[[Run], None] | None = None,
         started: str = "started", discovery: Discovery | None = None) -> Run:
    """Start the daemon, let ``drive`` act on it, stop it. ``start``: the monotonic clock at
    start, as a node's uptime; ``node``: what the node holds before the daemon starts."""
    run = Run(cfg or config(), reload, discovery)
    run.fake.node.objects |= node or set()
    if setup is not None:
        setup(run)

    async def main() -> None:
        run.task = asyncio.create_task(run.daemon.run())
        await run.until(lambda: run.events(started), 1)
        try:
            await drive(run)
        finally:
            if not run.task.done():
                run.daemon.request_stop("test")
            assert await run.task == 0

    wall = time.monotonic()
    with capture_logs() as logs:
        run.logs = logs
        run_virtual(main(), start)
    assert time.monotonic() - wall < 3, "a host scenario must stay fast"
    return run


ALL = {RS1: 1, RS2: 1, RS3: 1}


def test_the_vip_carries_traffic_from_the_first_reconcile_on_a_freshly_booted_node() -> None:
    """Uptime 3 s: the VIP's route must come with the rules, not when uptime reaches 10 s."""

    async def drive(r: Run) -> None:
        route = ("route", VIP, "auto")
        took = await r.until(lambda: r.fake.ipvs.weights() == ALL and route in r.fake.node.objects, 5)
        assert took < 0.1

    play(drive, start=3.0)


def test_the_go_lvscares_leftovers_for_our_vip_go_at_start_and_only_those() -> None:
    ours, foreign = ("go", VIP, "route"), ("go", "10.103.97.9", "route")

    async def drive(r: Run) -> None:
        assert ours not in r.fake.node.objects and foreign in r.fake.node.objects

    play(drive, node={ours, foreign})


def test_a_sysctl_it_cannot_write_is_reported_once_and_the_daemon_keeps_serving() -> None:
    """The pod's daemon has a read-only /proc/sys and kubelet does not re-run the init container
    on a container restart: exiting would crash-loop. It logs once, counts, keeps failing over,
    and says so when the sysctl is right again."""

    async def drive(r: Run) -> None:
        sysctls = r.fake.sysctls
        await r.until(lambda: r.fake.ipvs.weights() == ALL, 2)
        sysctls.values["net/ipv4/vs/expire_nodest_conn"] = "0"  # someone on the node
        await r.until(lambda: r.events("sysctl not as lvscare needs and cannot be written; serving "
                                       "without it (set it on the node, or recreate the pod to "
                                       "re-run its init container)"), 12)
        r.fake.prober.kill(ep(RS2))
        await r.until(lambda: RS2 not in r.fake.ipvs.weights(), 2)
        await asyncio.sleep(25)  # more checks: still one line, one count
        assert len([e for e in r.logs if e["event"].startswith("sysctl not as")]) == 1
        assert r.daemon.metrics.reconcile_errors == {"sysctl": 1}
        sysctls.values["net/ipv4/vs/expire_nodest_conn"] = "1"  # set on the node
        await r.until(lambda: r.events("sysctls as lvscare needs again"), 12)

    def unwritable(r: Run) -> None:
        r.fake.sysctls.writable = False

    play(drive, setup=unwritable)


def test_a_second_daemon_stands_by_without_touching_anything_and_takes_over() -> None:
    """The static pod holds the node's lock; the DaemonSet's daemon on the same node waits,
    writes nothing, answers SIGTERM, and takes over within a second of the other's end."""

    async def drive(r: Run) -> None:
        assert r.events("another lvscare manages these virtual servers on this node; standing by "
                        "until it stops")
        await asyncio.sleep(5)
        assert r.fake.ipvs.weights() == {} and r.fake.node.objects == set()
        assert r.fake.node.open_accesses == 0 and r.fake.prober.probes == []
        r.fake.lock.others.clear()  # the static pod is gone
        assert await r.until(lambda: r.fake.ipvs.weights() == ALL, 3) < 1.5
        assert r.events("the other lvscare has stopped; taking over")
        assert r.fake.lock.held == {"10.103.97.2:6443"}

    def held_elsewhere(r: Run) -> None:
        r.fake.lock.others.add("10.103.97.2:6443")

    play(drive, setup=held_elsewhere, started="another lvscare manages these virtual servers on "
         "this node; standing by until it stops")


@pytest.mark.parametrize("mode", ["route", "link"])
def test_a_deleted_route_address_or_link_is_back_within_one_interval(mode: str) -> None:
    async def drive(r: Run) -> None:
        node = r.fake.node
        await r.until(lambda: len(node.objects) >= (1 if mode == "route" else 3), 2)
        complete = set(node.objects)
        for lost in sorted(o for o in complete if o[0] != "nat"):
            node.objects.discard(lost)
            if lost[0] == "link":  # the address goes with its link
                node.objects.discard(("addr", "lvscare", VIP))
            assert await r.until(lambda: node.objects == complete, 2) <= 1.1
        assert len(r.events("VIP access repaired")) >= 1
        assert sum(r.daemon.metrics.repairs.values()) >= 1
        if mode == "link":
            node.objects.discard(("nat", VIP))
            assert await r.until(lambda: node.objects == complete, IPTABLES_EVERY + 2) <= IPTABLES_EVERY + 1.1

    play(drive, config(mode=mode))


def test_a_killed_real_server_is_deleted_at_once_its_clients_reset_and_it_comes_back() -> None:
    async def drive(r: Run) -> None:
        await r.until(lambda: r.fake.ipvs.weights() == ALL, 2)
        await asyncio.sleep(1.5)  # a probe connection stands
        r.fake.prober.kill(ep(RS2))
        assert await r.until(lambda: RS2 not in r.fake.ipvs.weights(), 2) < 0.1
        down = r.events("real server down")
        assert down[-1]["rs"] == RS2 and down[-1]["probe"] == "refused"
        assert r.fake.client_reset.resets == [(f"{VIP}:6443", RS2)]
        assert r.events("clients nudged")[-1]["rs"] == RS2
        r.fake.prober.set_fault(ep(RS2), "ok")
        assert await r.until(lambda: r.fake.ipvs.weights() == ALL, 3) < 2

    play(drive)


def test_a_blackholed_real_server_is_deleted_within_interval_plus_two_timeouts() -> None:
    async def drive(r: Run) -> None:
        await r.until(lambda: r.fake.ipvs.weights() == ALL, 2)
        r.fake.prober.set_fault(ep(RS1), "timeout")
        assert await r.until(lambda: RS1 not in r.fake.ipvs.weights(), 5) <= 1.05 + 2 * 0.8 + 0.25
        assert r.events("real server down")[-1]["probe"] == "timeout"
        assert r.events("real server failing")  # one lost probe does not eject

    play(drive)


def test_a_slow_real_server_is_kept_logged_once_and_shown() -> None:
    async def drive(r: Run) -> None:
        await r.until(lambda: r.fake.ipvs.weights() == ALL, 2)
        r.fake.prober.set_fault(ep(RS1), "slow")
        await r.until(lambda: r.events("real server slow: kept, it answers PINGs"), 2)
        await r.hold(lambda: r.fake.ipvs.weights() == ALL, 5)  # five probes or more: kept
        (slow,) = r.events("real server slow: kept, it answers PINGs")
        assert slow["rs"] == RS1 and slow["state"] == "healthy" and "PINGs answered" in slow["reason"]
        assert "lvscare_real_server_slow{" + f'vs="{VIP}:6443",rs="{RS1}"}} 1.0' in \
            r.daemon.metrics.render(r.daemon.snapshot).decode()
        assert not r.events("real server failing") and not r.events("real server down")
        r.fake.prober.set_fault(ep(RS1), "ok")
        await r.until(lambda: r.events("real server answers readiness in time again"), 2)
        await r.until(lambda: "lvscare_real_server_slow{" + f'vs="{VIP}:6443",rs="{RS1}"}} 0.0'
                      in r.daemon.metrics.render(r.daemon.snapshot).decode(), 2)
        # Slow, then dead: the failure counts as any other.
        r.fake.prober.set_fault(ep(RS1), "slow")
        await r.until(lambda: len(r.events("real server slow: kept, it answers PINGs")) == 2, 2)
        r.fake.prober.set_fault(ep(RS1), "timeout")
        await r.until(lambda: RS1 not in r.fake.ipvs.weights(), 5)

    play(drive)


def test_an_unhealthy_answer_drains_then_deletes() -> None:
    async def drive(r: Run) -> None:
        await r.until(lambda: r.fake.ipvs.weights() == ALL, 2)
        r.fake.prober.set_fault(ep(RS1), "500")
        await r.until(lambda: r.fake.ipvs.weights().get(RS1) == 0, 3)
        drained = r.now
        await r.until(lambda: RS1 not in r.fake.ipvs.weights(), 5)
        assert r.now - drained >= 3 - 0.1
        r.fake.prober.set_fault(ep(RS1), "ok")
        await r.until(lambda: r.fake.ipvs.weights() == ALL, 3)

    play(drive, config(drain_period="3s"))


def test_a_flapping_real_server_does_not_churn_the_table() -> None:
    async def drive(r: Run) -> None:
        await r.until(lambda: r.fake.ipvs.weights() == ALL, 2)
        since = r.now
        for flip in range(16):
            r.fake.prober.set_fault(ep(RS1), "500" if flip % 2 == 0 else "ok")
            await asyncio.sleep(0.5)
        r.fake.prober.set_fault(ep(RS1), "ok")
        # It was probed all along (at least once a second), yet its weight changed rarely.
        assert r.fake.prober.count(ep(RS1), since) >= 8
        touching = [op for op in r.fake.ipvs.applied if RS1 in str(op)]
        assert len(touching) <= 4, touching

    play(drive)


def test_all_down_keeps_the_last_healthy_one_and_recovers() -> None:
    async def drive(r: Run) -> None:
        await r.until(lambda: r.fake.ipvs.weights() == ALL, 2)
        await asyncio.sleep(1.5)
        r.fake.prober.kill(ep(RS1))
        r.fake.prober.kill(ep(RS2))
        await r.until(lambda: r.fake.ipvs.weights() == {RS3: 1}, 3)
        r.fake.prober.kill(ep(RS3))
        await r.until(lambda: r.events("real server down") and
                      r.events("real server down")[-1]["rs"] == RS3, 3)
        await r.hold(lambda: r.fake.ipvs.weights() == {RS3: 1}, 3)  # fail-open
        assert len(r.events("all real servers down: keeping the last healthy ones (fail-open)")) == 1
        snap = r.daemon.snapshot
        assert snap.virtual_servers[0].all_down
        r.fake.prober.set_fault(ep(RS1), "ok")
        await r.until(lambda: r.fake.ipvs.weights() == {RS1: 1}, 3)
        assert r.events("a real server is healthy again: fail-open over")

    play(drive)


def test_rules_changed_by_someone_else_are_repaired_and_counted() -> None:
    async def drive(r: Run) -> None:
        ipvs = r.fake.ipvs
        await r.until(lambda: ipvs.weights() == ALL, 2)
        ipvs.table.clear()  # ipvsadm -C
        assert await r.until(lambda: ipvs.weights() == ALL, 2) <= 1.1
        (state,) = ipvs.table.values()
        del state.dests[ep(RS1)]  # ipvsadm -d
        assert await r.until(lambda: ipvs.weights() == ALL, 2) <= 1.1
        state.dests[ep(RS2)] = replace(state.dests[ep(RS2)], weight=9)  # ipvsadm -e -w 9
        assert await r.until(lambda: ipvs.weights() == ALL, 2) <= 1.1
        assert len(r.events("rules repaired")) == 3
        await r.until(lambda: r.daemon.snapshot.repairs >= 1 + 3 + 1, 2)  # service + 3 + 1, + 1
        assert r.daemon.metrics.repairs == {f"{VIP}:6443": r.daemon.snapshot.repairs}

    play(drive)


def test_a_restarted_daemon_adopts_the_rules_without_rewriting_them() -> None:
    async def first(r: Run) -> None:
        await r.until(lambda: r.fake.ipvs.weights() == ALL, 2)

    before = play(first).fake.ipvs

    run = Run(config(), None)
    run.fake.ipvs = before
    run.daemon = Daemon(config(), None, world=run.fake.world(), rng=random.Random(1))
    before.applied.clear()

    async def main() -> None:
        task = asyncio.create_task(run.daemon.run())
        await asyncio.sleep(5)
        run.daemon.request_stop()
        assert await task == 0

    with capture_logs() as logs:
        run_virtual(main())
    assert [e for e in logs if e["event"] == "adopted existing rules"]
    assert before.applied == [] and before.weights() == ALL


def test_a_failing_kernel_backs_off_is_reported_and_recovers() -> None:
    async def drive(r: Run) -> None:
        await r.until(lambda: r.fake.ipvs.weights() == ALL, 2)
        r.fake.ipvs.refuse = 1  # EPERM
        r.fake.ipvs.table.clear()
        await r.until(lambda: r.events("reconcile failed, will retry"), 2)
        await asyncio.sleep(20)
        assert len(r.events("reconcile failed, will retry")) == 1  # once per episode
        assert r.daemon.metrics.reconcile_errors["EPERM"] >= 3
        code, reason = healthz(r.daemon.snapshot, WALL0 + r.now)
        assert code == 503 and "operation not permitted" in reason
        r.fake.ipvs.refuse = None
        await r.until(lambda: r.fake.ipvs.weights() == ALL, 31)
        assert r.events("reconcile recovered")
        assert healthz(r.daemon.snapshot, WALL0 + r.now) == (200, "ok")

    play(drive)


def _reloadable(first: Config) -> tuple[list[Config | Exception], Callable[[], Config]]:
    holder: list[Config | Exception] = [first]

    def read() -> Config:
        current = holder[-1]
        if isinstance(current, Exception):
            raise current
        return current

    return holder, read


def test_sighup_leaves_the_daemon_as_a_fresh_start_with_the_new_file_would() -> None:
    old = config((RS1, RS2), mode="link", iface="lvs0", interval="1s")
    new = config((RS1, RS3), mode="link", iface="lvs1", interval="500ms", health_timeout="300ms")
    holder, read = _reloadable(old)

    async def drive(r: Run) -> None:
        node, prober = r.fake.node, r.fake.prober
        await r.until(lambda: r.fake.ipvs.weights() == {RS1: 1, RS2: 1}, 2)
        await r.until(lambda: ("addr", "lvs0", VIP) in node.objects, 2)
        holder.append(new)
        os.kill(os.getpid(), signal.SIGHUP)
        await r.until(lambda: r.events("reloaded"), 1)
        reloaded = r.events("reloaded")[-1]
        assert reloaded["added"] == [RS3] and reloaded["removed"] == [RS2]
        # The new real server joins after its first good probes; the old one leaves.
        await r.until(lambda: r.fake.ipvs.weights() == {RS1: 1, RS3: 1}, 3)
        # The VIP moved to the new interface; the old one (a dummy of ours, now empty) is gone.
        await r.until(lambda: ("addr", "lvs1", VIP) in node.objects, 2)
        assert ("addr", "lvs0", VIP) not in node.objects and ("link", "lvs0") not in node.objects
        assert node.open_accesses == 1
        # Probes of the real server that stayed follow the new interval and timeout.
        since = r.now
        await asyncio.sleep(5)
        recent = [(t, hc) for t, rs, hc in prober.probes if rs == ep(RS1) and t >= since]
        assert 8 <= len(recent) <= 12, len(recent)
        assert {hc.timeout for _, hc in recent} == {0.3}
        # It kept its health: no transition was logged for it.
        assert not [e for e in r.logs if e.get("rs") == RS1 and str(e["event"]).startswith("real server")]
        assert (ep(f"{VIP}:6443"), ep(RS2)) not in r.daemon.metrics.probes
        assert [v.real_server.endpoint for v in r.daemon.snapshot.virtual_servers[0].real_servers] \
            == [ep(RS1), ep(RS3)]

    play(drive, old, read)


def test_a_reload_that_fails_validation_keeps_the_running_configuration() -> None:
    holder, read = _reloadable(config((RS1, RS2)))

    async def drive(r: Run) -> None:
        await r.until(lambda: r.fake.ipvs.weights() == {RS1: 1, RS2: 1}, 2)
        running = r.daemon.cfg
        holder.append(UserError("care.yaml: interval: None is not a duration"))
        r.daemon.request_reload()
        await r.until(lambda: r.events("reload failed, keeping the running configuration"), 1)
        # A certificate that cannot be read is refused as at start, not found at the next probe.
        r.fake.prober.bad_ca.add("/nonexistent")
        bad = config((RS1,), health_ca="/nonexistent")
        holder.append(bad)
        r.daemon.request_reload()
        await r.until(lambda: len(r.events("reload failed, keeping the running configuration")) == 2, 1)
        assert "--health-ca" in r.events("reload failed, keeping the running configuration")[-1]["error"]
        assert r.daemon.cfg is running
        await r.hold(lambda: r.fake.ipvs.weights() == {RS1: 1, RS2: 1}, 3)

    play(drive, config((RS1, RS2)), read)


@pytest.mark.parametrize("clean", [False, True])
def test_sigterm_stops_and_keeps_or_removes_the_rules(clean: bool) -> None:
    async def drive(r: Run) -> None:
        await r.until(lambda: r.fake.ipvs.weights() == ALL and r.fake.node.objects, 2)
        os.kill(os.getpid(), signal.SIGTERM)
        assert r.task is not None
        assert await asyncio.wait_for(r.task, 5) == 0
        assert r.events("stopping")[-1]["signal"] == "SIGTERM"

    r = play(drive, config(clean_on_exit="true" if clean else "false"))
    if clean:
        assert r.fake.ipvs.table == {} and r.fake.node.objects == set()
    else:
        assert r.fake.ipvs.weights() == ALL and r.fake.node.objects
    assert not r.fake.ipvs.is_open and r.fake.node.open_accesses == 0


def test_exporters_render_the_snapshot_of_the_last_reconcile() -> None:
    async def drive(r: Run) -> None:
        await r.until(lambda: r.fake.ipvs.weights() == ALL, 2)
        await asyncio.sleep(1.5)
        r.fake.prober.kill(ep(RS3))
        await r.until(lambda: RS3 not in r.fake.ipvs.weights(), 1)
        await asyncio.sleep(0.05)
        snap = r.daemon.snapshot
        body = status(snap, r.now)
        rows = {x["address"]: x for x in body["virtualServers"][0]["realServers"]}
        assert rows[RS3]["state"] == "down" and rows[RS3]["kernelWeight"] is None
        assert rows[RS1]["state"] == "healthy" and rows[RS1]["kernelWeight"] == 1
        text = r.daemon.metrics.render(snap).decode()
        assert f'lvscare_real_server_up{{vs="{VIP}:6443",rs="{RS3}"}} 0.0' in text
        assert f'lvscare_virtual_server_healthy_real_servers{{vs="{VIP}:6443"}} 2.0' in text
        assert f'lvscare_clients_nudged_total{{vs="{VIP}:6443"}} 1.0' in text

    play(drive)


def test_deleted_real_servers_are_reset_even_without_the_capability_warned_once() -> None:
    async def drive(r: Run) -> None:
        r.fake.client_reset.refuse = True
        await r.until(lambda: r.fake.ipvs.weights() == ALL, 2)
        await asyncio.sleep(1.5)
        for rs in (RS1, RS2):
            r.fake.prober.kill(ep(rs))
            await r.until(lambda rs=rs: rs not in r.fake.ipvs.weights(), 2)  # type: ignore[misc]
        deletions = [op for op in r.fake.ipvs.applied if isinstance(op, DelDest)]
        assert {str(op.endpoint) for op in deletions} == {RS1, RS2}
        assert all(str(op_key(op).endpoint) == f"{VIP}:6443" for op in deletions)
        assert len([e for e in r.logs if "CAP_NET_RAW" in e["event"]]) == 1

    play(drive)


def test_a_reload_that_crashes_validation_keeps_the_daemon_running() -> None:
    holder, read = _reloadable(config((RS1, RS2)))

    async def drive(r: Run) -> None:
        await r.until(lambda: r.fake.ipvs.weights() == {RS1: 1, RS2: 1}, 2)
        holder.append(AttributeError("'NoneType' object has no attribute 'strip'"))
        r.daemon.request_reload()
        await r.until(lambda: r.events("reload failed, keeping the running configuration"), 1)
        r.fake.prober.kill(ep(RS1))
        await r.until(lambda: r.fake.ipvs.weights() == {RS2: 1}, 3)  # still at work

    play(drive, config((RS1, RS2)), read)


# -- control-plane discovery ---------------------------------------------------------------------


def _discovery(tmp_path: Any, fetch: Any, cfg: Config) -> Discovery:
    from lvscare import kubeconfig

    from .test_discovery import write_kubeconfig

    kc = kubeconfig.load(write_kubeconfig(tmp_path / "kubelet.conf", {
        "server": "https://10.103.97.2:6443", "insecure-skip-tls-verify": True}, {}))
    async def inline(write: Callable[[State], None], state: State) -> None:
        write(state)  # a thread's real time would let the virtual clock run ahead meanwhile

    return Discovery(kc, cfg, fetch, rng=random.Random(3), wall=lambda: WALL0, offload=inline)


def test_discovered_members_become_the_real_servers_and_a_broken_answer_changes_nothing(
        tmp_path: Any) -> None:
    from .test_discovery import FakeFetch, endpoints

    fetch = FakeFetch()
    fetch.answers["server"] = (200, endpoints("10.0.0.1", "10.0.0.2", "10.0.0.3"))
    cfg = config(rs=[RS1, RS2], discover_interval="2s", state_dir=str(tmp_path / "state"))

    async def drive(r: Run) -> None:
        # A new member is probed first and carries traffic after rise (2) good probes.
        took = await r.until(lambda: r.fake.ipvs.weights() == ALL, 5)
        assert took > 0.2
        (changed,) = r.events("control-plane members changed")
        assert changed["added"] == [RS3] and changed["removed"] == []
        assert {str(v.real_server.endpoint): v.source for v in
                r.daemon.snapshot.virtual_servers[0].real_servers} == {
            RS1: "discovered", RS2: "discovered", RS3: "discovered"}
        # A seed that left the control plane goes: drained first (it had no connections, so at
        # the next reconcile), then out of the configuration at the next round.
        fetch.answers["server"] = (200, endpoints("10.0.0.2", "10.0.0.3"))
        await r.until(lambda: r.fake.ipvs.weights() == {RS2: 1, RS3: 1}, 4)
        (drained,) = r.events("control-plane members left while serving: drained until their connections end")
        assert drained["draining"] == [RS1]
        await r.until(lambda: r.events("control-plane members changed")[-1]["removed"] == [RS1], 3)
        # Empty, broken, forbidden: nothing changes, one line per episode.
        failed = "discovery failed: keeping the current real servers"
        for n, answer in enumerate(((200, endpoints()), (200, b"<html>"), (403, b"")), 1):
            fetch.answers["server"] = answer
            rounds = len(fetch.asked)
            # Backing off: 2 s doubling per failure, so bounded by the rounds, not a fixed time.
            while len(fetch.asked) < rounds + 2:
                await r.hold(lambda: r.fake.ipvs.weights() == {RS2: 1, RS3: 1}, 1)
            assert len(r.events(failed)) == n
        assert [e["reason"] for e in r.events("discovery failed: keeping the current real servers")] == [
            "empty", "decode", "forbidden"]

    r = play(drive, cfg, discovery=_discovery(tmp_path, fetch, cfg))
    assert r.daemon.metrics.discovery_failures["forbidden"] >= 1
    saved = json.loads((tmp_path / "state" / "members-10.103.97.2-6443.json").read_text())
    assert saved["members"] == [RS2, RS3]


DRAINED = {RS1: 0, RS2: 1, RS3: 1}


def _leaves_while_serving(tmp_path: Any, then: Callable[[Run, Any], Awaitable[None]]) -> None:
    """Three members serving; RS1, with connections in the kernel, leaves the Endpoints and is
    drained (weight 0); then ``then(run, fetch)``."""
    from .test_discovery import FakeFetch, endpoints

    fetch = FakeFetch()
    fetch.answers["server"] = (200, endpoints("10.0.0.1", "10.0.0.2", "10.0.0.3"))
    cfg = config(rs=[RS1, RS2, RS3], discover_interval="2s", state_dir=str(tmp_path / "state"))

    async def drive(r: Run) -> None:
        await r.until(lambda: r.fake.ipvs.weights() == ALL, 5)
        r.fake.ipvs.active[RS1] = 4
        fetch.answers["server"] = (200, endpoints("10.0.0.2", "10.0.0.3"))
        await r.until(lambda: r.fake.ipvs.weights() == DRAINED, 4)
        await then(r, fetch)

    play(drive, cfg, discovery=_discovery(tmp_path, fetch, cfg))


def test_a_member_that_leaves_while_serving_is_drained_not_cut(tmp_path: Any) -> None:
    """kube-apiserver leaves the Endpoints at SIGTERM and serves through its shutdown delay: its
    real server goes to weight 0 at once, its clients are not reset, and it is deleted when the
    kernel counts none of its connections established. Back in the members, it is probed anew."""
    from .test_discovery import endpoints

    async def then(r: Run, fetch: Any) -> None:
        # Held at weight 0 through discovery rounds and probes that still answer.
        await r.hold(lambda: r.fake.ipvs.weights() == DRAINED, 6)
        assert r.fake.client_reset.resets == []
        r.fake.ipvs.active[RS1] = 0
        await r.until(lambda: r.fake.ipvs.weights() == {RS2: 1, RS3: 1}, 3)
        await r.until(lambda: r.events("control-plane members changed")[-1]["removed"] == [RS1], 3)
        # It comes back (restarted): a new real server, in after `rise` good probes.
        fetch.answers["server"] = (200, endpoints("10.0.0.1", "10.0.0.2", "10.0.0.3"))
        await r.until(lambda: r.fake.ipvs.weights() == ALL, 5)

    _leaves_while_serving(tmp_path, then)


def test_a_member_that_leaves_and_dies_while_draining_is_cut_at_once(tmp_path: Any) -> None:
    async def then(r: Run, fetch: Any) -> None:
        r.fake.prober.set_fault(ep(RS1), "timeout")  # silent before its connections ended
        await r.until(lambda: r.fake.ipvs.weights() == {RS2: 1, RS3: 1}, 5)
        assert r.fake.client_reset.resets == [(f"{VIP}:6443", RS1)]
        (out,) = r.events("control-plane member that left stopped answering: out, its clients reset")
        assert out["rs"] == RS1 and out["probe"] == "timeout"

    _leaves_while_serving(tmp_path, then)


def test_a_member_that_leaves_and_stops_listening_is_still_drained(tmp_path: Any) -> None:
    """kube-apiserver closes its listener at the end of its shutdown delay and still answers what
    is in flight; a probe that missed its goodbye sees only a refusal. The connections the kernel
    counts are left to finish, not reset; it goes when they have."""
    async def then(r: Run, fetch: Any) -> None:
        r.fake.prober.set_fault(ep(RS1), "refused")
        await r.hold(lambda: r.fake.ipvs.weights() == DRAINED, 4)
        assert r.fake.client_reset.resets == []
        r.fake.ipvs.active[RS1] = 0
        await r.until(lambda: r.fake.ipvs.weights() == {RS2: 1, RS3: 1}, 3)
        assert r.fake.client_reset.resets == []

    _leaves_while_serving(tmp_path, then)


def test_a_state_file_of_this_cluster_is_used_before_the_first_answer(tmp_path: Any) -> None:
    from .test_discovery import FakeFetch

    fetch = FakeFetch()  # the server and every member refuse
    cfg = config(rs=[RS1], state_dir=str(tmp_path / "state"))
    d = _discovery(tmp_path, fetch, cfg)
    d.save_state((ep(RS1), ep(RS2), ep(RS3)))

    async def drive(r: Run) -> None:
        assert await r.until(lambda: r.fake.ipvs.weights() == ALL, 1) < 0.1  # from the first write
        assert r.events("members from the discovery state file")
        await r.until(lambda: r.events("discovery failed: keeping the current real servers"), 2)
        assert r.events("discovery failed: keeping the current real servers")[0]["reason"] == "unreachable"
        assert fetch.asked[:4] == ["server", RS1, RS2, RS3]  # every known member was asked
        await r.hold(lambda: r.fake.ipvs.weights() == ALL, 3)

    play(drive, cfg, discovery=d)
