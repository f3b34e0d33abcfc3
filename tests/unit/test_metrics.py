"""The hand-rendered exposition parses as Prometheus text and says what the state says."""

from __future__ import annotations

import ipaddress
import re
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
    c.reconciled([], table, {})
    c.succeeded(now)
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


HELP = {  # what Prometheus and Grafana show for each family
    "lvscare_real_server_up": ("gauge", "1 if the real server takes new connections by its health."),
    "lvscare_real_server_state": ("gauge", "1 for the real server's current health state."),
    "lvscare_real_server_slow": ("gauge", "1 while the real server answers PINGs but not readiness "
                                 "in time (HTTP/2 probes): kept."),
    "lvscare_real_server_kernel_weight": ("gauge", "Weight in the kernel; -1 when not in the kernel."),
    "lvscare_real_server_configured_weight": ("gauge", "Configured weight."),
    "lvscare_real_server_active_connections": ("gauge", "Active connections (IPVS)."),
    "lvscare_real_server_inactive_connections": ("gauge", "Inactive connections (IPVS)."),
    "lvscare_virtual_server_healthy_real_servers": (
        "gauge", "Real servers taking new connections by their health."),
    "lvscare_virtual_server_all_down": (
        "gauge", "1 while every real server is down and the last healthy ones are kept (fail-open)."),
    "lvscare_real_server_source": (
        "gauge", "1 for where the real server's address came from: seed, state (file) or discovered."),
    "lvscare_last_reconcile_timestamp_seconds": ("gauge", "Unix time of the last successful reconcile."),
    "lvscare_discovery_last_success_timestamp_seconds": (
        "gauge", "Unix time of the last usable answer of control-plane discovery."),
    "lvscare_discovery_failures": (
        "counter", "Discovery rounds that kept the current real servers, by reason."),
    "lvscare_sysctl": ("gauge", "IPVS sysctls lvscare relies on."),
    "lvscare_build_info": ("gauge", "Build information."),
    "lvscare_probes": ("counter", "Health probes by outcome."),
    "lvscare_real_server_transitions": ("counter", "Health state changes, by the state entered."),
    "lvscare_rules_repaired": ("counter", "Changes that undid someone else's change to our rules or VIP."),
    "lvscare_clients_nudged": (
        "counter", "Client connections of deleted real servers told to reconnect at once."),
    "lvscare_reconcile_errors": ("counter", "Failed reconciles, by kind."),
    "lvscare_probe_duration_seconds": ("histogram", "Duration of health probes."),
    "lvscare_reconcile_duration_seconds": ("histogram", "Duration of one reconcile with the kernel."),
}


def test_every_family_every_sample() -> None:
    """A state that fills every family, read back sample by sample, with each family's type and
    help text; the names and labels are those of docs/design.md's metric table."""
    from prometheus_client.parser import text_string_to_metric_families

    from lvscare.health import Health
    from lvscare.plan import Dest
    from lvscare.snapshot import RealServerView, VirtualServerView

    rs1, rs2 = VS.real_servers
    snap = Snapshot(Config(virtual_servers=(VS,), metrics_address=""), (VirtualServerView(VS, False, (
        RealServerView(rs1, Health(State.DOWN, dead=True), Dest(rs1.endpoint, 0, active_conns=3,
                                                                inactive_conns=4)),
        RealServerView(rs2, Health(State.RECOVERING), None, "discovered"))),),
        last_reconcile=None, sysctls={"net/ipv4/vs/expire_nodest_conn": "1",
                                      "net/ipv4/vs/conntrack": "-1", "net/ipv4/vs/odd": "x",
                                      "net/ipv4/vs/gone": None}, discovery_last_success=1.8e9)
    m = Metrics()
    m.probe(KEY1, Outcome.TLS, 0.2)
    m.transition(KEY1, State.DOWN)
    m.transition(KEY1, State.DOWN)
    m.repair(VS.endpoint, 2)
    m.nudged(VS.endpoint, 5)
    m.reconcile_error("EPERM")
    m.discovery_failures["forbidden"] = 3
    with m.reconcile_timer():
        pass
    fams = {f.name: f for f in text_string_to_metric_families(m.render(snap).decode())}
    assert {n: (f.type, f.documentation) for n, f in fams.items()} == HELP
    vs, a, b = "10.103.97.2:6443", "10.0.0.1:6443", "10.0.0.2:6443"

    def value(metric: str, **labels: str) -> float:
        (s,) = [s for f in fams.values() for s in f.samples if s.name == metric and s.labels == labels]
        return float(s.value)

    assert value("lvscare_real_server_up", vs=vs, rs=a) == 0
    assert value("lvscare_real_server_up", vs=vs, rs=b) == 0  # recovering: not yet
    for state in State:
        assert value("lvscare_real_server_state", vs=vs, rs=a, state=state.value) == (state is State.DOWN)
        assert value("lvscare_real_server_state", vs=vs, rs=b, state=state.value) == (
            state is State.RECOVERING)
    assert value("lvscare_real_server_kernel_weight", vs=vs, rs=a) == 0
    assert value("lvscare_real_server_kernel_weight", vs=vs, rs=b) == -1
    assert value("lvscare_real_server_configured_weight", vs=vs, rs=a) == 1
    assert value("lvscare_real_server_active_connections", vs=vs, rs=a) == 3
    assert value("lvscare_real_server_inactive_connections", vs=vs, rs=a) == 4
    assert value("lvscare_real_server_active_connections", vs=vs, rs=b) == 0
    assert value("lvscare_virtual_server_healthy_real_servers", vs=vs) == 0
    assert value("lvscare_virtual_server_all_down", vs=vs) == 0
    assert value("lvscare_last_reconcile_timestamp_seconds") == 0  # never
    assert value("lvscare_sysctl", name="net.ipv4.vs.expire_nodest_conn") == 1
    assert value("lvscare_sysctl", name="net.ipv4.vs.conntrack") == -1
    assert [s for s in fams["lvscare_sysctl"].samples if s.labels["name"].endswith(("odd", "gone"))] == []
    assert value("lvscare_probes_total", vs=vs, rs=a, outcome="tls") == 1
    assert value("lvscare_real_server_transitions_total", vs=vs, rs=a, state="down") == 2
    assert value("lvscare_rules_repaired_total", vs=vs) == 2
    assert value("lvscare_clients_nudged_total", vs=vs) == 5
    assert value("lvscare_reconcile_errors_total", kind="EPERM") == 1
    assert value("lvscare_real_server_source", vs=vs, rs=a, source="seed") == 1
    assert value("lvscare_real_server_source", vs=vs, rs=b, source="discovered") == 1
    assert value("lvscare_discovery_last_success_timestamp_seconds") == 1.8e9
    assert value("lvscare_discovery_failures_total", reason="forbidden") == 3
    assert value("lvscare_probe_duration_seconds_bucket", vs=vs, rs=a, le="0.25") == 1
    assert value("lvscare_probe_duration_seconds_bucket", vs=vs, rs=a, le="0.05") == 0
    assert value("lvscare_reconcile_duration_seconds_count") == 1
    assert value("lvscare_reconcile_duration_seconds_bucket", le="+Inf") == 1
    # The families and labels docs/design.md promises.
    from pathlib import Path
    table = (Path(__file__).parents[2] / "docs" / "design.md").read_text()
    documented = set(re.findall(r"^\| `(lvscare_[a-z_]+)`", table, re.M))
    exported = {n + ("_total" if f.type == "counter" else "") for n, f in fams.items()}
    assert documented <= exported and len(documented) >= 15


def test_last_reconcile_and_build_info() -> None:
    from lvscare import __version__

    snap = Snapshot(Config(virtual_servers=(VS,), metrics_address=""), last_reconcile=1.8e9)
    f = families(Metrics(), snap)
    assert f["lvscare_last_reconcile_timestamp_seconds"][()] == 1.8e9
    ((labels, one),) = f["lvscare_build_info"].items()
    assert one == 1 and dict(labels)["version"] == __version__


def test_numbers_in_the_text_format() -> None:
    import math

    from lvscare.metrics import _num

    assert [_num(v) for v in (math.inf, -math.inf, math.nan, 0, 1, 2.5, -1, 1e21)] == [
        "+Inf", "-Inf", "NaN", "0.0", "1.0", "2.5", "-1.0", "1e+21"]


def test_a_histogram_without_labels_and_with() -> None:
    from lvscare.metrics import Histogram

    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    assert list(h.lines("x", "")) == [
        'x_bucket{le="0.1"} 2.0', 'x_bucket{le="1.0"} 3.0', 'x_bucket{le="+Inf"} 4.0',
        "x_sum 3.65", "x_count 4.0"]
    labelled = list(h.lines("x", 'a="b"'))
    assert labelled[0] == 'x_bucket{a="b",le="0.1"} 2.0' and labelled[-1] == 'x_count{a="b"} 4.0'


def test_counters_add_up() -> None:
    m = Metrics()
    for _ in range(3):
        m.probe(KEY1, Outcome.TIMEOUT, 0.8)
    m.nudged(VS.endpoint, 2)
    m.nudged(VS.endpoint, 3)
    f = families(m, core().snapshot({}))
    vs, rs = ("vs", "10.103.97.2:6443"), ("rs", "10.0.0.1:6443")
    assert f["lvscare_probes_total"][(("outcome", "timeout"), rs, vs)] == 3
    assert f["lvscare_clients_nudged_total"][(vs,)] == 5


def test_escaping_in_the_raw_text() -> None:
    m = Metrics()
    m.reconcile_error('back\\slash "q"\nn')
    text = m.render(core().snapshot({})).decode()
    assert 'lvscare_reconcile_errors_total{kind="back\\\\slash \\"q\\"\\nn"} 1.0' in text
    # A sysctl that does not read as a number is left out, not rendered as garbage.
    text = Metrics().render(Snapshot(Config(virtual_servers=(VS,), metrics_address=""),
                                     sysctls={"net/ipv4/vs/a": "X1", "net/ipv4/vs/b": "-1"})).decode()
    assert 'lvscare_sysctl{name="net.ipv4.vs.b"} -1.0' in text and "net.ipv4.vs.a" not in text
