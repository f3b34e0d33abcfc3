"""A seeded chaos campaign against the daemon, in the test kernel, with invariants checked all along.

    .venv/bin/python bench/chaos.py [--seconds 1800] [--seed N]

One daemon, two virtual servers sharing three members (10.103.97.2 in link mode, 10.103.97.3 in
route mode), the members discovered from the stand-in control plane's Endpoints
(lvscare_rig.cluster). Faults come at random, seeded, and overlap; at most two of the three
backends are down (or out of the Endpoints) at once:

  backends: killed and restarted, blackholed and healed, readiness answering 500, readiness
  hanging; the kernel: ``ipvsadm -C``, the route-mode VIP's route flushed, the link-mode VIP's
  address or dummy link deleted, ``iptables -t nat -F; -X``; the daemon: SIGHUP with a changed
  file; the control plane: a member removed from the Endpoints and added back.

Checked every half second, each violation printed with the seed and the time:

  * a dead backend (killed, blackholed, hanging, 500) is out of both tables (absent, or weight 0
    while it drains) within its detection bound, unless no other member is alive (fail-open);
  * a live member is in both tables within the recovery bound of its last fault;
  * no table is empty while a member is alive (but within the repair bound of ``ipvsadm -C``);
  * /healthz says 503 when reconciles have failed for 10 s, and 200 once they succeed again;
  * requests through both VIPs succeed whenever nothing has changed for the settle time;
  * the daemon's RSS, open files and asyncio tasks do not grow (figures per hour at the end).

Exit 0 only without a violation. ``tests/kernel/test_chaos.py`` runs 60 s of it with a fixed seed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lvscare_rig import testkernel, topology
from lvscare_rig.cluster import Cluster

VIPS = {"link": "10.103.97.2", "route": "10.103.97.3"}
METRICS = "127.0.0.1:10262"
NAT = ("iptables-legacy", "-w", "5", "-t", "nat")  # the test kernel's backend (no nf_tables)
# Bounds, in seconds, from the settings below (interval 1 s, timeout 0.8 s, rise 2, fall 2,
# discovery every 2 s): a kill is seen at once, a blackhole or a hang after two timeouts.
DETECT = {"kill": 3.0, "blackhole": 5.0, "hang": 5.0, "500": 4.0}
RECOVER = 8.0  # healed -> in both tables: rise probes, a reconcile
DISCOVER = 10.0  # an Endpoints change -> in the tables: discovery interval ±20 %, rise
REPAIR = 3.0  # ipvsadm -C, a route, address or link deleted -> back
NAT_REPAIR = 13.0  # the NAT chain is checked every 10 s
SETTLE = 6.0  # requests must succeed when nothing changed for this long
HEALTHZ = 10.0
CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """This thread in the lab's node namespace, where the daemon's /healthz listens on loopback
    (the lab's commands name their namespaces themselves)."""
    libc = ctypes.CDLL(None, use_errno=True)
    back = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        yield
    finally:
        libc.setns(back, CLONE_NEWNET)
        os.close(back)
        os.close(target)


def _config(cluster: Cluster, drain: int, kubeconfig: str) -> str:
    members = [b.address for b in cluster.lab.backends]
    return json.dumps({
        "interval": "1s", "drainPeriod": f"{drain}s", "metricsAddress": METRICS,
        "discoverFrom": kubeconfig, "discoverInterval": "2s",
        "stateDir": str(cluster.dir / "state"),
        "virtualServers": [{"vs": f"{VIPS['link']}:6443", "mode": "link", "realServers": members},
                           {"vs": f"{VIPS['route']}:6443", "mode": "route",
                            "realServers": members}]})


@dataclass
class Chaos:
    cluster: Cluster
    seed: int
    rng: random.Random
    started: float = field(default_factory=time.monotonic)
    faults: dict[str, tuple[str, float, float]] = field(default_factory=dict)  # kind, since, until
    changed: dict[str, float] = field(default_factory=dict)  # backend: last fault or member change
    members: set[str] = field(default_factory=set)
    repaired_by: float = 0.0  # a table or VIP fault is to be repaired by then
    last_change: float = 0.0
    drain: int = 10
    kubeconfig: str = ""
    violations: list[str] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)
    failing_since: float | None = None  # reconciles failing since (the daemon's log)
    log_at: int = 0
    reload_sent: float | None = None  # a SIGHUP the daemon has not answered yet
    tasks: int = 0
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)  # t, rss kB, fds, tasks
    requests: dict[str, list[int]] = field(default_factory=lambda: {"ok": [0], "failed": [0]})

    @property
    def lab(self) -> topology.Lab:
        return self.cluster.lab

    def t(self) -> float:
        return time.monotonic() - self.started

    def note(self, what: str) -> None:
        self.last_change = time.monotonic()
        self.timeline.append(f"{self.t():7.1f}s {what}")

    def violate(self, what: str) -> None:
        line = f"VIOLATION seed={self.seed} t={self.t():.1f}s: {what}"
        if not self.violations or self.violations[-1].split(": ", 1)[1] != what:
            print(line, flush=True)
        self.violations.append(line)

    # -- faults ----------------------------------------------------------------------------------

    def backend(self, name: str) -> topology.Backend:
        return next(b for b in self.lab.backends if b.name == name)

    def down(self) -> set[str]:
        return set(self.faults) | {b.name for b in self.lab.backends} - self.members

    def step(self, daemon: subprocess.Popen[bytes], config: Path) -> None:
        now = time.monotonic()
        for name, (kind, _, until) in list(self.faults.items()):
            if now >= until:
                self.heal(name, kind)
        choice = self.rng.choices(
            ["backend", "table", "route", "address", "link", "nat", "sighup", "member"],
            [8, 1, 1, 1, 1, 1, 1, 2])[0]
        lab = self.lab
        if choice == "backend":
            candidates = sorted({b.name for b in lab.backends} - self.down())
            if len(self.down()) >= 2 or not candidates:
                return
            name = self.rng.choice(candidates)
            kind = self.rng.choice(sorted(DETECT))
            b = self.backend(name)
            if kind == "kill":
                lab.kill(b)
            elif kind == "blackhole":
                lab.blackhole(b)
            else:
                b.set_fault(kind)
            self.faults[name] = (kind, time.monotonic(), now + self.rng.uniform(4, 15))
            self.changed[name] = time.monotonic()
            self.note(f"{name}: {kind}")
        elif choice == "table":
            lab.run("ipvsadm", "-C")
            self.repaired_by = max(self.repaired_by, time.monotonic() + REPAIR)
            self.note("ipvsadm -C")
        elif choice == "route":
            lab.run("ip", "route", "flush", "table", "local", "proto", "76")
            self.repaired_by = max(self.repaired_by, time.monotonic() + REPAIR)
            self.note("route-mode VIP's route flushed")
        elif choice == "address":
            lab.run("ip", "addr", "del", f"{VIPS['link']}/32", "dev", "lvscare", check=False)
            self.repaired_by = max(self.repaired_by, time.monotonic() + REPAIR)
            self.note("link-mode VIP's address deleted")
        elif choice == "link":
            lab.run("ip", "link", "del", "lvscare", check=False)
            self.repaired_by = max(self.repaired_by, time.monotonic() + REPAIR)
            self.note("link-mode dummy link deleted")
        elif choice == "nat":
            lab.run(*NAT, "-F", check=False)
            lab.run(*NAT, "-X", check=False)
            self.repaired_by = max(self.repaired_by, time.monotonic() + NAT_REPAIR)
            self.note("iptables -t nat -F; -X")
        elif choice == "sighup":
            self.drain = 11 if self.drain == 10 else 10
            config.write_text(_config(self.cluster, self.drain, self.kubeconfig))
            daemon.send_signal(signal.SIGHUP)
            self.reload_sent = time.monotonic()
            self.note(f"SIGHUP, drainPeriod {self.drain}s")
        elif choice == "member":
            gone = sorted({b.name for b in lab.backends} - self.members)
            if gone:
                name = self.rng.choice(gone)
                self.members.add(name)
                self.note(f"{name}: back in the Endpoints")
            elif len(self.down()) < 2:
                name = self.rng.choice(sorted(self.members - set(self.faults)))
                self.members.discard(name)
                self.note(f"{name}: removed from the Endpoints")
            else:
                return
            self.changed[name] = time.monotonic()
            self.cluster.members(*[b for b in lab.backends if b.name in self.members])
            # The daemon acts on it only at its next discovery round and its rise probes.
            self.last_change = max(self.last_change, time.monotonic() + DISCOVER - SETTLE)

    def heal(self, name: str, kind: str) -> None:
        b = self.backend(name)
        if kind == "kill":
            self.lab.start(b)
        elif kind == "blackhole":
            self.lab.blackhole(b, on=False)
        else:
            b.set_fault("ok")
        del self.faults[name]
        self.changed[name] = time.monotonic()
        self.note(f"{name}: healed ({kind})")

    def heal_all(self) -> None:
        for name, (kind, _, _) in list(self.faults.items()):
            self.heal(name, kind)

    # -- invariants ------------------------------------------------------------------------------

    def tables(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {vip: {} for vip in VIPS.values()}
        current = None
        for line in self.lab.run("ipvsadm", "-Ln").stdout.splitlines():
            m = re.match(r"^TCP\s+(\S+):6443", line)
            if m:
                current = out.setdefault(m.group(1), {})
                continue
            m = re.match(r"^\s+->\s+(\S+)\s+\w+\s+(\d+)", line)
            if m and current is not None:
                current[m.group(1)] = int(m.group(2))
        return out

    def check(self, pid: int, log: Path) -> None:
        now = time.monotonic()
        tables = self.tables()
        repairing = now < self.repaired_by
        alive = {b.name for b in self.lab.backends if b.name in self.members
                 and b.name not in self.faults}
        settled = self.settled(now)
        for b in self.lab.backends:
            since = self.changed.get(b.name, self.started)
            if b.name in self.faults:
                kind, began, _ = self.faults[b.name]
                # Without another member proven alive, fail-open keeps the last healthy ones.
                if now - began > DETECT[kind] and settled - {b.name}:
                    for vip, table in tables.items():
                        if table.get(b.address, 0) > 0:
                            self.violate(f"{b.name} ({kind} {now - began:.1f}s ago) still takes "
                                         f"new connections through {vip}")
            elif b.name in alive and now - since > max(RECOVER, DISCOVER) and not repairing:
                for vip, table in tables.items():
                    if table.get(b.address, 0) <= 0:
                        self.violate(f"{b.name} alive for {now - since:.1f}s but not in {vip}'s "
                                     "table")
        if alive and not repairing:
            for vip, table in tables.items():
                if not any(w > 0 for w in table.values()):
                    self.violate(f"{vip}'s table has no serving real server while "
                                 f"{sorted(alive)} are alive")
        self.check_healthz(now, log)
        self.sample(pid, now)

    def check_healthz(self, now: float, log: Path) -> None:
        """/healthz against the daemon's own log of its reconciles (an independent witness: the
        stamp /healthz reads is what was wrong once) and against the stamp itself."""
        with log.open("rb") as fh:
            fh.seek(self.log_at)
            for line in fh.read().splitlines():
                event = json.loads(line).get("event") if line.startswith(b"{") else None
                if event == "reconcile failed, will retry":
                    self.failing_since = now
                elif event == "reconcile recovered":
                    self.failing_since = None
                elif event in ("reloaded", "reload failed, keeping the running configuration"):
                    self.reload_sent = None
            self.log_at = fh.tell()
        try:
            with urllib.request.urlopen(f"http://{METRICS}/healthz", timeout=2) as r:
                code = r.status
        except urllib.error.HTTPError as exc:
            code = exc.code
        except OSError as exc:
            code = 0
            self.violate(f"/healthz does not answer: {exc}")
        if self.reload_sent is not None and now - self.reload_sent > 5:
            self.violate("SIGHUP with a changed file: no reload within 5 s")
            self.reload_sent = None
        if self.failing_since is not None and now - self.failing_since > HEALTHZ and code != 503:
            self.violate(f"/healthz {code} while reconciles have failed for "
                         f"{now - self.failing_since:.0f}s")
        try:
            with urllib.request.urlopen(f"http://{METRICS}/status", timeout=2) as r:
                status = json.load(r)
        except (OSError, ValueError):
            return
        age = time.time() - status["lastReconcile"] if status["lastReconcile"] else None
        if self.failing_since is None and age is not None and age < 2 and code != 200:
            self.violate(f"/healthz {code} right after a successful reconcile")
        self.tasks = int(status.get("asyncioTasks", 0))

    def sample(self, pid: int, now: float) -> None:
        if self.samples and now - self.samples[-1][0] < 5:
            return
        try:
            rss = int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())[1])  # type: ignore[index]
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, TypeError):
            return
        self.samples.append((now, rss, fds, self.tasks))

    def traffic(self, clients: dict[str, subprocess.Popen[str]]) -> None:
        """Read what the clients reported; a failure when nothing changed for SETTLE counts."""
        quiet = time.monotonic() - max(self.last_change, self.repaired_by) > SETTLE
        for vip, proc in clients.items():
            assert proc.stdout is not None
            os.set_blocking(proc.stdout.fileno(), False)
            while line := proc.stdout.readline():
                r = json.loads(line)
                self.requests["ok" if r["ok"] else "failed"][0] += 1
                if not r["ok"] and quiet and self.settled(time.monotonic()):
                    self.violate(f"a request through {vip} failed ({r['error']}) with nothing "
                                 f"changing for {SETTLE:g}s")

    def settled(self, now: float) -> set[str]:
        """Members alive since long enough to be proven (in the table by the recovery bound)."""
        return {b.name for b in self.lab.backends if b.name in self.members
                and b.name not in self.faults
                and now - self.changed.get(b.name, self.started) > max(RECOVER, DISCOVER)}

    def growth(self) -> dict[str, float]:
        """Growth per hour of RSS (kB), fds and tasks over the second half of the run."""
        half = [s for s in self.samples if s[0] >= self.samples[0][0] +
                (self.samples[-1][0] - self.samples[0][0]) / 2] if self.samples else []
        if len(half) < 3:
            return {}
        out = {}
        for i, name in ((1, "rss_kb"), (2, "fds"), (3, "tasks")):
            xs, ys = [s[0] for s in half], [s[i] for s in half]
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            var = sum((x - mx) ** 2 for x in xs)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
            out[name] = slope * 3600
        return out


@dataclass
class Report:
    seed: int
    seconds: float
    violations: list[str]
    timeline: list[str]
    growth: dict[str, float]
    first: tuple[int, int, int]
    last: tuple[int, int, int]
    requests: dict[str, int]

    def lines(self) -> list[str]:
        out = [f"chaos: seed {self.seed}, {self.seconds:.0f} s, {len(self.timeline)} events, "
               f"{self.requests['ok']} requests ok, {self.requests['failed']} failed (while "
               "something changed)",
               f"daemon at start RSS {self.first[0] / 1024:.1f} MB, {self.first[1]} fds, "
               f"{self.first[2]} tasks; at the end {self.last[0] / 1024:.1f} MB, {self.last[1]} "
               f"fds, {self.last[2]} tasks"]
        if self.growth:
            out.append("growth per hour (second half, least squares): " + ", ".join(
                f"{k} {v:+.1f}" for k, v in self.growth.items()))
        out.append(f"violations: {len(self.violations)}")
        return out


def campaign(seconds: float, seed: int, keep: Path | None = None) -> Report:
    """Inside the test kernel: run the campaign; the report. ``keep``: a directory where the
    daemon's log and the timeline are copied when there was a violation."""
    lab = topology.build(backends=3, start=False)
    daemon = None
    clients: dict[str, subprocess.Popen[str]] = {}
    try:
        cluster = Cluster(lab)
        chaos = Chaos(cluster, seed, random.Random(seed), members={b.name for b in lab.backends})
        config = cluster.dir / "care.json"
        chaos.kubeconfig = cluster.kubeconfig()  # one file: discoverFrom applies at start only
        config.write_text(_config(cluster, chaos.drain, chaos.kubeconfig))
        log = lab.workdir / "care.log"
        daemon = subprocess.Popen(lab.node_cmd(sys.executable, "-m", "lvscare", "care",
                                               "--log-format", "json", "--config", str(config)),
                                  stdout=subprocess.DEVNULL, stderr=log.open("wb"))
        topology.wait_for(lambda: all(len(t) == 3 for t in chaos.tables().values()), 60)
        pid = int(lab.run("pgrep", "-f", "lvscare care --log-format json --config").stdout.split()[0])
        for vip in VIPS.values():
            clients[vip] = subprocess.Popen(
                lab.node_cmd(sys.executable, topology.CLIENT, "--host", vip, "--every", "0.5",
                             "--count", str(int(seconds * 2) + 20), "--timeout", "2"),
                stdout=subprocess.PIPE, text=True)
        chaos.started = time.monotonic()
        chaos.last_change = chaos.started
        end = chaos.started + seconds
        next_step = chaos.started + chaos.rng.uniform(2, 5)
        with in_netns(lab.node):
            while time.monotonic() < end:
                if daemon.poll() is not None:
                    chaos.violate(f"the daemon exited ({daemon.returncode})")
                    break
                if time.monotonic() >= next_step:
                    chaos.step(daemon, config)
                    next_step = time.monotonic() + chaos.rng.uniform(2, 5)
                chaos.check(pid, log)
                chaos.traffic(clients)
                time.sleep(0.5)
        chaos.heal_all()
        if keep is not None and chaos.violations:
            shutil.copy(log, keep / f"chaos-{seed}-daemon.log")
            (keep / f"chaos-{seed}-timeline.txt").write_text(
                "\n".join([*chaos.timeline, *chaos.violations]) + "\n")
        samples = chaos.samples or [(0.0, 0, 0, 0)]
        return Report(seed, time.monotonic() - chaos.started, chaos.violations,
                      chaos.timeline, chaos.growth(),
                      samples[0][1:], samples[-1][1:],
                      {k: v[0] for k, v in chaos.requests.items()})
    finally:
        for proc in clients.values():
            proc.kill()
        if daemon is not None and daemon.poll() is None:
            daemon.terminate()
            daemon.wait(10)
        lab.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=1800)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--timeline", action="store_true", help="print every fault as it came")
    ap.add_argument("--keep", default="/tmp/lvscare-chaos",
                    help="where the daemon's log goes when there was a violation")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    if os.environ.get("LVSCARE_TEST_KERNEL") or testkernel.host_has_ipvs():
        from lvscare import log

        log.configure("warning")
        report = campaign(args.seconds, seed, Path(args.keep))
        if args.timeline:
            print("\n".join(report.timeline))
        print("\n".join(report.lines()))
        return 1 if report.violations else 0
    argv = [sys.executable, str(Path(__file__).resolve()), "--seconds", str(args.seconds),
            "--seed", str(seed), "--keep", args.keep, *(["--timeline"] if args.timeline else [])]
    Path(args.keep).mkdir(parents=True, exist_ok=True)
    return testkernel.boot(argv, timeout=args.seconds + 600, shared=[Path(args.keep)])


if __name__ == "__main__":
    raise SystemExit(main())
