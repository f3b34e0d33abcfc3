"""The hand-rendered exposition parses as Prometheus text and says what the state says."""

from __future__ import annotations

import ipaddress
import time

from prometheus_client.parser import text_string_to_metric_families

from lvscare.config import Config, Endpoint, RealServer, VirtualServer
from lvscare.core import Core
from lvscare.health import Outcome, ProbeResult, State
from lvscare.metrics import Metrics
from lvscare.snapshot import Snapshot
from lvscare.web import healthz, status

VS = VirtualServer(Endpoint(ipaddress.ip_address("10.103.97.2"), 6443),
                   tuple(RealServer(Endpoint(ipaddress.ip_address(f"10.0.0.{i}"), 6443))
                         for i in (1, 2)))


KEY1, KEY2 = ((VS.endpoint, rs.endpoint) for rs in VS.real_servers)


def core() -> Core:
    c = Core(Config(virtual_servers=(VS,), metrics_address=""))
    c.adopt({}, now=5.0)
    return c


def families(metrics: Metrics, snap: Snapshot) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(metrics.render(snap).decode()):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_exposition_parses_and_follows_state() -> None:
    c, m = core(), Metrics()
    vs, rs1, rs2 = "10.103.97.2:6443", "10.0.0.1:6443", "10.0.0.2:6443"
    c.observe(KEY1, ProbeResult(Outcome.REFUSED), 6.0)
    m.probe(KEY1, Outcome.REFUSED, 0.003)
    m.probe(KEY2, Outcome.OK, 0.02)
    m.transition(KEY1, State.DOWN)
    m.reconcile_error("EPERM")
    c.desired(6.0)
    f = families(m, c.snapshot({}))
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
    m.forget(KEY1)
    f = families(m, c.snapshot({}))
    assert (("outcome", "refused"), ("rs", rs1), ("vs", vs)) not in f["lvscare_probes_total"]


def test_healthz_and_status_without_a_reconcile() -> None:
    c = core()
    now = time.time()
    assert healthz(c.snapshot({}), now) == (503, "no reconcile yet")
    table, _ = c.desired(6.0)
    c.reconciled([], table, {}, wall=now)
    assert healthz(c.snapshot({}), now) == (200, "ok")
    c.failed("cannot add route")
    code, reason = healthz(c.snapshot({}), now + 60)
    assert code == 503 and "cannot add route" in reason
    s = status(c.snapshot({}), 7.0)
    assert [r["state"] for r in s["virtualServers"][0]["realServers"]] == ["healthy", "healthy"]
    assert s["virtualServers"][0]["realServers"][0]["since"] == 2.0


def test_content_type_is_prometheus_text_format() -> None:
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

    from lvscare.metrics import CONTENT_TYPE

    assert CONTENT_TYPE == CONTENT_TYPE_PLAIN_0_0_4


def test_all_down_gauge_follows_fail_open() -> None:
    """The gauge behind the only critical alert: 1 while every real server is down and the last
    healthy ones are kept, 0 before and after."""
    c, m = core(), Metrics()
    vs = (("vs", "10.103.97.2:6443"),)
    c.desired(5.0)
    assert families(m, c.snapshot({}))["lvscare_virtual_server_all_down"][vs] == 0
    for key in (KEY1, KEY2):
        c.observe(key, ProbeResult(Outcome.REFUSED), 6.0)
    c.desired(6.0)
    assert families(m, c.snapshot({}))["lvscare_virtual_server_all_down"][vs] == 1
    for t in (7.0, 8.0):
        c.observe(KEY2, ProbeResult(Outcome.OK), t)
    c.desired(8.0)
    assert families(m, c.snapshot({}))["lvscare_virtual_server_all_down"][vs] == 0


def test_histogram_bucket_boundaries_and_inf() -> None:
    """``le`` is "less than or equal": a value on a bound counts in that bucket; one above the
    last bound only in +Inf; buckets are cumulative."""
    m = Metrics()
    for seconds in (0.0025, 0.0026, 1.0, 7.0):
        m.probe(KEY1, Outcome.OK, seconds)
    f = families(m, core().snapshot({}))["lvscare_probe_duration_seconds_bucket"]
    by_le = {dict(k)["le"]: v for k, v in f.items() if dict(k)["rs"] == "10.0.0.1:6443"}
    assert by_le == {"0.0025": 1, "0.01": 2, "0.05": 2, "0.25": 2, "1.0": 3, "+Inf": 4}
    sums = families(m, core().snapshot({}))["lvscare_probe_duration_seconds_sum"]
    assert abs(next(iter(sums.values())) - 8.0051) < 1e-9


def test_label_values_are_escaped() -> None:
    """A reconcile error kind with a quote, a backslash and a newline still parses back intact."""
    m = Metrics()
    kind = 'a "quoted"\\path\nline'
    m.reconcile_error(kind)
    f = families(m, core().snapshot({}))
    assert f["lvscare_reconcile_errors_total"][(("kind", kind),)] == 1


def test_forget_drops_every_series_of_the_real_server() -> None:
    m = Metrics()
    m.probe(KEY1, Outcome.OK, 0.01)
    m.transition(KEY1, State.DOWN)
    m.probe(KEY2, Outcome.OK, 0.01)
    m.forget(KEY1)
    text = m.render(core().snapshot({})).decode()
    series = [line for line in text.splitlines()
              if line.startswith(("lvscare_probe", "lvscare_real_server_transitions"))]
    assert series and not [line for line in series if 'rs="10.0.0.1:6443"' in line]
