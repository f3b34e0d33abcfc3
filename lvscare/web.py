"""The daemon's HTTP endpoints: /metrics, /healthz, /status. They read state, never change it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from lvscare.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from lvscare.daemon import Daemon


def stale_after(interval: float) -> float:
    """How old the last successful reconcile may be before /healthz says 503."""
    return 3 * interval + 5


def healthz(daemon: Daemon) -> tuple[int, str]:
    last = daemon.stats.last_reconcile
    if not last:
        return 503, "no reconcile yet"
    age = time.time() - last
    limit = stale_after(daemon.cfg.interval)
    if age > limit:
        reason = f"last successful reconcile {age:.0f}s ago (limit {limit:.0f}s)"
        if daemon.last_error:
            reason += f": {daemon.last_error}"
        return 503, reason
    return 200, "ok"


def status(daemon: Daemon) -> dict[str, Any]:
    now = time.monotonic()
    out: dict[str, Any] = {"virtualServers": [], "lastReconcile": daemon.stats.last_reconcile,
                           "repairs": daemon.stats.repairs}
    for vs in daemon.cfg.virtual_servers:
        kernel = daemon.kernel_state(vs)
        rss = []
        for rs in vs.real_servers:
            h = daemon.health.get((vs.endpoint, rs.endpoint))
            if h is None:
                continue
            dest = kernel.get(rs.endpoint)
            last = h.last
            rss.append({
                "address": str(rs.endpoint),
                "state": h.state.value,
                "since": round(now - h.since, 3),
                "configuredWeight": rs.weight,
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
            "allDown": daemon.decision is not None and vs.endpoint in daemon.decision.all_down,
            "realServers": rss})
    return out


def make_app(daemon: Daemon) -> web.Application:
    async def get_healthz(_: web.Request) -> web.Response:
        code, reason = healthz(daemon)
        return web.Response(status=code, text=reason + "\n")

    async def get_status(_: web.Request) -> web.Response:
        return web.json_response(status(daemon))

    app = web.Application()
    async def get_metrics(_: web.Request) -> web.Response:
        return web.Response(body=daemon.metrics.render(),
                            headers={"Content-Type": CONTENT_TYPE})

    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", get_healthz)
    app.router.add_get("/status", get_status)
    return app


async def serve(daemon: Daemon, address: str) -> web.AppRunner:
    host, _, port = address.rpartition(":")
    runner = web.AppRunner(make_app(daemon), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host.strip("[]") or None, int(port), reuse_address=True)
    await site.start()
    return runner
