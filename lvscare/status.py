"""``lvscare status``: what a running daemon sees, read from its /status endpoint."""

from __future__ import annotations

import http.client
import json
import sys
import time
from typing import Any

from lvscare.errors import RuntimeFailure

COLOURS = {"healthy": "32", "failing": "33", "recovering": "33", "down": "31", "healthy (slow)": "33"}


MAX_ANSWER = 4 << 20


def fetch(address: str, timeout: float = 3.0) -> dict[str, Any]:
    """GET /status, trusting nothing that answers: the whole answer within ``timeout`` (one
    byte a second is not an answer), at most 4 MiB, JSON of the expected shape."""
    url = f"http://{address}/status"
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    try:
        conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
        try:
            conn.request("GET", "/status")
            response = conn.getresponse()
            if response.status != 200:
                raise RuntimeFailure(f"{url} answered HTTP {response.status}")
            body = b""
            while len(body) <= MAX_ANSWER:
                if time.monotonic() > deadline:
                    raise RuntimeFailure(f"{url} did not answer within {timeout:g}s")
                chunk = response.read1(65536)
                if not chunk:
                    break
                body += chunk
        finally:
            conn.close()
    except (OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise RuntimeFailure(f"no lvscare daemon answers at {url} ({reason}); "
                             "is it running, and with this --metrics-address?") from None
    if len(body) > MAX_ANSWER:
        raise RuntimeFailure(f"{url} answered more than {MAX_ANSWER >> 20} MiB")
    try:
        data = json.loads(body)
        _check_shape(data)
    except (ValueError, TypeError, KeyError):
        raise RuntimeFailure(f"{url} did not answer with lvscare's status") from None
    return data  # type: ignore[no-any-return]


_VS_KEYS = {"address", "scheduler", "mode", "allDown", "realServers"}
_RS_KEYS = {"address", "state", "kernelWeight", "configuredWeight", "activeConnections",
            "inactiveConnections", "since", "lastProbe"}


def _check_shape(data: Any) -> None:
    """Raises KeyError or TypeError unless ``data`` has the shape of lvscare's /status."""
    for vs in data["virtualServers"]:
        if not set(vs) >= _VS_KEYS:
            raise KeyError("virtual server")
        for rs in vs["realServers"]:
            if not set(rs) >= _RS_KEYS or not isinstance(rs["lastProbe"], dict | None):
                raise KeyError("real server")
            float(rs["since"])


def _clean(value: object) -> str:
    """Text from the answer as it may reach a terminal: no escape sequences, no control
    characters."""
    text = str(value)
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


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
        lines.append(f"{_clean(vs['address'])}  {_clean(vs['scheduler'])}  mode {_clean(vs['mode'])}{flag}")
        header = ("BACKEND", "SOURCE", "STATE", "WEIGHT", "LATENCY", "ACTIVE", "INACTIVE", "SINCE",
                  "LAST")
        rows = [header]
        for rs in vs["realServers"]:
            last = rs["lastProbe"] or {}
            latency = f"{float(last['latency']) * 1000:.1f}ms" if last.get("latency") is not None else "-"
            kernel = "-" if rs["kernelWeight"] is None else _clean(rs["kernelWeight"])
            outcome = _clean(last.get("outcome", "-"))
            if last.get("error"):
                outcome = f"{outcome}: {_clean(last['error'])}"
            state = _clean(rs["state"]) + (" (slow)" if rs.get("slow") else "")
            rows.append((_clean(rs["address"]), _clean(rs.get("source", "seed")), state,
                         f"{kernel}/{_clean(rs['configuredWeight'])}", latency,
                         _clean(rs["activeConnections"]), _clean(rs["inactiveConnections"]),
                         _since(float(rs["since"])), outcome))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
        for n, row in enumerate(rows):
            cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)] + [row[-1]]
            if colour and n > 0:
                code = COLOURS.get(row[2], "0")
                cells[2] = f"\x1b[{code}m{cells[2]}\x1b[0m"
            lines.append("  " + "  ".join(cells).rstrip())
    return "\n".join(lines)


def main(address: str, output: str) -> int:
    data = fetch(address)
    if output == "json":
        print(json.dumps(data, indent=2))  # JSON escapes control characters itself
        return 0
    try:
        text = render(data, colour=sys.stdout.isatty())
    except (TypeError, ValueError, KeyError, AttributeError):
        raise RuntimeFailure(f"http://{address}/status did not answer with lvscare's status") from None
    print(text)
    return 0
