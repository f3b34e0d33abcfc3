"""Reading what the kernel holds, independently of lvscare: ipvsadm and ip."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

from lvscare.lab.topology import Lab

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


def ipvsadm_stats(lab: Lab, total: int | None = None) -> dict[str, int]:
    """Connections counted per real server since it was added (reset if it is re-created).

    The 6.1 kernel folds its per-CPU counters into what it reports every 2 s; wait for that.
    """
    time.sleep(2.2)
    deadline = time.monotonic() + 6
    while True:
        out = _stats_once(lab)
        if total is None or sum(out.values()) == total or time.monotonic() > deadline:
            return out
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
