"""installer join: 20 simulated nodes with --parallel 10 against one node alone.

Every node is an OpenSSH server in its own network namespace inside the test kernel (the same
lvscare_rig.sshnodes the integration tests use), so each join really uploads lvscare, runs
``--run-once`` against a real IPVS table, writes the hosts block and the manifest and calls the
kubeadm test double. Single-node and fleet runs use fresh nodes of the same boot; the figure is the
installer's wall time with the lvscare zipapp already built (it is cached). Goal: fleet < 3x single.
Usage: .venv/bin/python bench/installer.py [--nodes 20] [--parallel 10] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lvscare_rig import testkernel


def wire_bytes(netns: str) -> int:
    """Bytes through the node's interface, both directions: what a join costs its network."""
    import json

    out = subprocess.run(["ip", "-n", netns, "-s", "-j", "link", "show", "eth0"], capture_output=True,
                         text=True, check=True).stdout
    stats = json.loads(out)[0]["stats64"]
    return int(stats["rx"]["bytes"]) + int(stats["tx"]["bytes"])


def join(lab: object, master: str, nodes: list[str], parallel: int) -> tuple[float, float]:
    """Wall seconds of one `installer join`, and the CPU seconds of the installer process."""
    from lvscare_rig.sshnodes import SshLab

    assert isinstance(lab, SshLab)
    args = ["join", "--master", master, "--parallel", str(parallel), *lab.flags()]
    for n in nodes:
        args += ["--node", n]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "lvscare_installer", *args], capture_output=True, text=True,
                       timeout=1200)
    took = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"installer failed:\n{p.stdout}\n{p.stderr[-2000:]}")
    return took, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run(nodes: int, parallel: int, repeat: int) -> None:
    from lvscare_rig import sshnodes

    from lvscare_installer import bundle

    # The zipapp is built once and cached (as for an operator's second run); neither figure pays it.
    t = time.monotonic()
    b = bundle.build()
    print(f"  bundle built in {time.monotonic() - t:.1f}s (cached afterwards): {b.size} bytes")
    singles, fleets, cpu1, cpun = [], [], [], []
    for _ in range(repeat):
        lab = sshnodes.build(2 + nodes)
        try:
            master, solo, *fleet = lab.nodes
            before = wire_bytes(solo.netns)
            wall, cpu = join(lab, master.address, [solo.address], parallel)
            moved = wire_bytes(solo.netns) - before
            print(f"  one node's join moved {moved / 1024:.0f} KiB over its interface "
                  f"(the bundle: {b.size / 1024:.0f} KiB)", flush=True)
            singles.append(wall)
            cpu1.append(cpu)
            wall, cpu = join(lab, master.address, [n.address for n in fleet], parallel)
            fleets.append(wall)
            cpun.append(cpu)
            assert all("10.103.97.2:6443" in n.ipvsadm() for n in fleet)
        finally:
            lab.close()
        print(f"  single {singles[-1]:.1f}s, {nodes} nodes {fleets[-1]:.1f}s", flush=True)
    single, fleet = statistics.median(singles), statistics.median(fleets)
    print(f"installer join, median of {repeat}: 1 node {single:.1f}s; {nodes} nodes with --parallel "
          f"{parallel} {fleet:.1f}s; ratio {fleet / single:.2f} (goal < 3)")
    print(f"installer process CPU: 1 node {statistics.median(cpu1):.1f}s; {nodes} nodes "
          f"{statistics.median(cpun):.1f}s ({statistics.median(cpun) / nodes:.2f}s per node)")
    print(f"kernel CPUs: {os.cpu_count()} (every simulated node shares them with the installer)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--parallel", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    if os.environ.get("LVSCARE_TEST_KERNEL") or testkernel.host_has_ipvs():
        run(args.nodes, args.parallel, args.repeat)
        return 0
    return testkernel.boot([sys.executable, *sys.argv], timeout=3600)


if __name__ == "__main__":
    raise SystemExit(main())
