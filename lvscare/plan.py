"""Desired IPVS table and the minimal list of operations that makes the kernel match it. Pure.

The reconciler only ever looks at the virtual servers it owns (``owned``): a service in the kernel
that is not in that set is invisible here, so other programs' rules cannot be touched by a plan.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Union

from lvscare.config import Endpoint, RsKey, VirtualServer

FWD_MASQ = 0


@dataclass(frozen=True, order=True)
class ServiceKey:
    """What identifies an IPVS virtual service in the kernel."""

    endpoint: Endpoint
    protocol: int = socket.IPPROTO_TCP

    def __str__(self) -> str:
        proto = "TCP" if self.protocol == socket.IPPROTO_TCP else "UDP"
        return f"{proto} {self.endpoint}"


@dataclass(frozen=True)
class Service:
    key: ServiceKey
    scheduler: str
    flags: int = 0
    timeout: int = 0


@dataclass(frozen=True)
class Dest:
    endpoint: Endpoint
    weight: int
    fwd_method: int = FWD_MASQ
    # Read-only kernel statistics; ignored when comparing.
    active_conns: int = field(default=0, compare=False)
    inactive_conns: int = field(default=0, compare=False)


@dataclass
class ServiceState:
    service: Service
    dests: dict[Endpoint, Dest] = field(default_factory=dict)


Table = dict[ServiceKey, ServiceState]


@dataclass(frozen=True)
class AddService:
    service: Service


@dataclass(frozen=True)
class SetService:
    service: Service


@dataclass(frozen=True)
class DelService:
    key: ServiceKey


@dataclass(frozen=True)
class AddDest:
    key: ServiceKey
    dest: Dest


@dataclass(frozen=True)
class SetDest:
    key: ServiceKey
    dest: Dest


@dataclass(frozen=True)
class DelDest:
    key: ServiceKey
    endpoint: Endpoint


# typing.Union: a runtime alias, evaluated by the nodes' python3 >= 3.9 too.
Op = Union[AddService, SetService, DelService, AddDest, SetDest, DelDest]


def op_key(op: Op) -> ServiceKey:
    """The virtual server an operation touches."""
    return op.service.key if isinstance(op, (AddService, SetService)) else op.key


def describe_op(op: Op) -> str:
    """An operation in words, for logs and errors."""
    if isinstance(op, (AddService, SetService)):
        verb = "add" if isinstance(op, AddService) else "update"
        return f"{verb} virtual server {op.service.key} ({op.service.scheduler})"
    if isinstance(op, DelService):
        return f"delete virtual server {op.key}"
    if isinstance(op, (AddDest, SetDest)):
        verb = "add" if isinstance(op, AddDest) else "set"
        return f"{verb} real server {op.dest.endpoint} weight {op.dest.weight} on {op.key}"
    if isinstance(op, DelDest):
        return f"delete real server {op.endpoint} from {op.key}"
    raise AssertionError(op)


def service_key(vs: VirtualServer) -> ServiceKey:
    return ServiceKey(vs.endpoint)


def desired_table(
    virtual_servers: Iterable[VirtualServer],
    weights: Mapping[RsKey, int | None] | None = None,
) -> Table:
    """The table we want. ``weights[(vs, rs)]`` overrides a real server's configured weight;
    ``None`` there means the real server must not be in the kernel (the health checker removed it).
    """
    weights = weights or {}
    table: Table = {}
    for vs in virtual_servers:
        key = service_key(vs)
        state = ServiceState(Service(key, vs.scheduler))
        for rs in vs.real_servers:
            weight = weights.get((vs.endpoint, rs.endpoint), rs.weight)
            if weight is None:
                continue
            state.dests[rs.endpoint] = Dest(rs.endpoint, weight)
        table[key] = state
    return table


def run_once_weights(virtual_servers: Iterable[VirtualServer], kernel: Table) -> dict[RsKey, int | None]:
    """``--run-once``'s weights (for ``desired_table``), given the kernel's table.

    A virtual server the kernel does not hold (a boot, a first join) gets every real server at its
    configured weight: kubelet needs the VIP before any daemon runs. One it holds was last kept by
    a daemon whose pod is being recreated (an upgrade, a rollout): its verdicts stand, so a real
    server it removed stays out and one it drained stays at weight 0, until the new daemon's
    probes say otherwise (the others take their configured weight). Otherwise every pod
    recreation would re-admit a dead apiserver."""
    weights: dict[RsKey, int | None] = {}
    for vs in virtual_servers:
        existing = kernel.get(service_key(vs))
        if existing is None:
            continue
        for rs in vs.real_servers:
            dest = existing.dests.get(rs.endpoint)
            if dest is None or dest.weight == 0:  # removed or drained: stays so
                weights[(vs.endpoint, rs.endpoint)] = None if dest is None else 0
    return weights


def diff(desired: Table, kernel: Table, owned: Iterable[ServiceKey]) -> list[Op]:
    """Operations that turn ``kernel`` into ``desired`` for the services in ``owned``.

    Owned services absent from ``desired`` are deleted (a VS dropped from the config, or ``-C``).
    An already-correct table yields no operation at all. Adds come after deletes within a service so
    that a real server changing forwarding method never collides with itself.
    """
    ops: list[Op] = []
    for key in sorted(set(owned) | set(desired)):
        want = desired.get(key)
        have = kernel.get(key)
        if want is None:
            if have is not None:
                ops.append(DelService(key))
            continue
        if have is None:
            ops.append(AddService(want.service))
            ops.extend(AddDest(key, d) for _, d in sorted(want.dests.items()))
            continue
        if have.service != want.service:
            ops.append(SetService(want.service))
        for endpoint in sorted(set(have.dests) - set(want.dests)):
            ops.append(DelDest(key, endpoint))
        for endpoint, dest in sorted(want.dests.items()):
            current = have.dests.get(endpoint)
            if current is None:
                ops.append(AddDest(key, dest))
            elif current != dest:
                ops.append(SetDest(key, dest))
    return ops
