"""The daemon's HTTP endpoints: /metrics, /healthz, /status. They render the last snapshot
(``snapshot.py``) and never see the daemon itself.

The server is a small one of our own on asyncio streams, because what matters here is that web
clients can never hurt health checking, and a general server does not bound them: with the
chart's 0.0.0.0 anyone who reaches the node could open a thousand idle connections and take the
file descriptors the probes need. Here there are at most ``MAX_CONNECTIONS`` at once (more are
closed at once), each must send its request within ``REQUEST_TIMEOUT`` and take its answer within
the same, requests are GET or HEAD with a head of at most ``MAX_HEAD`` bytes, and every
connection closes after one answer.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from lvscare.metrics import CONTENT_TYPE, Metrics
from lvscare.snapshot import Snapshot

MAX_CONNECTIONS = 64
REQUEST_TIMEOUT = 5.0
MAX_HEAD = 8192
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error", 503: "Service Unavailable"}


def stale_after(interval: float) -> float:
    """How old the last successful reconcile may be before /healthz says 503."""
    return 3 * interval + 5


def healthz(snap: Snapshot, wall: float) -> tuple[int, str]:
    last = snap.last_reconcile
    if last is None:
        return 503, "no reconcile yet"
    age = wall - last
    limit = stale_after(snap.config.interval)
    if age > limit:
        reason = f"last successful reconcile {age:.0f}s ago (limit {limit:.0f}s)"
        if snap.last_error:
            reason += f": {snap.last_error}"
        return 503, reason
    return 200, "ok"


def status(snap: Snapshot, now: float) -> dict[str, Any]:
    """``now``: the monotonic clock the health states were stamped with."""
    out: dict[str, Any] = {"virtualServers": [], "lastReconcile": snap.last_reconcile or 0.0,
                           "repairs": snap.repairs}
    for view in snap.virtual_servers:
        vs = view.virtual_server
        rss = []
        for rv in view.real_servers:
            h, dest, last = rv.health, rv.kernel, rv.health.last
            rss.append({
                "address": str(rv.real_server.endpoint),
                "state": h.state.value,
                "slow": h.slow,
                "source": rv.source,
                "since": round(now - h.since, 3),
                "configuredWeight": rv.real_server.weight,
                "kernelWeight": dest.weight if dest else None,
                "activeConnections": dest.active_conns if dest else 0,
                "inactiveConnections": dest.inactive_conns if dest else 0,
                "consecutiveFailures": h.failures,
                "lastProbe": None if last is None else {
                    "outcome": last.outcome.value, "latency": round(last.latency, 6),
                    "status": last.status, "error": last.detail or None},
            })
        out["virtualServers"].append({
            "address": str(vs.endpoint), "mode": vs.mode, "scheduler": vs.scheduler,
            "allDown": view.all_down, "realServers": rss})
    return out


Answer = tuple[int, str, bytes]  # status, content type, body


def routes(snapshot: Callable[[], Snapshot], metrics: Metrics) -> dict[str, Callable[[], Answer]]:
    def get_healthz() -> Answer:
        code, reason = healthz(snapshot(), time.time())
        return code, "text/plain; charset=utf-8", (reason + "\n").encode()

    def get_status() -> Answer:
        body = status(snapshot(), time.monotonic())
        # The daemon's own upkeep, for a soak test to see that nothing grows (bench/chaos.py).
        body["asyncioTasks"] = len(asyncio.all_tasks())
        return 200, "application/json", json.dumps(body).encode()

    def get_metrics() -> Answer:
        return 200, CONTENT_TYPE, metrics.render(snapshot())

    return {"/metrics": get_metrics, "/healthz": get_healthz, "/status": get_status}


class WebServer:
    def __init__(self, handlers: dict[str, Callable[[], Answer]],
                 max_connections: int = MAX_CONNECTIONS, timeout: float = REQUEST_TIMEOUT) -> None:
        self.handlers = handlers
        self.max_connections, self.timeout = max_connections, timeout
        self.active = 0
        self.refused = 0  # connections closed at once: too many open
        self._server: asyncio.Server | None = None

    async def start(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self._server = await asyncio.start_server(
            self._serve, host.strip("[]") or None, int(port), reuse_address=True, limit=MAX_HEAD,
            backlog=self.max_connections)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            # Serving connections end by their own timeouts; do not wait for them here.
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.active >= self.max_connections:
            self.refused += 1
            writer.transport.abort()
            return
        self.active += 1
        try:
            async with asyncio.timeout(self.timeout):
                head = await reader.readuntil(b"\r\n\r\n")
                code, ctype, body, send_body = self._answer(head)
                writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                             b"Connection: close\r\n\r\n" % (code, _REASONS[code].encode(),
                                                             ctype.encode(), len(body)))
                if send_body:
                    writer.write(body)
                await writer.drain()
            writer.close()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            writer.transport.abort()
        finally:
            self.active -= 1

    def _answer(self, head: bytes) -> tuple[int, str, bytes, bool]:
        line = head.split(b"\r\n", 1)[0].split(b" ")
        text = "text/plain; charset=utf-8"
        if len(line) != 3 or not line[2].startswith(b"HTTP/1."):
            return 400, text, b"bad request\n", True
        method, target = line[0], line[1].split(b"?", 1)[0]
        handler = self.handlers.get(target.decode("ascii", "replace"))
        if handler is None:
            return 404, text, b"not found\n", method != b"HEAD"
        if method not in (b"GET", b"HEAD"):
            return 405, text, b"GET or HEAD\n", True
        try:
            return (*handler(), method == b"GET")
        except Exception:  # a bug in rendering must cost one answer, not the server
            return 500, text, b"internal error\n", True


async def serve(snapshot: Callable[[], Snapshot], metrics: Metrics, address: str) -> WebServer:
    server = WebServer(routes(snapshot, metrics))
    await server.start(address)
    return server

