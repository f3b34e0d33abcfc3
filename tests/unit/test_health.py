from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from lvscare.config import Endpoint, RealServer, VirtualServer
from lvscare.health import (
    Health,
    Outcome,
    ProbeResult,
    State,
    decide,
    initial,
    kernel_weight,
    step,
)

OK = ProbeResult(Outcome.OK)
REFUSED = ProbeResult(Outcome.REFUSED)
TIMEOUT = ProbeResult(Outcome.TIMEOUT)
TLS = ProbeResult(Outcome.TLS)
HTTP500 = ProbeResult(Outcome.HTTP_STATUS, status=500)


def run(h: Health, results: list[ProbeResult], rise: int = 2, fall: int = 2) -> Health:
    for i, r in enumerate(results):
        h = step(h, r, float(i + 1), rise, fall)
    return h


def test_timeouts_need_fall_failures() -> None:
    h = run(initial(0.0), [TIMEOUT])
    assert h.state is State.FAILING and h.serving
    h = run(h, [TIMEOUT])
    assert h.state is State.DOWN and h.dead and not h.serving


def test_refused_is_conclusive() -> None:
    h = run(initial(0.0), [REFUSED])
    assert h.state is State.DOWN and h.dead


def test_a_reset_is_conclusive_and_a_timeout_is_not() -> None:
    """Nothing listens (reset): down at the first failure, whatever ``fall`` is; a timeout may
    be a lost packet and waits for ``fall``."""
    reset = step(initial(0.0), ProbeResult(Outcome.RESET), 1.0, rise=2, fall=5)
    assert reset.state is State.DOWN and reset.dead and not reset.serving
    timeout = step(initial(0.0), ProbeResult(Outcome.TIMEOUT), 1.0, rise=2, fall=5)
    assert timeout.state is State.FAILING and timeout.serving and timeout.failures == 1


def test_success_in_between_resets_the_count() -> None:
    h = run(initial(0.0), [TIMEOUT, OK, TIMEOUT, OK, TLS])
    assert h.state is State.FAILING


def test_recovery_needs_rise_successes() -> None:
    h = run(initial(0.0), [REFUSED, OK])
    assert h.state is State.RECOVERING and not h.serving
    h = run(h, [OK])
    assert h.state is State.HEALTHY and h.serving
    h = run(initial(0.0), [REFUSED, OK, TIMEOUT, OK])
    assert h.state is State.RECOVERING  # a failure while recovering starts over


def test_http_status_drains_then_deletes() -> None:
    h = run(initial(0.0), [HTTP500, HTTP500])
    assert h.state is State.DOWN and not h.dead
    assert kernel_weight(h, 1, now=h.drain_since + 1, drain_period=10) == 0  # type: ignore[operator]
    assert kernel_weight(h, 1, now=h.drain_since + 10, drain_period=10) is None  # type: ignore[operator]
    dead = step(h, REFUSED, 5.0, 2, 2)
    assert kernel_weight(dead, 1, now=5.0, drain_period=10) is None


def test_adopted_absent_real_server_waits_for_probes() -> None:
    h = initial(0.0, present=False)
    assert kernel_weight(h, 1, 0.0, 10) is None
    assert run(h, [OK, OK]).state is State.HEALTHY


def ep(text: str) -> Endpoint:
    host, _, port = text.rpartition(":")
    return Endpoint(ipaddress.ip_address(host), int(port))


VS = VirtualServer(ep("10.103.97.2:6443"),
                   tuple(RealServer(ep(f"10.0.0.{i}:6443")) for i in (1, 2, 3)))
KEYS = [(VS.endpoint, rs.endpoint) for rs in VS.real_servers]


def test_fail_open_keeps_the_last_healthy() -> None:
    down = run(initial(0.0), [REFUSED])
    healthy = initial(0.0)
    d = decide([VS], {KEYS[0]: down, KEYS[1]: down, KEYS[2]: healthy}, {}, 5.0, 10)
    assert d.weights == {KEYS[0]: None, KEYS[1]: None, KEYS[2]: 1}
    assert not d.all_down
    d = decide([VS], {k: down for k in KEYS}, d.last_healthy, 6.0, 10)
    assert d.all_down == {VS.endpoint}
    assert d.weights == {KEYS[0]: None, KEYS[1]: None, KEYS[2]: 1}
    empty = decide([VS], {k: down for k in KEYS}, d.last_healthy, 6.0, 10, all_down="empty")
    assert set(empty.weights.values()) == {None} and not empty.all_down


def test_fail_open_without_history_keeps_everyone() -> None:
    down = run(initial(0.0), [REFUSED])
    d = decide([VS], {k: down for k in KEYS}, {}, 1.0, 10)
    assert set(d.weights.values()) == {1}


results = st.lists(st.sampled_from([OK, REFUSED, TIMEOUT, TLS, HTTP500]), max_size=40)


@given(results, st.integers(1, 4), st.integers(1, 4))
def test_state_machine_invariants(seq: list[ProbeResult], rise: int, fall: int) -> None:
    h = initial(0.0)
    run_ok = run_fail = 0
    for i, r in enumerate(seq):
        new = step(h, r, float(i + 1), rise, fall)
        run_ok = run_ok + 1 if r.ok else 0
        run_fail = 0 if r.ok else run_fail + 1
        # Never leaves service without `fall` failures in a row (or a conclusive one) ...
        if h.serving and not new.serving:
            assert run_fail >= fall or r.outcome.conclusive
        # ... and never returns without `rise` successes in a row.
        if not h.serving and new.serving:
            assert run_ok >= rise
        assert new.serving == (new.state in (State.HEALTHY, State.FAILING))
        h = new
