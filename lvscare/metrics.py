"""Prometheus metrics of the daemon, rendered in the text exposition format (0.0.4).

Counters and histograms are plain numbers updated as things happen; gauges are rendered at scrape
time from the last snapshot (``snapshot.py``), without I/O and without seeing the daemon.
Series of real servers that leave the configuration are deleted, not left stale.

The text is rendered here rather than by prometheus-client's ``generate_latest``, which spends
about 10 us per sample validating and escaping labels: 66 ms of CPU per scrape at 300 real
servers, against 5 ms allowed (``bench/metrics.py``). Label sets are escaped once and cached.
The unit tests parse the output with prometheus-client's parser; the kernel tests run
``promtool check metrics`` on it.
"""

from __future__ import annotations

import contextlib
import math
import platform
import time
from bisect import bisect_left
from collections.abc import Iterator

from lvscare import __version__
from lvscare.config import Endpoint, RsKey
from lvscare.health import Outcome, State
from lvscare.snapshot import Snapshot

# prometheus_client's CONTENT_TYPE_PLAIN_0_0_4, the format rendered here; not imported, for the
# 1.3 MB its import costs.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PROBE_BUCKETS = (0.0025, 0.01, 0.05, 0.25, 1.0)
RECONCILE_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 2.5)

_STATES = tuple(State)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _num(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if value != value:
        return "NaN"
    return repr(float(value))


class Histogram:
    __slots__ = ("buckets", "count", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        i = bisect_left(self.buckets, value)
        if i < len(self.counts):
            self.counts[i] += 1
        self.count += 1
        self.sum += value

    def lines(self, name: str, labels: str) -> Iterator[str]:
        sep = "," if labels else ""
        total = 0
        for bound, n in zip(self.buckets, self.counts, strict=True):
            total += n
            yield f'{name}_bucket{{{labels}{sep}le="{bound}"}} {total}.0'
        yield f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}.0'
        brace = f"{{{labels}}}" if labels else ""
        yield f"{name}_sum{brace} {_num(self.sum)}"
        yield f"{name}_count{brace} {self.count}.0"


class Metrics:
    """Counters and histograms, updated by the daemon as things happen; ``render`` adds the
    gauges of a snapshot."""

    def __init__(self) -> None:
        self.probe_duration: dict[RsKey, Histogram] = {}
        self.probes: dict[RsKey, dict[str, int]] = {}
        self.transitions: dict[RsKey, dict[str, int]] = {}
        self.repairs: dict[str, int] = {}
        self.nudges: dict[str, int] = {}
        self.reconcile_duration = Histogram(RECONCILE_BUCKETS)
        self.reconcile_errors: dict[str, int] = {}
        self.discovery_failures: dict[str, int] = {}  # the Discovery's own counts
        self._labels: dict[RsKey, tuple[str, str, list[str]]] = {}
        self._vs_labels: dict[Endpoint, str] = {}

    # -- updates ---------------------------------------------------------------------------------

    def probe(self, key: RsKey, outcome: Outcome, seconds: float) -> None:
        hist = self.probe_duration.get(key)
        if hist is None:
            hist = self.probe_duration[key] = Histogram(PROBE_BUCKETS)
        hist.observe(seconds)
        counts = self.probes.setdefault(key, {})
        counts[outcome.value] = counts.get(outcome.value, 0) + 1

    def transition(self, key: RsKey, state: State) -> None:
        counts = self.transitions.setdefault(key, {})
        counts[state.value] = counts.get(state.value, 0) + 1

    def repair(self, vs: Endpoint, n: int = 1) -> None:
        self.repairs[str(vs)] = self.repairs.get(str(vs), 0) + n

    def nudged(self, vs: Endpoint, n: int) -> None:
        self.nudges[str(vs)] = self.nudges.get(str(vs), 0) + n

    def reconcile_error(self, kind: str) -> None:
        self.reconcile_errors[kind] = self.reconcile_errors.get(kind, 0) + 1

    @contextlib.contextmanager
    def reconcile_timer(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.reconcile_duration.observe(time.perf_counter() - start)

    def forget(self, key: RsKey) -> None:
        """Drop every series of a real server that is no longer configured."""
        self.probe_duration.pop(key, None)
        self.probes.pop(key, None)
        self.transitions.pop(key, None)
        self._labels.pop(key, None)

    # -- exposition ------------------------------------------------------------------------------

    def _rs_labels(self, key: RsKey) -> tuple[str, str, list[str]]:
        """``vs="…",rs="…"``, the same in braces, and the prefixes of the state lines: escaped
        once per real server, not once per scrape."""
        found = self._labels.get(key)
        if found is None:
            lab = f'vs="{_escape(str(key[0]))}",rs="{_escape(str(key[1]))}"'
            found = self._labels[key] = (lab, f"{{{lab}}}",
                                         [f'{{{lab},state="{s.value}"}} ' for s in _STATES])
        return found

    def _vs_label(self, vs: Endpoint) -> str:
        found = self._vs_labels.get(vs)
        if found is None:
            found = self._vs_labels[vs] = f'{{vs="{_escape(str(vs))}"}}'
        return found

    def render(self, snap: Snapshot) -> bytes:
        return ("\n".join(self._lines(snap)) + "\n").encode()

    def _lines(self, snap: Snapshot) -> list[str]:
        out: list[str] = []
        emit = out.append

        def family(name: str, kind: str, help_text: str) -> None:
            emit(f"# HELP {name} {help_text}")
            emit(f"# TYPE {name} {kind}")

        gauges: dict[str, list[str]] = {n: [] for n in _GAUGES}
        up, state_lines = gauges["lvscare_real_server_up"], gauges["lvscare_real_server_state"]
        slow = gauges["lvscare_real_server_slow"]
        source = gauges["lvscare_real_server_source"]
        kweight = gauges["lvscare_real_server_kernel_weight"]
        cweight = gauges["lvscare_real_server_configured_weight"]
        active = gauges["lvscare_real_server_active_connections"]
        inactive = gauges["lvscare_real_server_inactive_connections"]
        for view in snap.virtual_servers:
            vs = view.virtual_server.endpoint
            vl = self._vs_label(vs)
            for rv in view.real_servers:
                plain, lab, prefixes = self._rs_labels((vs, rv.real_server.endpoint))
                h = rv.health
                up.append(f"{lab} {float(h.serving)}")
                slow.append(f"{lab} {float(h.slow)}")
                source.append(f'{{{plain},source="{rv.source}"}} 1.0')
                state = h.state
                state_lines.extend([p + ("1.0" if s is state else "0.0")
                                    for s, p in zip(_STATES, prefixes, strict=True)])
                cweight.append(f"{lab} {float(rv.real_server.weight)}")
                dest = rv.kernel
                if dest is None:
                    kweight.append(f"{lab} -1.0")
                    active.append(f"{lab} 0.0")
                    inactive.append(f"{lab} 0.0")
                else:
                    kweight.append(f"{lab} {float(dest.weight)}")
                    active.append(f"{lab} {float(dest.active_conns)}")
                    inactive.append(f"{lab} {float(dest.inactive_conns)}")
            gauges["lvscare_virtual_server_healthy_real_servers"].append(
                f"{vl} {float(view.serving)}")
            gauges["lvscare_virtual_server_all_down"].append(f"{vl} {float(view.all_down)}")
        if snap.discovery_last_success is not None:
            gauges["lvscare_discovery_last_success_timestamp_seconds"].append(
                f" {_num(snap.discovery_last_success)}")
        gauges["lvscare_last_reconcile_timestamp_seconds"].append(
            f" {_num(snap.last_reconcile or 0.0)}")
        for name, value in snap.sysctls.items():
            if value is not None and value.lstrip("-").isdigit():
                gauges["lvscare_sysctl"].append(
                    f'{{name="{name.replace("/", ".")}"}} {float(value)}')
        gauges["lvscare_build_info"].append(
            f'{{version="{__version__}",python="{platform.python_version()}"}} 1.0')

        for name, help_text in _GAUGES.items():
            family(name, "gauge", help_text)
            out.extend([name + line for line in gauges[name]])

        family("lvscare_probes_total", "counter", "Health probes by outcome.")
        for key, counts in self.probes.items():
            lab = self._rs_labels(key)[0]
            out.extend([f'lvscare_probes_total{{{lab},outcome="{o}"}} {n}.0'
                        for o, n in counts.items()])
        family("lvscare_real_server_transitions_total", "counter",
               "Health state changes, by the state entered.")
        for key, counts in self.transitions.items():
            lab = self._rs_labels(key)[0]
            out.extend([f'lvscare_real_server_transitions_total{{{lab},state="{e}"}} {n}.0'
                        for e, n in counts.items()])
        for name, help_text, label, counts in (
                ("lvscare_rules_repaired_total",
                 "Changes that undid someone else's change to our rules or VIP.", "vs",
                 self.repairs),
                ("lvscare_clients_nudged_total",
                 "Client connections of deleted real servers told to reconnect at once.", "vs",
                 self.nudges),
                ("lvscare_reconcile_errors_total", "Failed reconciles, by kind.", "kind",
                 self.reconcile_errors),
                ("lvscare_discovery_failures_total",
                 "Discovery rounds that kept the current real servers, by reason.", "reason",
                 self.discovery_failures)):
            family(name, "counter", help_text)
            out.extend([f'{name}{{{label}="{_escape(k)}"}} {n}.0' for k, n in counts.items()])
        family("lvscare_probe_duration_seconds", "histogram", "Duration of health probes.")
        for key, hist in self.probe_duration.items():
            out.extend(hist.lines("lvscare_probe_duration_seconds", self._rs_labels(key)[0]))
        family("lvscare_reconcile_duration_seconds", "histogram",
               "Duration of one reconcile with the kernel.")
        out.extend(self.reconcile_duration.lines("lvscare_reconcile_duration_seconds", ""))
        return out


_GAUGES: dict[str, str] = {
    "lvscare_real_server_up": "1 if the real server takes new connections by its health.",
    "lvscare_real_server_state": "1 for the real server's current health state.",
    "lvscare_real_server_slow":
        "1 while the real server answers PINGs but not readiness in time (HTTP/2 probes): kept.",
    "lvscare_real_server_kernel_weight": "Weight in the kernel; -1 when not in the kernel.",
    "lvscare_real_server_configured_weight": "Configured weight.",
    "lvscare_real_server_active_connections": "Active connections (IPVS).",
    "lvscare_real_server_inactive_connections": "Inactive connections (IPVS).",
    "lvscare_virtual_server_healthy_real_servers": "Real servers taking new connections by their health.",
    "lvscare_virtual_server_all_down":
        "1 while every real server is down and the last healthy ones are kept (fail-open).",
    "lvscare_real_server_source":
        "1 for where the real server's address came from: seed, state (file) or discovered.",
    "lvscare_last_reconcile_timestamp_seconds": "Unix time of the last successful reconcile.",
    "lvscare_discovery_last_success_timestamp_seconds":
        "Unix time of the last usable answer of control-plane discovery.",
    "lvscare_sysctl": "IPVS sysctls lvscare relies on.",
    "lvscare_build_info": "Build information.",
}
