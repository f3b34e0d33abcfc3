"""Program 1,000 virtual servers x 3 real servers, no-op reconcile, delete; against ipvsadm -R.

Runs inside a kernel with IPVS (boots user-mode-linux when the host has none). Each step is
repeated and the median printed, with the ratio lvscare / ipvsadm for the same 4,000 rules in the
same kernel boot. Usage: .venv/bin/python bench/reconcile.py [--services 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lvscare_rig import testkernel

from lvscare import log
from lvscare.care import reconcile
from lvscare.config import Endpoint, RealServer, VirtualServer
from lvscare.ipvs import IPVS
from lvscare.plan import desired_table, service_key


def virtual_servers(n: int) -> list[VirtualServer]:
    out = []
    for i in range(n):
        vip = ipaddress.ip_address(f"10.{100 + i // 250}.{i % 250}.1")
        rss = tuple(RealServer(Endpoint(ipaddress.ip_address(f"192.168.{j}.{1 + i % 250}"), 6443))
                    for j in range(3))
        out.append(VirtualServer(Endpoint(vip, 6443), rss))
    return out


def ipvsadm_rules(vss: list[VirtualServer]) -> str:
    lines = []
    for vs in vss:
        lines.append(f"-A -t {vs.endpoint} -s rr")
        lines += [f"-a -t {vs.endpoint} -r {rs.endpoint} -m -w 1" for rs in vs.real_servers]
    return "\n".join(lines) + "\n"


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


async def inside(n: int, repeat: int) -> int:
    log.configure("warning")
    vss = virtual_servers(n)
    want = desired_table(vss)
    keys = [service_key(vs) for vs in vss]
    rules = ipvsadm_rules(vss)
    results: dict[str, list[float]] = {k: [] for k in (
        "lvscare program", "lvscare read", "lvscare no-op", "lvscare delete",
        "ipvsadm -R", "ipvsadm -Ln", "ipvsadm -C")}
    async with IPVS() as ipvs:
        for _ in range(repeat):
            subprocess.run(["ipvsadm", "-C"], check=True)
            t = time.perf_counter()
            ops = await reconcile(ipvs, want, keys)
            results["lvscare program"].append(time.perf_counter() - t)
            assert len(ops) == 4 * n, len(ops)
            t = time.perf_counter()
            await ipvs.read(keys)
            results["lvscare read"].append(time.perf_counter() - t)
            t = time.perf_counter()
            ops = await reconcile(ipvs, want, keys)
            results["lvscare no-op"].append(time.perf_counter() - t)
            assert ops == []
            t = time.perf_counter()
            await reconcile(ipvs, {}, keys)
            results["lvscare delete"].append(time.perf_counter() - t)
            results["ipvsadm -R"].append(timed(lambda: subprocess.run(
                ["ipvsadm", "-R"], input=rules, text=True, check=True)))
            results["ipvsadm -Ln"].append(timed(lambda: subprocess.run(
                ["ipvsadm", "-Ln"], stdout=subprocess.DEVNULL, check=True)))
            results["ipvsadm -C"].append(timed(lambda: subprocess.run(["ipvsadm", "-C"], check=True)))
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\n{n} virtual servers x 3 real servers = {4 * n} rules; median of {repeat} runs, "
          f"kernel {os.uname().release}")
    for k, v in med.items():
        print(f"  {k:<18} {v:8.3f} s")
    print("ratios (lvscare / ipvsadm, goal <= 1.0):")
    print(f"  program from empty  {med['lvscare program'] / med['ipvsadm -R']:.3f}  "
          f"(vs ipvsadm -R)")
    print(f"  no-op reconcile     {med['lvscare no-op'] / med['ipvsadm -Ln']:.3f}  "
          f"(vs ipvsadm -Ln, which only reads)")
    print(f"  delete all          {med['lvscare delete'] / med['ipvsadm -C']:.3f}  "
          f"(vs ipvsadm -C, one flush of everything)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if os.environ.get("LVSCARE_TEST_KERNEL") or testkernel.host_has_ipvs():
        return asyncio.run(inside(args.services, args.repeat))
    return testkernel.boot([sys.executable, *sys.argv], timeout=1200)


if __name__ == "__main__":
    raise SystemExit(main())
