"""``lvscare demo``: a failover, end to end, in a real kernel, with a readable timeline.

Three HTTPS apiserver stand-ins run in network namespaces that (like real apiservers) have no
route back to the VIP. The daemon runs in the "node" namespace. A client sends a request through
the VIP every 100 ms while one backend is blackholed (packets dropped) and another is killed
(connection reset); then both come back. On a host without IPVS the demo first boots Debian's
user-mode-linux kernel and runs itself inside it. Everything stays inside namespaces it created.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lvscare_rig import testkernel

VIP = "10.103.97.2"


@dataclass
class Timeline:
    t0: float = field(default_factory=time.time)
    lines: list[tuple[float, str, str]] = field(default_factory=list)

    def add(self, when: float, what: str, since: float | None = None,
            label: str = "after the fault") -> None:
        after = f"{when - since:6.2f}s {label}" if since is not None else ""
        self.lines.append((when, what, after))
        print(f"  +{when - self.t0:6.2f}s  {what:<52} {after}", flush=True)


class Requests(threading.Thread):
    """The client's stream of results, one per request through the VIP."""

    def __init__(self, cmd: list[str]) -> None:
        super().__init__(daemon=True)
        self.results: list[dict[str, object]] = []
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)

    def run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.results.append(json.loads(line))

    def healthy_since(self, after: float, streak: int = 5) -> float | None:
        """Start time of the first of ``streak`` successful requests in a row after ``after``."""
        run: list[float] = []
        for r in list(self.results):
            t = float(r["t"])  # type: ignore[arg-type]
            if t < after:
                continue
            if r["ok"]:
                run.append(t)
                if len(run) >= streak:
                    return run[0]
            else:
                run = []
        return None


def _poll(predicate, timeout: float, step: float = 0.05) -> float | None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return time.time()
        time.sleep(step)
    return None


def run_inside(mode: str = "route") -> int:
    from lvscare_rig import topology

    print(f"lvscare demo: VIP {VIP}:6443 ({mode} mode), 3 HTTPS apiserver stand-ins in network "
          "namespaces, probes every 1s")
    lab = topology.build(backends=3)
    log_path = lab.workdir / "daemon.log"
    daemon = None
    client = None
    try:
        args = [sys.executable, "-m", "lvscare", "care", "--vs", f"{VIP}:6443", "--mode", mode,
                "--log-format", "json", "--metrics-address", "off"]
        for b in lab.backends:
            args += ["--rs", b.address]
        tl = Timeline()
        daemon = subprocess.Popen(lab.node_cmd(*args), stdout=subprocess.DEVNULL,
                                  stderr=log_path.open("w"))

        def table() -> str:
            return lab.run("ipvsadm", "-L", "-n", check=False).stdout

        def events() -> list[dict[str, object]]:
            return [json.loads(x) for x in log_path.read_text().splitlines()
                    if x.startswith("{")]

        up = _poll(lambda: all(b.address in table() for b in lab.backends), 60)
        if up is None:
            print("daemon did not program the table; its log:\n" + log_path.read_text())
            return 1
        tl.add(up, "daemon up: 3 real servers in the kernel table")
        client = Requests(lab.node_cmd(sys.executable, topology.CLIENT, "--host", VIP,
                                       "--every", "0.1", "--count", "400", "--timeout", "2"))
        client.start()
        time.sleep(2)

        def fault(name: str, backend: topology.Backend, inject, how: str) -> None:  # type: ignore[no-untyped-def]
            inject()
            start = time.time()  # the fault is in place (a blackhole is several commands)
            tl.add(start, f"FAULT: {backend.name} {how}")
            det = _poll(lambda: any(e.get("event") == "real server down"
                                    and e.get("rs") == backend.address for e in events()), 20)
            if det is not None:
                probe = [e for e in events() if e.get("event") == "real server down"
                         and e.get("rs") == backend.address][-1]["probe"]
                tl.add(det, f"detected: {backend.name} down ({probe})", start)
            gone = _poll(lambda: backend.address not in table(), 20)
            if gone is not None:
                tl.add(gone, f"rule removed: {backend.address}", start)
            healthy = _poll(lambda: client.healthy_since(gone or start) is not None, 20)
            if healthy is not None:
                t = client.healthy_since(gone or start)
                assert t is not None
                tl.add(t, "traffic healthy again (5 requests in a row)", start)

        b2, b3 = lab.backends[1], lab.backends[2]
        fault("blackhole", b2, lambda: lab.blackhole(b2), "blackholed (all packets dropped)")
        time.sleep(1)
        fault("kill", b3, lambda: lab.kill(b3), "killed (connections reset)")
        time.sleep(1)
        start = time.time()
        lab.blackhole(b2, on=False)
        lab.start(b3)
        tl.add(start, "backends 2 and 3 back")
        back = _poll(lambda: b2.address in table() and b3.address in table(), 20)
        if back is not None:
            tl.add(back, "both restored in the kernel table", start, "after they came back")
        time.sleep(2)
        client.proc.terminate()
        client.join(5)
        total = len(client.results)
        failed = [r for r in client.results if not r["ok"]]
        print(f"\nclient: {total} requests through the VIP, {len(failed)} failed "
              f"({', '.join(sorted({str(r['error']) for r in failed})) or 'none'})")
        print("kernel table now:\n" + table())
        return 0 if back is not None else 1
    finally:
        if client is not None and client.proc.poll() is None:
            client.proc.kill()
        if daemon is not None and daemon.poll() is None:
            daemon.terminate()
            daemon.wait(10)
        lab.close()


def main(mode: str = "route") -> int:
    if os.geteuid() != 0:
        print("lvscare demo: error: needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    if testkernel.host_has_ipvs() or os.environ.get("LVSCARE_TEST_KERNEL"):
        return run_inside(mode)
    if not testkernel.available():
        print("lvscare demo: error: this kernel has no IPVS and user-mode-linux is not installed "
              "(apt-get install user-mode-linux kmod)", file=sys.stderr)
        return 1
    print("this kernel has no IPVS: booting user-mode-linux to run the demo in a real kernel",
          flush=True)
    return testkernel.boot([sys.executable, "-m", "lvscare", "demo", "--mode", mode],
                           cwd=str(Path(__file__).resolve().parents[2]), timeout=600)
