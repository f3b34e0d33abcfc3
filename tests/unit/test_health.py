from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lvscare.config import Endpoint, RealServer, VirtualServer
from lvscare.health import (
    Health,
    Outcome,
    ProbeResult,
    State,
    decide,
    departed,
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


SLOW = ProbeResult(Outcome.SLOW, detail="/readyz unanswered after 0.80s; PINGs answered")
results = st.lists(st.sampled_from([OK, REFUSED, TIMEOUT, TLS, HTTP500, SLOW]), max_size=40)


@given(results, st.integers(1, 4), st.integers(1, 4))
def test_state_machine_invariants(seq: list[ProbeResult], rise: int, fall: int) -> None:
    h = initial(0.0)
    run_ok = run_fail = 0
    for i, r in enumerate(seq):
        new = step(h, r, float(i + 1), rise, fall)
        if r is SLOW:  # alive: ends a run of failures; not ready in time: no success either
            run_fail = 0
            assert new.serving == h.serving and new.slow
        else:
            run_ok = run_ok + 1 if r.ok else 0
            run_fail = 0 if r.ok else run_fail + 1
            assert not new.slow
        # Never leaves service without `fall` failures in a row (or a conclusive one) ...
        if h.serving and not new.serving:
            assert run_fail >= fall or r.outcome.conclusive
        # ... and never returns without `rise` successes in a row.
        if not h.serving and new.serving:
            assert run_ok >= rise
        assert new.serving == (new.state in (State.HEALTHY, State.FAILING))
        h = new


OKR, TIMEOUTR, REFUSEDR, STATUSR = (ProbeResult(o) for o in (
    Outcome.OK, Outcome.TIMEOUT, Outcome.REFUSED, Outcome.HTTP_STATUS))
H, F, D, R = State.HEALTHY, State.FAILING, State.DOWN, State.RECOVERING


@pytest.mark.parametrize(("before", "result", "rise", "fall", "after"), [
    # healthy stays healthy: successes count, `since` is when it became healthy
    (Health(H, 3, 0, 1.0), OKR, 2, 2, Health(H, 4, 0, 1.0, last=OKR)),
    # failing -> healthy: healthy since now, failures forgotten
    (Health(F, 0, 1, 3.0), OKR, 2, 2, Health(H, 1, 0, 5.0, last=OKR)),
    # down -> recovering (rise 2): since now, still dead until healthy
    (Health(D, 0, 3, 2.0, dead=True), OKR, 2, 2, Health(R, 1, 0, 5.0, dead=True, last=OKR)),
    # recovering, one more success, rise 3: still recovering since it began
    (Health(R, 1, 0, 4.0), OKR, 3, 2, Health(R, 2, 0, 4.0, last=OKR)),
    # recovering reaches rise: a fresh healthy state
    (Health(R, 1, 0, 4.0, dead=True, drain_since=1.0), OKR, 2, 2, Health(H, 2, 0, 5.0, last=OKR)),
    # rise 1: down -> healthy at once
    (Health(D, 0, 2, 2.0, dead=True), OKR, 1, 2, Health(H, 1, 0, 5.0, last=OKR)),
    # down stays down; a dead result ends a drain (dead), the drain start is kept
    (Health(D, 0, 2, 2.0, drain_since=2.0), TIMEOUTR, 2, 2,
     Health(D, 0, 3, 2.0, dead=True, drain_since=2.0, last=TIMEOUTR)),
    # recovering -> down again: since now
    (Health(R, 1, 0, 4.0), STATUSR, 2, 2, Health(D, 0, 1, 5.0, last=STATUSR)),
    # healthy + refused: down at once whatever fall is, dead, no drain
    (Health(H, 4, 0, 1.0), REFUSEDR, 2, 3, Health(D, 0, 1, 5.0, dead=True, last=REFUSEDR)),
    # healthy + bad status with fall 1: down, draining from now
    (Health(H, 4, 0, 1.0), STATUSR, 2, 1, Health(D, 0, 1, 5.0, drain_since=5.0, last=STATUSR)),
    # failing, one more timeout below fall: still failing since it began
    (Health(F, 0, 1, 3.0), TIMEOUTR, 2, 3, Health(F, 0, 2, 3.0, last=TIMEOUTR)),
    # healthy + timeout below fall: failing since now
    (Health(H, 4, 0, 1.0), TIMEOUTR, 2, 3, Health(F, 0, 1, 5.0, last=TIMEOUTR)),
    # failing reaches fall with a timeout: down, dead (deleted at once, no drain)
    (Health(F, 0, 1, 3.0), TIMEOUTR, 2, 2, Health(D, 0, 2, 5.0, dead=True, last=TIMEOUTR)),
    # slow: a healthy one stays healthy, since unchanged, marked slow
    (Health(H, 4, 0, 1.0), SLOW, 2, 2, Health(H, 4, 0, 1.0, slow=True, last=SLOW)),
    # slow after a timeout: alive after all, healthy again since now
    (Health(F, 0, 1, 3.0), SLOW, 2, 2, Health(H, 0, 0, 5.0, slow=True, last=SLOW)),
    # slow while down: stays down (a drain continues), not a success toward rise
    (Health(D, 0, 2, 2.0, drain_since=2.0), SLOW, 2, 2,
     Health(D, 0, 2, 2.0, drain_since=2.0, slow=True, last=SLOW)),
    (Health(R, 1, 0, 4.0, dead=True), SLOW, 2, 2, Health(R, 1, 0, 4.0, dead=True, slow=True, last=SLOW)),
    # an answer in time ends slowness; a failure too (it then counts as the failure it is)
    (Health(H, 4, 0, 1.0, slow=True), OKR, 2, 2, Health(H, 5, 0, 1.0, last=OKR)),
    (Health(H, 4, 0, 1.0, slow=True), TIMEOUTR, 2, 3, Health(F, 0, 1, 5.0, last=TIMEOUTR)),
])
def test_every_transition_field_by_field(before: Health, result: ProbeResult, rise: int, fall: int,
                                         after: Health) -> None:
    """The whole state after one result at t=5, not only its name: ``since`` feeds the status
    page and the metrics, ``dead`` and ``drain_since`` decide between deletion and weight 0."""
    assert step(before, result, 5.0, rise, fall) == after


def test_initial_health_by_what_the_kernel_holds() -> None:
    assert initial(7.0) == initial(7.0, None) == Health(State.HEALTHY, since=7.0)
    assert initial(7.0, True) == Health(State.HEALTHY, since=7.0)
    assert initial(7.0, False) == Health(State.DOWN, since=7.0, dead=True)


@pytest.mark.parametrize(("h", "now", "weight"), [
    (Health(State.HEALTHY), 100.0, 3),
    (Health(State.FAILING, failures=1), 100.0, 3),
    (Health(State.DOWN, dead=True, drain_since=99.0), 100.0, None),  # dead: deleted, no drain
    (Health(State.DOWN), 100.0, None),  # not draining
    (Health(State.DOWN, drain_since=95.0), 100.0, 0),  # draining, 5 s of 10
    (Health(State.DOWN, drain_since=90.0), 100.0, None),  # drain over, exactly at 10 s
    (Health(State.RECOVERING, drain_since=95.0), 100.0, 0),  # not serving yet, still draining
])
def test_kernel_weight(h: Health, now: float, weight: int | None) -> None:
    assert kernel_weight(h, 3, now, 10.0) == weight


def test_all_slow_keeps_all_serving() -> None:
    """A brown-out of every apiserver: nobody is taken out, so no fail-open dance either."""
    vs = VirtualServer(Endpoint(ipaddress.ip_address("10.103.97.2"), 6443), tuple(
        RealServer(Endpoint(ipaddress.ip_address(f"10.0.0.{i}"), 6443)) for i in (1, 2, 3)))
    health = {(vs.endpoint, rs.endpoint): run(initial(0.0), [SLOW] * 5) for rs in vs.real_servers}
    d = decide([vs], health, {}, 10.0, 30.0)
    assert set(d.weights.values()) == {1} and not d.all_down


def test_states_and_outcomes_read_as_their_values() -> None:
    """What logs, metrics labels and /status print (enum.StrEnum's behaviour, on python3.9 too)."""
    assert str(State.HEALTHY) == "healthy" and f"{Outcome.SLOW}" == "slow"
    assert f"{Outcome.OK:>4}|{State.DOWN:<6}|" == "  ok|down  |"
    assert State.DOWN == "down" and Outcome("http_status") is Outcome.HTTP_STATUS


# -- graceful shutdowns ---------------------------------------------------------------------------


def test_a_shutdown_is_weight_0_until_its_connections_end_and_a_refusal_then_is_no_death() -> None:
    from lvscare.health import SHUTDOWN_DRAIN_MAX, kernel_weight

    h = step(Health(), ProbeResult(Outcome.SHUTDOWN, detail="stopped listening after GOAWAY"),
             10.0, 2, 2)
    assert (h.state, h.dead, h.shutdown, h.drain_since) == (State.DOWN, False, True, 10.0)
    h = step(h, ProbeResult(Outcome.REFUSED), 11.0, 2, 2)  # the listener is closed
    assert (h.state, h.dead, h.shutdown, h.drain_since) == (State.DOWN, False, True, 10.0)
    assert kernel_weight(h, 1, 30.0, 10.0, active=3) == 0  # past drain_period, connections: 0
    assert kernel_weight(h, 1, 40.0, 10.0, active=0) is None  # they ended: out
    assert kernel_weight(h, 1, 40.0, 10.0, active=None) is None  # not in the kernel: stays out
    assert kernel_weight(h, 1, 10.0 + SHUTDOWN_DRAIN_MAX, 10.0, active=3) is None  # bounded
    dead = step(h, ProbeResult(Outcome.TIMEOUT), 12.0, 2, 2)  # blackholed after all
    assert dead.dead and not dead.shutdown and kernel_weight(dead, 1, 12.0, 10.0, 3) is None
    sick = step(h, ProbeResult(Outcome.HTTP_STATUS, status=500), 12.0, 2, 2)
    assert not sick.dead and not sick.shutdown and kernel_weight(sick, 1, 19.0, 10.0, 3) == 0
    assert kernel_weight(sick, 1, 20.0, 10.0, 3) is None  # drain_period from the first drain
    back = step(step(h, ProbeResult(Outcome.OK), 13.0, 2, 2), ProbeResult(Outcome.OK), 14.0, 2, 2)
    assert back.state is State.HEALTHY and not back.shutdown


def test_a_killed_server_s_refusal_is_still_conclusive() -> None:
    h = step(Health(), ProbeResult(Outcome.REFUSED), 10.0, 2, 2)
    assert (h.state, h.dead, h.shutdown) == (State.DOWN, True, False)


def test_adopted_at_weight_0_stays_at_0_until_a_probe_says() -> None:
    from lvscare.health import initial, kernel_weight

    h = initial(5.0, True, draining=True)
    assert kernel_weight(h, 1, 500.0, 10.0, active=0) == 0
    assert kernel_weight(step(h, ProbeResult(Outcome.SHUTDOWN), 6.0, 2, 2), 1, 6.0, 10.0, 0) is None


def test_a_departed_member_ends_its_drain_only_when_silent_fall_times_in_a_row() -> None:
    """A member that left while serving drains until the kernel counts none of its connections;
    only silence (``fall`` unanswered probes in a row) ends that early, with its clients reset.
    A refusal or a reset comes from its own kernel (a closed listener at the end of a shutdown
    delay, or a process gone whose connections that kernel closes); a single late answer from a
    busy node is not a death."""
    h = departed(initial(100.0), 100.0)
    def weight(h: Health) -> int | None:
        return kernel_weight(h, 1, 200.0, 5.0, active=3)

    assert weight(h) == 0
    reset = ProbeResult(Outcome.RESET)
    for results in ([REFUSED] * 5, [reset] * 5, [TIMEOUT, OK, TIMEOUT, REFUSED, TIMEOUT]):
        after = run(h, results, fall=2)
        assert not after.dead and weight(after) == 0, results
    after = run(h, [OK, TIMEOUT, TIMEOUT], fall=2)
    assert after.dead and weight(after) is None
    assert not run(h, [OK] * 5).serving  # no answer brings it back
    assert kernel_weight(run(h, [REFUSED]), 1, 200.0, 5.0, active=0) is None  # its connections ended
