"""What lvscare's probes cost each apiserver: HTTP requests, packets and bytes per node per minute,
the HTTP/1.1 probe (Go lvscare's kind, `--health-protocol http1`) against the HTTP/2 one (PING
every interval, /readyz every 5 s), and what that is for a fleet.

Runs inside a kernel with IPVS (boots user-mode-linux when the host has none): one node, three
hypercorn backends speaking h2 as kube-apiserver does, default settings otherwise. Requests are
counted by the backends' app (a PING never reaches it); packets and bytes are the backend
interface's counters (both directions, TLS and TCP included), so nothing but the probes is
counted.

Usage: .venv/bin/python bench/probe_cost.py [--seconds 60] [--nodes 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lvscare_rig import testkernel, topology

VIP = "10.103.97.2:6443"
WARM_UP = 12.0  # start-up and the eager readiness of new connections are not the steady state


def counters(lab: topology.Lab) -> dict[str, tuple[int, int, int]]:
    """Per backend: requests served, packets and bytes through its interface (rx + tx)."""
    out = {}
    for b in lab.backends:
        stats = json.loads(topology.sh("ip", "-n", b.netns, "-s", "-j", "link", "show",
                                       "eth0").stdout)[0]["stats64"]
        out[b.name] = (sum(b.requests().values()),
                       stats["rx"]["packets"] + stats["tx"]["packets"],
                       stats["rx"]["bytes"] + stats["tx"]["bytes"])
    return out


def measure(lab: topology.Lab, protocol: str, seconds: float) -> dict[str, float]:
    argv = [sys.executable, "-m", "lvscare", "care", "--vs", VIP, "--metrics-address", "off",
            "--log-level", "warning", "--health-protocol", protocol]
    for b in lab.backends:
        argv += ["--rs", b.address]
    proc = subprocess.Popen(lab.node_cmd(*argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(WARM_UP)
        if proc.poll() is not None:
            raise RuntimeError(f"lvscare exited: {proc.stderr.read().decode()[-500:] if proc.stderr else ''}")
        before, t0 = counters(lab), time.monotonic()
        time.sleep(seconds)
        after, elapsed = counters(lab), time.monotonic() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    per_minute = 60 / elapsed
    n = len(lab.backends)
    req = sum(after[k][0] - before[k][0] for k in after) / n * per_minute
    pkts = sum(after[k][1] - before[k][1] for k in after) / n * per_minute
    byts = sum(after[k][2] - before[k][2] for k in after) / n * per_minute
    return {"requests": req, "packets": pkts, "bytes": byts}


def inside(seconds: float, nodes: int) -> int:
    print(f"probe cost per apiserver per node, {seconds:.0f} s each, kernel {os.uname().release}",
          flush=True)
    results: dict[str, dict[str, float]] = {}
    for protocol, label in (("http1", "HTTP/1.1 GET /healthz every 1 s"),
                            ("auto", "HTTP/2 PING every 1 s, GET /readyz every 5 s")):
        lab = topology.build(backends=3, server="h2")
        try:
            r = results[protocol] = measure(lab, protocol, seconds)
        finally:
            lab.close()
        print(f"  {label:<46} {r['requests']:6.1f} requests/min  {r['packets']:6.0f} packets/min  "
              f"{r['bytes'] / 1024:7.1f} KiB/min", flush=True)
    old, new = results["http1"], results["auto"]
    print(f"  HTTP/2 / HTTP/1.1: requests {new['requests'] / old['requests']:.2f}x, "
          f"packets {new['packets'] / old['packets']:.2f}x, bytes {new['bytes'] / old['bytes']:.2f}x")
    for protocol, r in results.items():
        print(f"  at {nodes} nodes, {protocol:<5}: {r['requests'] * nodes / 60:7.0f} requests/s into "
              f"each apiserver's handler chain, {r['bytes'] * nodes / 60 / 1e6:6.2f} MB/s of probes")
    print(json.dumps({"seconds": seconds, "nodes": nodes, **results}))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--nodes", type=int, default=5000)
    args = ap.parse_args()
    if os.environ.get("LVSCARE_TEST_KERNEL") or testkernel.host_has_ipvs():
        return inside(args.seconds, args.nodes)
    return testkernel.boot([sys.executable, *sys.argv], timeout=1800)


if __name__ == "__main__":
    raise SystemExit(main())
