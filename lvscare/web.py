"""The daemon's HTTP endpoints: /metrics, /healthz, /status. They render the last snapshot
(``snapshot.py``) and never see the daemon itself."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from lvscare.metrics import CONTENT_TYPE, Metrics
from lvscare.snapshot import Snapshot


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


def make_app(snapshot: Callable[[], Snapshot], metrics: Metrics) -> web.Application:
    async def get_healthz(_: web.Request) -> web.Response:
        code, reason = healthz(snapshot(), time.time())
        return web.Response(status=code, text=reason + "\n")

    async def get_status(_: web.Request) -> web.Response:
        return web.json_response(status(snapshot(), time.monotonic()))

    async def get_metrics(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(snapshot()), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", get_healthz)
    app.router.add_get("/status", get_status)
    return app


async def serve(snapshot: Callable[[], Snapshot], metrics: Metrics, address: str) -> web.AppRunner:
    host, _, port = address.rpartition(":")
    runner = web.AppRunner(make_app(snapshot, metrics), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host.strip("[]") or None, int(port), reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
