"""Cost of /metrics: CPU per scrape and resident memory, with 3 and with 300 real servers.

A scrape reads only the daemon's in-memory state (no netlink, no I/O), so this runs anywhere:
it builds the snapshot and counters for N real servers with probe histograms and counters populated as
after a day of probing, then times the exposition the endpoint serves. Goal: < 5 ms of CPU per
scrape at 300 real servers. Usage: .venv/bin/python bench/metrics.py
"""

from __future__ import annotations

import ipaddress
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lvscare.config import Config, Endpoint, RealServer, VirtualServer
from lvscare.core import Core
from lvscare.health import Outcome, ProbeResult, State
from lvscare.metrics import Metrics
from lvscare.snapshot import Snapshot


def build(n: int) -> tuple[Metrics, Snapshot]:
    rss = tuple(RealServer(Endpoint(ipaddress.ip_address(f"10.{i // 250}.{i % 250}.2"), 6443))
                for i in range(n))
    vs = VirtualServer(Endpoint(ipaddress.ip_address("10.103.97.2"), 6443), rss)
    core, metrics = Core(Config(virtual_servers=(vs,), metrics_address="")), Metrics()
    now = time.monotonic()
    core.adopt({}, now)
    for rs in rss:
        key = (vs.endpoint, rs.endpoint)
        for outcome in (Outcome.TIMEOUT, Outcome.REFUSED, Outcome.OK, Outcome.OK):
            core.observe(key, ProbeResult(outcome, 0.003), now)
            for latency in (0.002, 0.004, 0.02, 0.3):
                metrics.probe(key, outcome, latency)
        metrics.transition(key, State.DOWN)
    table, _ = core.desired(now)
    core.reconciled([], table, table)
    core.succeeded(time.time())
    return metrics, core.snapshot({})


def main() -> int:
    for n in (3, 300):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        metrics, snap = build(n)
        body = metrics.render(snap)
        scrapes = 300 if n < 100 else 100
        cpu0 = time.process_time()
        for _ in range(scrapes):
            body = metrics.render(snap)
        per_scrape = (time.process_time() - cpu0) / scrapes
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        lines = body.count(b"\n")
        print(f"{n:4d} real servers: {per_scrape * 1000:6.2f} ms CPU per scrape "
              f"({len(body) / 1024:.0f} KiB, {lines} lines); "
              f"peak RSS {after / 1024:.1f} MB (+{(after - before) / 1024:.1f} MB for this state)")
    print("goal: < 5 ms CPU per scrape at 300 real servers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
