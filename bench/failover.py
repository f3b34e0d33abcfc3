"""Failover figures: detection, client recovery, keepalived beside lvscare, daemon footprint.

Runs inside a kernel with IPVS (boots user-mode-linux when the host has none), in network
namespaces it creates; backends have no route back to the VIP. Default settings throughout.

  detection        fault injected -> real server gone from the kernel table (reset, blackhole)
  client recovery  keep-alive client, a request every 100 ms, 30 s timeout: blackhole the backend
                   its connection is on -> its next successful response (route and link mode)
  keepalived       the usual Kubernetes HA settings (SSL_GET /healthz, delay_loop 5,
                   connect_timeout 3, retry 3, delay_before_retry 3) on the same faults
  footprint        the daemon's RSS and CPU seconds per minute, 3 healthy backends

Backends are hypercorn speaking h2 as kube-apiserver does (so lvscare probes with HTTP/2 PINGs and
/readyz, its default on such a server); BENCH_SERVER=stdlib gives the HTTP/1.1-only backends of the
earlier figures; BENCH_SERVER=real three real kube-apiservers (1.20) and etcd
(rig/lvscare_rig/realplane.py, built by scripts/control-plane): a killed or blackholed one is
restarted or released and waited for, ready, between trials; the keep-alive client asks /version.

Usage: .venv/bin/python bench/failover.py [--trials 20] [--skip keepalived,...]
Every trial counts: one that does not finish within its bound (detection 60 s, client recovery
40 s) or cannot start is a failure, printed with its reason, counted in n, and taken as the bound
in the percentiles; the exit code is 1 if any trial failed. Clocks start at the fault: the kill,
or the first rule of a blackhole.

Environment: BENCH_DEBUG=1 prints each client-recovery trial with the daemon's log lines about it;
BENCH_MODES=link measures client recovery in that mode only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import http.client
import json
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lvscare_rig import testkernel, topology

from lvscare.config import parse_endpoint
from lvscare.ipvs import IPVS
from lvscare.plan import ServiceKey

VIP = "10.103.97.2"
KEY = ServiceKey(parse_endpoint(f"{VIP}:6443"))
CLONE_NEWNET = 0x40000000


def enter_netns(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


@dataclass
class Trials:
    """Every trial counts: one that does not finish within ``bound`` is a failure, reported with
    its reason, and enters the percentiles as the bound (a lower limit of its real time)."""

    bound: float
    times: list[float] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.times) + len(self.failed)

    def values(self) -> list[float]:
        return self.times + [self.bound] * len(self.failed)

    def fail(self, trial: int, why: str) -> None:
        self.failed.append(why)
        print(f"    trial {trial}: FAILED, {why}", flush=True)

    def json(self) -> dict[str, object]:
        return {"n": self.n, "failures": self.failed, "seconds": [round(x, 3) for x in self.times]}


def summary(t: Trials) -> str:
    values = t.values()
    if not values:
        return "no trial"
    at_least = ">=" if t.failed else ""
    return (f"p50 {at_least}{statistics.median(values):5.2f}s  p99 {at_least}{pct(values, 99):5.2f}s  "
            f"max {at_least}{max(values):5.2f}s  (n={t.n}, failures={len(t.failed)})")


class Table:
    """The kernel's real servers of our VIP, read over netlink in this (node) namespace."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ipvs = self.loop.run_until_complete(IPVS().open())

    def real_servers(self) -> set[str]:
        table = self.loop.run_until_complete(self.ipvs.read([KEY]))
        state = table.get(KEY)
        return {str(e) for e, d in state.dests.items() if d.weight > 0} if state else set()

    def wait(self, predicate, timeout: float) -> float | None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.real_servers()):
                return time.monotonic()
            time.sleep(0.01)
        return None


def start_lvscare(lab: topology.Lab, mode: str, log: Path) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "lvscare", "care", "--vs", f"{VIP}:6443", "--mode", mode,
            "--log-format", "json", "--metrics-address", "off"]
    for b in lab.backends:
        args += ["--rs", b.address]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log.open("w"))


def start_keepalived(lab: topology.Lab) -> subprocess.Popen[bytes]:
    reals = "".join(f"""
    real_server {b.ip4} 6443 {{
        weight 1
        SSL_GET {{
            url {{
                path /healthz
                status_code 200
            }}
            connect_timeout 3
            retry 3
            delay_before_retry 3
        }}
    }}""" for b in lab.backends)
    conf = lab.workdir / "keepalived.conf"
    conf.write_text(f"""global_defs {{
    router_id lvscare_bench
}}
virtual_server {VIP} 6443 {{
    delay_loop 5
    lb_algo rr
    lb_kind NAT
    protocol TCP
{reals}
}}
""")
    return subprocess.Popen(["keepalived", "-n", "-C", "-f", str(conf),
                             "-p", str(lab.workdir / "ka.pid"),
                             "-c", str(lab.workdir / "ka-checkers.pid")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def detection(lab: topology.Lab, table: Table, fault: str, trials: int) -> Trials:
    result = Trials(bound=60.0)
    every = {b.address for b in lab.backends}
    for i in range(trials):
        b = lab.backends[i % 2]  # 10.200.1.2 or .2.2; the third keeps the VS alive
        if table.wait(lambda rs: rs == every, 60) is None:
            result.fail(i, "the table was not complete before the fault (60 s)")
            continue
        time.sleep(0.3 + (i % 7) * 0.13)  # spread fault times over the probe period
        # The clock starts at the fault: a kill is one signal; a blackhole begins with its
        # first rule (``Lab.blackhole`` says when).
        if fault == "reset":
            start = time.monotonic()
            lab.kill(b)
        else:
            start = lab.blackhole(b)
        gone = table.wait(lambda rs, a=b.address: a not in rs, result.bound)
        if gone is None:
            result.fail(i, f"still in the table after {result.bound:.0f} s")
        else:
            result.times.append(gone - start)
        if fault == "reset":
            lab.start(b)
        else:
            lab.blackhole(b, on=False)
        if _PLANE is not None:
            _PLANE.wait_ready(b)
    return result


class KeepAliveClient(threading.Thread):
    """One HTTPS connection through the VIP, a request every 100 ms, 30 s timeout."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.ok: list[tuple[float, str]] = []
        self.ports: list[int] = []
        self.answered: list[float] = []
        self.stop = threading.Event()
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.ctx = ctx

    def run(self) -> None:
        conn: http.client.HTTPSConnection | None = None
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPSConnection(VIP, 6443, timeout=30, context=self.ctx)
                # A stand-in answers / with its name; a real apiserver's answer does not say
                # who it is (its backend is read from IPVS's connection table at the fault).
                conn.request("GET", "/version" if _PLANE is not None else "/")
                body = conn.getresponse().read().decode().strip()
                # (sent, answered, backend): recovery counts requests sent after the fault.
                # ok last: the measuring thread reads answered[k] and ports[k] for ok[k].
                self.ports.append(conn.sock.getsockname()[1] if conn.sock else 0)
                self.answered.append(time.monotonic())
                self.ok.append((started, body))
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(max(0.0, 0.1 - (time.monotonic() - started)))
        if conn is not None:
            conn.close()


def backend_of(lab: topology.Lab, port: int) -> topology.Backend | None:
    """The backend of our VIP's established connection from local port ``port``, as IPVS
    holds it (``ipvsadm -Lnc``: pro expire state source virtual destination)."""
    out = subprocess.run(["ipvsadm", "-Lnc"], capture_output=True, text=True,
                         check=False).stdout
    by_address = {b.address: b for b in lab.backends}
    for line in out.splitlines():
        f = line.split()
        if (len(f) == 6 and f[2] == "ESTABLISHED" and f[3].endswith(f":{port}")
                and f[4] == f"{VIP}:6443"):
            return by_address.get(f[5])
    return None


def client_recovery(lab: topology.Lab, table: Table, trials: int) -> Trials:
    result = Trials(bound=40.0)
    every = {b.address for b in lab.backends}
    by_name = {b.name: b for b in lab.backends}
    client = KeepAliveClient()
    client.start()
    try:
        for i in range(trials):
            if table.wait(lambda rs: rs == every, 60) is None:
                result.fail(i, "the table was not complete before the fault (60 s)")
                continue
            time.sleep(0.5 + (i % 7) * 0.13)
            # Until its connection answers again (at start-up, link mode's NAT rule takes ~2 s).
            for _ in range(100):
                if client.ok and time.monotonic() - client.answered[-1] < 1:
                    break
                time.sleep(0.1)
            if not client.ok or time.monotonic() - client.answered[-1] >= 1:
                result.fail(i, "the client had no answer before the fault (10 s)")
                continue
            b = (backend_of(lab, client.ports[-1]) if _PLANE is not None
                 else by_name[client.ok[-1][1]])  # the backend its connection is on
            if b is None:
                result.fail(i, f"no IPVS connection from port {client.ports[-1]}")
                continue
            start = lab.blackhole(b)  # requests sent from now on cannot reach b
            deadline = start + result.bound
            recovered = None
            while time.monotonic() < deadline:
                after = [client.answered[k] for k, (t, _) in enumerate(client.ok) if t > start]
                if after:
                    recovered = after[0]
                    break
                time.sleep(0.02)
            if recovered is None:
                result.fail(i, f"no answer within {result.bound:.0f} s")
            else:
                result.times.append(recovered - start)
                if os.environ.get("BENCH_DEBUG"):
                    k = next(i for i, (t, _) in enumerate(client.ok) if t > start)
                    print(f"    trial {i}: on {b.name} port {client.ports[k - 1]}; then "
                          f"{client.ok[k][1]} port {client.ports[k]} "
                          f"{recovered - start:.3f}s", flush=True)
            if os.environ.get("BENCH_DEBUG"):
                logf = lab.workdir / "daemon.log"
                if logf.exists():
                    for line in logf.read_text().splitlines()[-6:]:
                        if "nudge" in line or "delete real" in line or "cannot" in line:
                            print("     ", line[:300], flush=True)
            lab.blackhole(b, on=False)
            if _PLANE is not None:
                _PLANE.wait_ready(b)  # its etcd connection was cut too
    finally:
        client.stop.set()
        client.join(35)
    return result


def footprint(lab: topology.Lab, seconds: float) -> tuple[float, float]:
    proc = start_lvscare(lab, "route", lab.workdir / "fp.log")
    try:
        time.sleep(8)  # start-up (imports) is not the steady state
        stat = Path(f"/proc/{proc.pid}/stat")
        tick = os.sysconf("SC_CLK_TCK")

        def cpu() -> float:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / tick

        c0, t0 = cpu(), time.monotonic()
        time.sleep(seconds)
        used = cpu() - c0
        elapsed = time.monotonic() - t0
        rss = 0.0
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
        return rss, used / elapsed * 60
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


@contextlib.contextmanager
def node_with(start: str) -> Iterator[tuple[topology.Lab, Table]]:
    """A fresh lab; this process in its node namespace; ``start`` ("keepalived", "lvscare
    <mode>" or "") running there until the block ends."""
    global _PLANE
    real = os.environ.get("BENCH_SERVER") == "real"
    lab = topology.build(backends=3, server="h2" if real else os.environ.get("BENCH_SERVER", "h2"),
                         start=not real)
    proc = None
    try:
        if real:
            from lvscare_rig import realplane

            _PLANE = plane = realplane.build(lab)
            # kill and start act on the real apiservers (Lab.kill/start are the stand-ins').
            lab.kill = lambda b, sig=signal.SIGKILL: plane.stop(b, sig)  # type: ignore[method-assign]
            lab.start = plane.start  # type: ignore[method-assign]
        enter_netns(lab.node)
        table = Table()
        if start == "keepalived":
            proc = start_keepalived(lab)
        elif start:
            proc = start_lvscare(lab, start.split()[1], lab.workdir / "daemon.log")
        yield lab, table
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
        enter_netns_root()
        if _PLANE is not None:
            _PLANE.close()
            _PLANE = None
        lab.close()


_PLANE = None  # BENCH_SERVER=real: the control plane of the current lab


def inside(trials: int, skip: set[str], footprint_seconds: float) -> int:
    results: dict[str, Trials] = {}
    print(f"failover benchmark, {trials} trials each, kernel {os.uname().release}, backends "
          f"{os.environ.get('BENCH_SERVER', 'h2')}", flush=True)
    for who in ("lvscare", "keepalived"):
        if who in skip or (who == "keepalived" and not shutil.which("keepalived")):
            print(f"  {who}: skipped" + ("" if who in skip else " (apt-get install keepalived)"))
            continue
        with node_with("keepalived" if who == "keepalived" else "lvscare route") as (lab, table):
            for fault in ("reset", "blackhole"):
                t = detection(lab, table, fault, trials)
                results[f"{who} detection {fault}"] = t
                print(f"  {who:<10} detection {fault:<9} {summary(t)}", flush=True)
    if "recovery" not in skip:
        for mode in os.environ.get("BENCH_MODES", "route,link").split(","):
            with node_with(f"lvscare {mode}") as (lab, table):
                t = client_recovery(lab, table, trials)
                results[f"recovery {mode}"] = t
                print(f"  client recovery, {mode:<5} mode {summary(t)}", flush=True)
    for fault in ("reset", "blackhole"):
        ours, theirs = results.get(f"lvscare detection {fault}"), \
            results.get(f"keepalived detection {fault}")
        if ours and theirs and ours.n and theirs.n:
            a, b = theirs.values(), ours.values()
            print(f"  detection {fault}: keepalived / lvscare p50 "
                  f"{statistics.median(a) / statistics.median(b):.1f}x, "
                  f"p99 {pct(a, 99) / pct(b, 99):.1f}x")
    if "footprint" not in skip:
        with node_with("") as (lab, _):
            rss, cpu = footprint(lab, footprint_seconds)
            print(f"  footprint: RSS {rss:.1f} MB (goal <= 45), CPU {cpu:.2f} s per minute "
                  f"(goal <= 0.6), measured over {footprint_seconds:.0f} s; note that "
                  "user-mode-linux runs user code several times slower than a host kernel",
                  flush=True)
    print(json.dumps({k: v.json() for k, v in results.items()}))
    return 1 if any(t.failed for t in results.values()) else 0


_ROOT_NS = None


def enter_netns_root() -> None:
    assert _ROOT_NS is not None
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(_ROOT_NS, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def main() -> int:
    global _ROOT_NS
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--skip", default="", help="comma list: keepalived,recovery,footprint")
    ap.add_argument("--footprint-seconds", type=float, default=60.0)
    args = ap.parse_args()
    if os.environ.get("LVSCARE_TEST_KERNEL") or testkernel.host_has_ipvs():
        _ROOT_NS = os.open("/proc/self/ns/net", os.O_RDONLY)
        from lvscare import log

        log.configure("warning")
        return inside(args.trials, set(filter(None, args.skip.split(","))),
                      args.footprint_seconds)
    if os.environ.get("BENCH_SERVER") == "real":
        from lvscare_rig import controlplane

        controlplane.build()
    return testkernel.boot([sys.executable, *sys.argv], timeout=3600, mem="3G",
                           env={k: v for k, v in os.environ.items() if k.startswith("BENCH_")})


if __name__ == "__main__":
    raise SystemExit(main())
