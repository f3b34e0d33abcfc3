"""The daemon under its own faults, on the virtual clock: reconciles that fail after the table was
written, a signal during a reload, members that come and go, two virtual servers sharing members.
Each story here failed on the code before it was written (issue 24's defects)."""

from __future__ import annotations

import asyncio
import errno
import random
import subprocess
import sys
import time
from pathlib import Path

from lvscare.config import Config, build_config
from lvscare.web import healthz, stale_after

from .fakes import config, ep
from .test_daemon import ALL, RS1, RS2, RS3, VIP, WALL0, Run, play

TWO_VIPS = """
virtualServers:
- vs: "[fd00::10]:6443"
  realServers: ["[fd00::1]:6443", "[fd00::2]:6443"]
- vs: 10.103.97.2:6443
  realServers: [10.0.0.1:6443, 10.0.0.2:6443]
"""


def test_healthz_is_503_while_every_reconcile_fails_after_the_table_and_every_vip_is_tried() -> None:
    """The IPVS writes succeed and the VIP's route fails every time: the reconcile failed, and
    /healthz must say so for the kubelet's liveness probe (six 503s in a row), without a 200 in
    between. The IPv4 VIP still gets its route while the IPv6 one fails."""
    cfg = build_config({"metrics-address": "off", "interval": "1"}, {}, yaml_text=TWO_VIPS)
    v4_route = ("route", VIP, "auto")

    async def drive(r: Run) -> None:
        def code() -> int:
            return healthz(r.daemon.snapshot, WALL0 + r.now)[0]

        await r.until(lambda: code() == 200 and v4_route in r.fake.node.objects, 2)
        r.fake.node.failing.add("fd00::10")
        r.fake.node.objects.discard(v4_route)  # and someone deletes the IPv4 VIP's route
        await r.until(lambda: v4_route in r.fake.node.objects, 2)
        await r.until(lambda: code() == 503, stale_after(1) + 2)
        samples = []
        for _ in range(240):  # 120 s
            samples.append(code())
            await asyncio.sleep(0.5)
        assert set(samples) == {503}
        assert "fd00::10" in (r.daemon.snapshot.last_error or "")
        r.fake.node.failing.clear()
        await r.until(lambda: code() == 200, 35)  # within the backoff

    play(drive, cfg=cfg)


def test_sigterm_during_a_reload_ends_the_daemon_at_once_even_while_reconciles_fail() -> None:
    """Reconciles failing back off to 30 s; a SIGTERM that arrives while the reload runs must not
    wait for that backoff (the kubelet's grace period is 30 s: SIGKILL, no --clean-on-exit)."""
    box: dict[str, Run] = {}

    def reread() -> Config:
        box["run"].daemon.request_stop("SIGTERM")  # arrives while the reload is under way
        return config()

    async def drive(r: Run) -> None:
        await r.until(lambda: r.fake.ipvs.weights() == ALL, 2)
        r.fake.ipvs.refuse = errno.EPERM
        r.fake.ipvs.table.clear()
        await r.until(lambda: r.daemon.metrics.reconcile_errors.get("EPERM", 0) >= 6, 120)
        r.daemon.request_reload()
        assert r.task is not None
        took = await r.until(r.task.done, 35)
        assert took < 1.0, f"stopped {took:.1f}s after SIGTERM"

    play(drive, reload=reread, setup=lambda r: box.update(run=r))


def test_a_stopping_daemon_does_not_wait_for_a_discovery_request_in_flight(tmp_path: Path) -> None:
    """A server that accepts and never finishes the TLS handshake holds the request's thread up
    to its timeout; the process must exit at once all the same (asyncio's executor would be
    joined at loop shutdown and at interpreter exit)."""
    script = """
import asyncio, socket, sys, time
from lvscare import discovery, kubeconfig
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
port = listener.getsockname()[1]
path = sys.argv[1]
open(path, "w").write(f'''apiVersion: v1
kind: Config
current-context: k
contexts: [{{name: k, context: {{cluster: c, user: u}}}}]
clusters: [{{name: c, cluster: {{server: "https://127.0.0.1:{port}", insecure-skip-tls-verify: true}}}}]
users: [{{name: u, user: {{}}}}]
''')
kc = kubeconfig.load(path)

async def main():
    task = asyncio.create_task(discovery.fetch(kc, None, 30.0))
    await asyncio.sleep(0.3)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

asyncio.run(main())
"""
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "kubeconfig")], check=True,
                   timeout=60)
    assert time.monotonic() - started < 5, "the process waited for the hanging request"


def test_a_real_server_re_added_and_killed_within_one_interval_has_its_clients_reset() -> None:
    async def drive(r: Run) -> None:
        rs2 = ep(RS2)
        await r.until(lambda: r.fake.ipvs.weights() == ALL, 2)
        r.fake.prober.kill(rs2)
        await r.until(lambda: RS2 not in r.fake.ipvs.weights(), 2)
        assert r.fake.client_reset.resets == [(f"{VIP}:6443", RS2)]
        r.fake.prober.set_fault(rs2, "ok")
        await r.until(lambda: RS2 in r.fake.ipvs.weights(), 5)
        r.fake.prober.kill(rs2)  # at once: the table read before the re-add does not have it
        await r.until(lambda: RS2 not in r.fake.ipvs.weights(), 2)
        assert r.fake.client_reset.resets == [(f"{VIP}:6443", RS2)] * 2

    play(drive)


def test_discovery_survives_what_it_did_not_expect(tmp_path: Path) -> None:
    """A crash in a round (a bug, a RecursionError of a deeply nested answer, a CA file being
    rotated while the state file is written) is logged once, counted, and the next round runs."""
    from .test_daemon import _discovery
    from .test_discovery import FakeFetch, endpoints

    fetch = FakeFetch()
    fetch.answers["server"] = RuntimeError("a bug in a round")
    cfg = config(rs=[RS1, RS2], discover_interval="2s", state_dir=str(tmp_path / "state"))
    d = _discovery(tmp_path, fetch, cfg)

    async def drive(r: Run) -> None:
        await r.until(lambda: len(fetch.asked) >= 6, 60)
        assert len(r.events("discovery round crashed; keeping the current real servers")) == 1
        fetch.answers["server"] = (200, b"[" * 100_000 + b"]" * 100_000)
        await r.until(lambda: r.events("discovery failed: keeping the current real servers"), 60)
        assert r.events("discovery failed: keeping the current real servers")[-1]["reason"] == "decode"
        fetch.answers["server"] = (200, endpoints("10.0.0.1", "10.0.0.2", "10.0.0.3"))
        await r.until(lambda: r.fake.ipvs.weights() == ALL, 400)

    r = play(drive, cfg, discovery=d)
    assert r.daemon.metrics.discovery_failures["error"] >= 2


def test_every_member_replaced_while_the_new_ones_prove_themselves_never_empties_the_table(
        tmp_path: Path) -> None:
    """The fail-open memory held only departed members: the virtual server was left with no
    real server for `rise` probes. Until a new member is proven, the old ones are not taken
    out (the table is never empty while anything may serve)."""
    from .test_daemon import _discovery
    from .test_discovery import FakeFetch, endpoints

    fetch = FakeFetch()
    fetch.answers["server"] = (200, endpoints("10.0.0.1", "10.0.0.2"))
    cfg = config(rs=[RS1, RS2], discover_interval="2s", state_dir=str(tmp_path / "state"))

    async def drive(r: Run) -> None:
        await r.until(lambda: r.fake.ipvs.weights() == {RS1: 1, RS2: 1}, 3)
        fetch.answers["server"] = (200, endpoints("10.0.0.3", "10.0.0.4"))
        samples = []
        for _ in range(200):  # 10 s
            samples.append(dict(r.fake.ipvs.weights()))
            await asyncio.sleep(0.05)
        assert all(any(w > 0 for w in s.values()) for s in samples), samples
        assert samples[-1] == {RS3: 1, "10.0.0.4:6443": 1}

    play(drive, cfg, discovery=_discovery(tmp_path, fetch, cfg))


def test_a_socket_error_during_a_reload_does_not_end_the_daemon() -> None:
    """A netlink send can fail with a plain OSError (ENOBUFS, EMSGSIZE), not a KernelError."""
    two = build_config({"metrics-address": "off"}, {}, yaml_text=TWO_VIPS)
    one = build_config({"metrics-address": "off"}, {}, yaml_text=TWO_VIPS.split("- vs: 10.103")[0])

    async def drive(r: Run) -> None:
        await r.until(lambda: r.fake.ipvs.weights("[fd00::10]:6443"), 2)
        r.fake.ipvs.broken = OSError(errno.ENOBUFS, "No buffer space available")
        r.daemon.request_reload()  # drops the IPv4 virtual server: a write that fails
        await r.until(lambda: r.events("reload: cannot remove what the old configuration created"), 2)
        r.fake.ipvs.broken = None
        assert r.task is not None and not r.task.done()
        await r.until(lambda: not r.fake.ipvs.weights(f"{VIP}:6443"), 5)  # repaired after
        assert r.fake.ipvs.weights("[fd00::10]:6443") == {"[fd00::1]:6443": 1, "[fd00::2]:6443": 1}

    play(drive, cfg=two, reload=lambda: one)


def test_a_reload_whose_vip_access_cannot_open_keeps_probing_and_reconciles_open_it() -> None:
    """The new access fails to open (EMFILE) after the probes were stopped for the reload: the
    probes run again at once (a server killed then is still taken out), /healthz says the
    reconciles fail, and the first reconcile after the error clears opens the access."""

    async def drive(r: Run) -> None:
        def code() -> int:
            return healthz(r.daemon.snapshot, WALL0 + r.now)[0]

        await r.until(lambda: r.fake.ipvs.weights() == ALL and code() == 200, 2)
        r.fake.node.open_error = OSError(errno.EMFILE, "Too many open files")
        r.daemon.request_reload()
        await r.until(lambda: r.events("reload: cannot open the VIP access; reconciles try again"), 2)
        assert r.events("reloaded")
        r.fake.prober.kill(ep(RS2))
        await r.until(lambda: RS2 not in r.fake.ipvs.weights(), 5)
        await r.until(lambda: code() == 503, 60)
        r.fake.node.open_error = None
        await r.until(lambda: code() == 200 and r.fake.node.open_accesses == 1, 60)

    play(drive, reload=lambda: config())


def test_a_reload_that_changes_the_state_dir_without_discovery_is_applied(tmp_path: Path) -> None:
    changed = config(rs=[RS1, RS2], state_dir=str(tmp_path))

    async def drive(r: Run) -> None:
        await r.until(lambda: r.fake.ipvs.weights() == ALL, 2)
        r.daemon.request_reload()
        await r.until(lambda: r.events("reloaded"), 2)
        await r.until(lambda: r.fake.ipvs.weights() == {RS1: 1, RS2: 1}, 5)
        assert not r.events("reload refused, keeping the running configuration: these settings "
                            "apply at start only; restart lvscare to change them")

    play(drive, reload=lambda: changed)


def test_a_reload_that_changes_discovery_is_refused_whole(tmp_path: Path) -> None:
    from .test_daemon import _discovery
    from .test_discovery import FakeFetch, endpoints

    fetch = FakeFetch()
    fetch.answers["server"] = (200, endpoints("10.0.0.1", "10.0.0.2", "10.0.0.3"))
    running = config(discover_interval="30s", state_dir=str(tmp_path / "a"))
    changed = config(rs=[RS1, RS2], discover_interval="5s", state_dir=str(tmp_path / "b"))

    async def drive(r: Run) -> None:
        await r.until(lambda: r.fake.ipvs.weights() == ALL, 2)
        r.daemon.request_reload()
        refused = "reload refused, keeping the running configuration: these settings apply at " \
                  "start only; restart lvscare to change them"
        await r.until(lambda: r.events(refused), 2)
        assert r.events(refused)[0]["settings"] == ["discoverInterval", "stateDir"]
        await r.hold(lambda: r.fake.ipvs.weights() == ALL, 3)  # RS3 stays: nothing applied
        assert not r.events("reloaded")

    play(drive, cfg=running, reload=lambda: changed, discovery=_discovery(tmp_path, fetch, running))


# -- graceful shutdowns (issue 23) ----------------------------------------------------------------


def test_a_shutting_down_server_is_drained_until_its_connections_end_never_reset() -> None:
    """kubeadm's default --shutdown-delay-duration 0: the listener closes at once while the
    process still serves what it accepted (up to --request-timeout 60 s). Weight 0, its clients
    left alone, out when the kernel shows none of its connections established."""

    async def drive(r: Run) -> None:
        rs2 = ep(RS2)
        await r.until(lambda: r.fake.ipvs.weights() == ALL, 2)
        r.fake.ipvs.active[RS2] = 4  # long requests in flight
        r.fake.prober.set_fault(rs2, "shutdown")
        await r.until(lambda: r.fake.ipvs.weights().get(RS2) == 0, 2)
        await r.hold(lambda: r.fake.ipvs.weights().get(RS2) == 0, 40)  # longer than drainPeriod
        assert r.fake.client_reset.resets == []
        r.fake.ipvs.active[RS2] = 0  # the last one finished; the process exits
        await r.until(lambda: RS2 not in r.fake.ipvs.weights(), 3)
        r.fake.prober.set_fault(rs2, "ok")  # restarted
        await r.until(lambda: r.fake.ipvs.weights() == ALL, 5)

    play(drive)


def test_a_killed_server_is_still_deleted_and_its_clients_reset_at_once() -> None:
    async def drive(r: Run) -> None:
        await r.until(lambda: r.fake.ipvs.weights() == ALL, 2)
        r.fake.ipvs.active[RS2] = 4
        r.fake.prober.kill(ep(RS2))
        took = await r.until(lambda: RS2 not in r.fake.ipvs.weights(), 2)
        assert took < 0.2 and r.fake.client_reset.resets == [(f"{VIP}:6443", RS2)]

    play(drive)


def test_a_sick_server_is_still_drained_then_removed_after_the_drain_period() -> None:
    async def drive(r: Run) -> None:
        await r.until(lambda: r.fake.ipvs.weights() == ALL, 2)
        r.fake.ipvs.active[RS2] = 4
        r.fake.prober.set_fault(ep(RS2), "500")  # [-]etcd failed: alive, not shutting down
        await r.until(lambda: r.fake.ipvs.weights().get(RS2) == 0, 4)
        took = await r.until(lambda: RS2 not in r.fake.ipvs.weights(), 15)
        assert took >= 9  # drainPeriod 10 s, connections or not

    play(drive)


def test_a_restarted_daemon_keeps_a_draining_server_draining() -> None:
    """docs: a real server the kernel holds at weight 0 stays so until a probe says otherwise."""
    from lvscare.daemon import Daemon
    from lvscare.plan import desired_table

    from .fakes import FakeWorld, run_virtual

    cfg = config()
    fake = FakeWorld()
    fake.ipvs.table = desired_table(cfg.virtual_servers, {
        (vs.endpoint, rs.endpoint): 0 if str(rs.endpoint) == RS2 else 1
        for vs in cfg.virtual_servers for rs in vs.real_servers})
    fake.ipvs.active[RS2] = 2
    fake.prober.set_fault(ep(RS2), "shutdown")
    seen: list[dict[str, int]] = []

    async def main() -> None:
        daemon = Daemon(cfg, None, world=fake.world(), rng=random.Random(7))
        task = asyncio.create_task(daemon.run())
        for _ in range(60):  # 3 s
            seen.append(fake.ipvs.weights())
            await asyncio.sleep(0.05)
        daemon.request_stop("test")
        assert await task == 0

    run_virtual(main())
    assert all(s.get(RS2) == 0 for s in seen), seen
    assert fake.client_reset.resets == []
