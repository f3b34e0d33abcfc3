"""The hand-rendered exposition parses as Prometheus text and says what the state says."""

from __future__ import annotations

import ipaddress
import time

from prometheus_client.parser import text_string_to_metric_families

from lvscare.config import Config, Endpoint, RealServer, VirtualServer
from lvscare.daemon import Daemon
from lvscare.health import Outcome, ProbeResult, State, initial, step
from lvscare.web import healthz, status

VS = VirtualServer(Endpoint(ipaddress.ip_address("10.103.97.2"), 6443),
                   tuple(RealServer(Endpoint(ipaddress.ip_address(f"10.0.0.{i}"), 6443))
                         for i in (1, 2)))


def daemon() -> Daemon:
    d = Daemon(Config(virtual_servers=(VS,), metrics_address=""))
    now = time.monotonic()
    for rs in VS.real_servers:
        d.health[(VS.endpoint, rs.endpoint)] = initial(now)
    return d


def families(d: Daemon) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(d.metrics.render().decode()):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_exposition_parses_and_follows_state() -> None:
    d = daemon()
    vs, rs1, rs2 = "10.103.97.2:6443", "10.0.0.1:6443", "10.0.0.2:6443"
    key = (VS.endpoint, VS.real_servers[0].endpoint)
    d.health[key] = step(d.health[key], ProbeResult(Outcome.REFUSED), 1.0, 2, 2)
    d.metrics.probe(vs, rs1, Outcome.REFUSED, 0.003)
    d.metrics.probe(vs, rs2, Outcome.OK, 0.02)
    d.metrics.transition(vs, rs1, State.DOWN)
    d.metrics.reconcile_error("EPERM")
    d.desired(time.monotonic())
    f = families(d)
    assert f["lvscare_real_server_up"][(("rs", rs1), ("vs", vs))] == 0
    assert f["lvscare_real_server_up"][(("rs", rs2), ("vs", vs))] == 1
    assert f["lvscare_real_server_state"][(("rs", rs1), ("state", "down"), ("vs", vs))] == 1
    assert f["lvscare_probes_total"][(("outcome", "refused"), ("rs", rs1), ("vs", vs))] == 1
    assert f["lvscare_real_server_transitions_total"][
        (("rs", rs1), ("state", "down"), ("vs", vs))] == 1
    assert f["lvscare_probe_duration_seconds_bucket"][
        (("le", "0.0025"), ("rs", rs2), ("vs", vs))] == 0
    assert f["lvscare_probe_duration_seconds_bucket"][
        (("le", "0.05"), ("rs", rs2), ("vs", vs))] == 1
    assert f["lvscare_probe_duration_seconds_count"][(("rs", rs2), ("vs", vs))] == 1
    assert f["lvscare_virtual_server_healthy_real_servers"][(("vs", vs),)] == 1
    assert f["lvscare_reconcile_errors_total"][(("kind", "EPERM"),)] == 1
    d.metrics.forget(vs, rs1)
    f = families(d)
    assert (("outcome", "refused"), ("rs", rs1), ("vs", vs)) not in f["lvscare_probes_total"]


def test_healthz_and_status_without_a_reconcile() -> None:
    d = daemon()
    assert healthz(d) == (503, "no reconcile yet")
    d.stats.last_reconcile = time.time()
    assert healthz(d) == (200, "ok")
    d.stats.last_reconcile = time.time() - 60
    d.last_error = "cannot add route"
    code, reason = healthz(d)
    assert code == 503 and "cannot add route" in reason
    s = status(d)
    assert [r["state"] for r in s["virtualServers"][0]["realServers"]] == ["healthy", "healthy"]


def test_content_type_is_prometheus_text_format() -> None:
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

    from lvscare.metrics import CONTENT_TYPE

    assert CONTENT_TYPE == CONTENT_TYPE_PLAIN_0_0_4
