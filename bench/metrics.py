"""Cost of /metrics: CPU per scrape and resident memory, with 3 and with 300 real servers.

A scrape reads only the daemon's in-memory state (no netlink, no I/O), so this runs anywhere:
it builds the daemon's state for N real servers with probe histograms and counters populated as
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
from lvscare.daemon import Daemon
from lvscare.health import Outcome, ProbeResult, State, initial, step


def build(n: int) -> Daemon:
    rss = tuple(RealServer(Endpoint(ipaddress.ip_address(f"10.{i // 250}.{i % 250}.2"), 6443))
                for i in range(n))
    vs = VirtualServer(Endpoint(ipaddress.ip_address("10.103.97.2"), 6443), rss)
    daemon = Daemon(Config(virtual_servers=(vs,), metrics_address=""))
    now = time.monotonic()
    for rs in rss:
        h = initial(now)
        for outcome in (Outcome.TIMEOUT, Outcome.REFUSED, Outcome.OK, Outcome.OK):
            h = step(h, ProbeResult(outcome, 0.003), now, 2, 2)
            for latency in (0.002, 0.004, 0.02, 0.3):
                daemon.metrics.probe(str(vs.endpoint), str(rs.endpoint), outcome, latency)
        daemon.health[(vs.endpoint, rs.endpoint)] = h
        daemon.metrics.transition(str(vs.endpoint), str(rs.endpoint), State.DOWN)
    daemon.desired(now)
    return daemon


def main() -> int:
    for n in (3, 300):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        daemon = build(n)
        body = daemon.metrics.render()
        scrapes = 300 if n < 100 else 100
        cpu0 = time.process_time()
        for _ in range(scrapes):
            body = daemon.metrics.render()
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
