from __future__ import annotations

import ipaddress
import socket

from hypothesis import given
from hypothesis import strategies as st

from lvscare.config import Endpoint, RealServer, VirtualServer
from lvscare.plan import (
    AddDest,
    AddService,
    DelDest,
    DelService,
    Dest,
    Service,
    ServiceKey,
    ServiceState,
    SetDest,
    SetService,
    Table,
    desired_table,
    diff,
    run_once_weights,
)


def ep(text: str) -> Endpoint:
    host, _, port = text.rpartition(":")
    return Endpoint(ipaddress.ip_address(host.strip("[]")), int(port))


VS = VirtualServer(ep("10.103.97.2:6443"),
                   tuple(RealServer(ep(f"10.0.0.{i}:6443")) for i in (1, 2, 3)))
KEY = ServiceKey(VS.endpoint)
FOREIGN = ServiceKey(ep("10.96.0.1:443"))


def apply(table: Table, ops: list) -> Table:  # type: ignore[type-arg]
    """A model of the kernel, to check that plans converge."""
    out = {k: ServiceState(v.service, dict(v.dests)) for k, v in table.items()}
    for op in ops:
        match op:
            case AddService(s):
                assert s.key not in out
                out[s.key] = ServiceState(s)
            case SetService(s):
                out[s.key].service = s
            case DelService(k):
                del out[k]
            case AddDest(k, d):
                assert d.endpoint not in out[k].dests
                out[k].dests[d.endpoint] = d
            case SetDest(k, d):
                out[k].dests[d.endpoint] = d
            case DelDest(k, e):
                del out[k].dests[e]
    return out


def test_empty_kernel_gets_everything() -> None:
    ops = diff(desired_table([VS]), {}, [KEY])
    assert ops[0] == AddService(Service(KEY, "rr"))
    assert [type(o) for o in ops[1:]] == [AddDest] * 3


def test_correct_table_gives_no_ops() -> None:
    want = desired_table([VS])
    assert diff(want, apply({}, diff(want, {}, [KEY])), [KEY]) == []


def test_foreign_services_are_invisible() -> None:
    kernel = {FOREIGN: ServiceState(Service(FOREIGN, "wlc"), {ep("1.1.1.1:1"): Dest(ep("1.1.1.1:1"), 1)})}
    ops = diff(desired_table([VS]), kernel, [KEY])
    assert all(getattr(o, "key", getattr(getattr(o, "service", None), "key", None)) == KEY
               for o in ops)
    # Cleaning our VS leaves the foreign one alone too.
    assert diff({}, kernel, [KEY]) == []


def test_weights_unhealthy_and_prune() -> None:
    kernel = apply({}, diff(desired_table([VS]), {}, [KEY]))
    kernel[KEY].dests[ep("10.0.0.9:6443")] = Dest(ep("10.0.0.9:6443"), 1)  # stale master
    weights = {(VS.endpoint, ep("10.0.0.1:6443")): 0, (VS.endpoint, ep("10.0.0.2:6443")): None}
    ops = diff(desired_table([VS], weights), kernel, [KEY])
    assert set(ops) == {
        DelDest(KEY, ep("10.0.0.9:6443")),
        DelDest(KEY, ep("10.0.0.2:6443")),
        SetDest(KEY, Dest(ep("10.0.0.1:6443"), 0)),
    }


def test_scheduler_change_is_a_set_not_a_recreate() -> None:
    kernel = apply({}, diff(desired_table([VS]), {}, [KEY]))
    wrr = VirtualServer(VS.endpoint, VS.real_servers, scheduler="wrr")
    assert diff(desired_table([wrr]), kernel, [KEY]) == [SetService(Service(KEY, "wrr"))]


def test_stats_do_not_count_as_a_difference() -> None:
    kernel = apply({}, diff(desired_table([VS]), {}, [KEY]))
    for e, d in list(kernel[KEY].dests.items()):
        kernel[KEY].dests[e] = Dest(e, d.weight, d.fwd_method, active_conns=7, inactive_conns=3)
    assert diff(desired_table([VS]), kernel, [KEY]) == []


def test_mixed_families_sort() -> None:
    v6 = VirtualServer(ep("[fd00::1]:6443"), (RealServer(ep("[fd00::2]:6443")),))
    ops = diff(desired_table([VS, v6]), {}, [KEY, ServiceKey(v6.endpoint)])
    assert len(ops) == 6


addresses = st.integers(1, 6).map(lambda i: ep(f"10.0.0.{i}:6443"))
dest_maps = st.dictionaries(addresses, st.tuples(st.integers(0, 3), st.sampled_from([0, 3])))


def _state(scheduler: str, dests: dict[Endpoint, tuple[int, int]]) -> ServiceState:
    return ServiceState(Service(KEY, scheduler),
                        {e: Dest(e, w, f) for e, (w, f) in dests.items()})


@given(st.none() | st.tuples(st.sampled_from(["rr", "wrr"]), dest_maps),
       st.none() | st.tuples(st.sampled_from(["rr", "wrr"]), dest_maps))
def test_any_plan_converges_in_one_round(kernel_spec, want_spec) -> None:  # type: ignore[no-untyped-def]
    foreign = {FOREIGN: ServiceState(Service(FOREIGN, "wlc"))}
    kernel = dict(foreign)
    if kernel_spec:
        kernel[KEY] = _state(*kernel_spec)
    want = {KEY: _state(*want_spec)} if want_spec else {}
    after = apply(kernel, diff(want, kernel, [KEY]))
    assert after.get(FOREIGN) == foreign[FOREIGN]
    assert after.get(KEY) == want.get(KEY)
    assert diff(want, after, [KEY]) == []


def test_run_once_keeps_the_daemons_verdicts_on_a_table_it_finds() -> None:
    """A recreated pod's --run-once must not put back what the daemon removed or drained; a
    booted node (no virtual server) gets everything."""
    vs = (VirtualServer(VS.endpoint, tuple(RealServer(ep(f"10.0.0.{i}:6443")) for i in (1, 2, 3, 4))),)
    assert run_once_weights(vs, {}) == {}
    kernel = desired_table(vs)
    key = next(iter(kernel))
    a, b, c, d = (ep(f"10.0.0.{i}:6443") for i in (1, 2, 3, 4))
    del kernel[key].dests[b]  # removed by the daemon (dead)
    kernel[key].dests[c] = Dest(c, 0)  # drained by the daemon (bad status)
    kernel[key].dests[d] = Dest(d, 7)  # healthy, another weight than configured
    weights = run_once_weights(vs, kernel)
    vip = vs[0].endpoint
    assert weights == {(vip, b): None, (vip, c): 0}
    table = desired_table(vs, weights)
    assert {e: dst.weight for e, dst in table[key].dests.items()} == {a: 1, c: 0, d: 1}


def test_operations_in_words() -> None:
    """The log lines of every change (docs/troubleshooting.md quotes them)."""
    from lvscare.plan import describe_op

    udp = ServiceKey(ep("10.103.97.2:53"), socket.IPPROTO_UDP)
    d = Dest(ep("10.0.0.1:6443"), 3)
    assert [describe_op(op) for op in (
        AddService(Service(KEY, "rr")), SetService(Service(KEY, "wlc")), DelService(KEY),
        AddDest(KEY, d), SetDest(KEY, Dest(d.endpoint, 0)), DelDest(KEY, d.endpoint),
        DelService(udp),
    )] == [
        "add virtual server TCP 10.103.97.2:6443 (rr)",
        "update virtual server TCP 10.103.97.2:6443 (wlc)",
        "delete virtual server TCP 10.103.97.2:6443",
        "add real server 10.0.0.1:6443 weight 3 on TCP 10.103.97.2:6443",
        "set real server 10.0.0.1:6443 weight 0 on TCP 10.103.97.2:6443",
        "delete real server 10.0.0.1:6443 from TCP 10.103.97.2:6443",
        "delete virtual server UDP 10.103.97.2:53",
    ]
    assert str(ServiceKey(ep("[fd00::2]:6443"))) == "TCP [fd00::2]:6443"


def test_every_service_is_planned_whatever_comes_before_it() -> None:
    """Services are planned in order; one with nothing to do (owned, absent everywhere) or created
    whole must not end the planning of those after it."""
    gone = ServiceKey(ep("10.0.0.1:1"))  # sorts first
    new = ServiceKey(ep("10.0.0.2:1"))
    want = desired_table([VS])
    ops = diff({new: ServiceState(Service(new, "rr")), **want}, {}, [gone, new, KEY])
    assert AddService(Service(new, "rr")) in ops and AddService(Service(KEY, "rr")) in ops


def test_run_once_keeps_verdicts_in_every_virtual_server() -> None:
    first = VirtualServer(ep("10.0.0.9:1"), (RealServer(ep("10.0.1.1:1")),))  # sorts first, absent
    kernel = desired_table([VS])
    del kernel[KEY].dests[ep("10.0.0.2:6443")]
    assert run_once_weights([first, VS], kernel) == {(VS.endpoint, ep("10.0.0.2:6443")): None}
