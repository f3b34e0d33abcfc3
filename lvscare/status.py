"""``lvscare status``: what a running daemon sees, read from its /status endpoint."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any

from lvscare.errors import RuntimeFailure

COLOURS = {"healthy": "32", "failing": "33", "recovering": "33", "down": "31"}


def fetch(address: str, timeout: float = 3.0) -> dict[str, Any]:
    url = f"http://{address}/status"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data: dict[str, Any] = json.load(response)
            return data
    except urllib.error.URLError as exc:
        reason = getattr(exc.reason, "strerror", None) or exc.reason
        raise RuntimeFailure(f"no lvscare daemon answers at {url} ({reason}); "
                          "is it running, and with this --metrics-address?") from None
    except (OSError, ValueError) as exc:
        raise RuntimeFailure(f"no usable answer from {url}: {exc}") from None


def _since(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def render(data: dict[str, Any], colour: bool) -> str:
    lines = []
    for vs in data["virtualServers"]:
        flag = "  ALL DOWN (fail-open: keeping the last healthy)" if vs["allDown"] else ""
        lines.append(f"{vs['address']}  {vs['scheduler']}  mode {vs['mode']}{flag}")
        header = ("BACKEND", "STATE", "WEIGHT", "LATENCY", "ACTIVE", "INACTIVE", "SINCE", "LAST")
        rows = [header]
        for rs in vs["realServers"]:
            last = rs["lastProbe"] or {}
            latency = f"{last['latency'] * 1000:.1f}ms" if last.get("latency") is not None else "-"
            kernel = "-" if rs["kernelWeight"] is None else str(rs["kernelWeight"])
            outcome = last.get("outcome", "-")
            if last.get("error"):
                outcome = f"{outcome}: {last['error']}"
            rows.append((rs["address"], rs["state"], f"{kernel}/{rs['configuredWeight']}", latency,
                         str(rs["activeConnections"]), str(rs["inactiveConnections"]),
                         _since(rs["since"]), outcome))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
        for n, row in enumerate(rows):
            cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)] + [row[-1]]
            if colour and n > 0:
                code = COLOURS.get(row[1], "0")
                cells[1] = f"\x1b[{code}m{cells[1]}\x1b[0m"
            lines.append("  " + "  ".join(cells).rstrip())
    return "\n".join(lines)


def main(address: str, output: str) -> int:
    data = fetch(address)
    if output == "json":
        print(json.dumps(data, indent=2))
    else:
        print(render(data, colour=sys.stdout.isatty()))
    return 0
