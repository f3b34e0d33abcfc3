"""Reading what the kernel holds, independently of lvscare: ipvsadm and ip."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from lvscare_rig.topology import Lab, wait_for

DUMP = str(Path(__file__).parents[1] / "support" / "ipvs_dump.py")


def ipvsadm_table(lab: Lab) -> dict[str, dict[str, object]]:
    """``ipvsadm -Ln --numeric`` parsed: {"TCP vip:port": {"sched": .., "rs": {addr: (fwd, w)}}}."""
    table: dict[str, dict[str, object]] = {}
    current: dict[str, object] | None = None
    for line in lab.ipvsadm().splitlines():
        m = re.match(r"^(TCP|UDP)\s+(\S+)\s+(\S+)", line)
        if m:
            current = {"sched": m.group(3), "rs": {}}
            table[f"{m.group(1)} {m.group(2)}"] = current
            continue
        m = re.match(r"^\s+->\s+(\S+)\s+(\w+)\s+(\d+)\s+(\d+)\s+(\d+)", line)
        if m and current is not None:
            rs = current["rs"]
            assert isinstance(rs, dict)
            rs[m.group(1)] = (m.group(2), int(m.group(3)))
    return table


def weights(lab: Lab, key: str = "TCP 10.103.97.2:6443") -> dict[str, int]:
    """The real servers of one virtual server and their weights, from ``ipvsadm``."""
    rs = ipvsadm_table(lab).get(key, {}).get("rs", {})
    assert isinstance(rs, dict)
    return {addr: w for addr, (_, w) in rs.items()}


def ipvsadm_stats(lab: Lab, total: int | None = None) -> dict[str, int]:
    """Connections counted per real server since it was added (reset if it is re-created).

    The 6.1 kernel folds its per-CPU counters into what it reports every 2 s; wait for that.
    """
    time.sleep(2.2)
    deadline = time.monotonic() + 6
    while True:
        out = _stats_once(lab)
        if total is None or sum(out.values()) == total:
            return out
        if time.monotonic() > deadline:  # never a silent 0 == 0 for a caller comparing counters
            raise AssertionError(f"ipvsadm --stats never counted {total} connections: {out}")
        time.sleep(0.5)


def _stats_once(lab: Lab) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in lab.run("ipvsadm", "-Ln", "--stats").stdout.splitlines():
        m = re.match(r"^\s+->\s+(\S+)\s+(\d+)", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def netlink_table(lab: Lab) -> dict[str, object]:
    result: dict[str, object] = json.loads(lab.run(sys.executable, DUMP).stdout)
    return result


def log_events(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


# Runs lvscare with a monotonic clock that reads UPTIME seconds at start, as on a node that has just
# booted (the test kernel has been up for longer by the time a test runs).
FRESH_CLOCK = """
import runpy, sys, time
real, shift = time.monotonic, time.monotonic() - float(sys.argv.pop(1))
time.monotonic = lambda: real() - shift
sys.argv[0] = "lvscare"
runpy.run_module("lvscare", run_name="__main__", alter_sys=True)
"""


class Care:
    """``lvscare care`` running as a daemon in the lab's node, JSON logs captured. ``uptime``:
    start it with a monotonic clock that reads this many seconds."""

    def __init__(self, lab: Lab, *args: str, rs: list[str] | None = None,
                 vs: str = "10.103.97.2:6443", uptime: float | None = None,
                 wrap: tuple[str, ...] = ()) -> None:
        self.lab = lab
        self.log = lab.workdir / f"care-{time.monotonic_ns()}.log"
        argv = ["care", "--log-format", "json", "--metrics-address", "off"]
        if not any(a.startswith("--config") for a in args):
            argv += ["--vs", vs]
            for r in (rs if rs is not None else [b.address for b in lab.backends]):
                argv += ["--rs", r]
        self.argv = [*argv, *args]
        self.python = [*wrap, *([sys.executable, "-m", "lvscare"] if uptime is None else
                                 [sys.executable, "-c", FRESH_CLOCK, str(uptime)])]
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> Care:
        """Start, waiting for nothing."""
        self.proc = subprocess.Popen(
            self.lab.node_cmd(*self.python, *self.argv),
            stdout=subprocess.DEVNULL, stderr=self.log.open("ab"))
        return self

    def start(self, wait_for: list[str] | None = None) -> Care:
        self.spawn()
        addrs = wait_for if wait_for is not None else [b.address for b in self.lab.backends]
        wait(lambda: all(a in self.lab.ipvsadm() for a in addrs), 60, self)
        wait(lambda: any(e["event"] == "started" for e in self.events()), 30, self)
        return self

    def events(self, event: str | None = None) -> list[dict[str, object]]:
        evs = log_events(self.log.read_text()) if self.log.exists() else []
        return [e for e in evs if event is None or e["event"] == event]

    def signal(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait(predicate, timeout: float, care: Care | None = None) -> float:  # type: ignore[no-untyped-def]
    try:
        return wait_for(predicate, timeout)
    except TimeoutError:
        tail = care.log.read_text()[-3000:] if care is not None and care.log.exists() else ""
        raise AssertionError(f"not within {timeout}s; daemon log tail:\n{tail}") from None
