"""The control plane's members, from the ``kubernetes`` Endpoints object, and what they make of
each virtual server's real servers. Pure functions only.

The rules:

* An answer is used only if it is whole: valid JSON of an Endpoints object with at least one
  ready address and a port (the one named ``https``; the only one if there is one). Anything else
  raises ``Unusable`` and the caller keeps what it has.
* Each virtual server takes the members of its own address family (a dual-stack cluster lists
  both). A family with no member leaves that virtual server's list as it is: never empty.
* After the first usable answer the members are the truth: a seed that is no longer a member goes.
  A member keeps the weight its seed had (``--rs``/``weight``), else 1.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from lvscare.config import Config, Endpoint, RealServer, RsKey, VirtualServer, parse_endpoint
from lvscare.errors import UserError

STATE_VERSION = 1


class Unusable(Exception):
    """An answer that must not change anything; ``reason`` is a metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def parse_endpoints(body: bytes) -> tuple[Endpoint, ...]:
    """The ready addresses and the https port of a ``kubernetes`` Endpoints object, sorted."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting: RecursionError
        raise Unusable("decode", "the answer is not JSON") from None
    if not isinstance(doc, dict) or doc.get("kind", "Endpoints") != "Endpoints":
        raise Unusable("decode", "the answer is not an Endpoints object")
    subsets = doc.get("subsets") or []
    if not isinstance(subsets, list):
        raise Unusable("decode", "subsets is not a list")
    found: set[Endpoint] = set()
    for subset in subsets:
        if not isinstance(subset, dict):
            raise Unusable("decode", "a subset is not an object")
        ports = subset.get("ports") or []
        addresses = subset.get("addresses") or []
        if not isinstance(ports, list) or not isinstance(addresses, list):
            raise Unusable("decode", "ports or addresses is not a list")
        named = [p for p in ports if isinstance(p, dict) and p.get("name") == "https"]
        chosen = named or (ports if len(ports) == 1 else [])
        if not chosen:
            continue
        port = chosen[0].get("port") if isinstance(chosen[0], dict) else None
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise Unusable("decode", f"port {port!r} is not a port")
        for address in addresses:
            ip = address.get("ip") if isinstance(address, dict) else None
            try:
                parsed = ipaddress.ip_address(str(ip))
            except ValueError:
                raise Unusable("decode", f"address {ip!r} is not an IP address") from None
            if parsed.is_unspecified or parsed.is_multicast or parsed.is_loopback:
                raise Unusable("decode", f"address {ip} cannot be an apiserver's")
            found.add(Endpoint(parsed, port))
    if not found:
        raise Unusable("empty", "no ready address with an https port")
    return tuple(sorted(found))


def real_servers_for(vs: VirtualServer, members: Iterable[Endpoint],
                     weights: Mapping[Endpoint, int]) -> tuple[RealServer, ...] | None:
    """The real servers ``members`` give ``vs``; None when none is of its address family."""
    mine = sorted(m for m in members if m.ip.version == vs.endpoint.ip.version)
    if not mine:
        return None
    return tuple(RealServer(m, weights.get(m, 1)) for m in mine)


def apply_members(cfg: Config, members: Iterable[Endpoint],
                  weights: Mapping[Endpoint, int]) -> Config:
    """``cfg`` with each virtual server's real servers replaced by the members of its family."""
    members = tuple(members)
    out = []
    for vs in cfg.virtual_servers:
        rss = real_servers_for(vs, members, weights)
        out.append(vs if rss is None else replace(vs, real_servers=rss))
    return replace(cfg, virtual_servers=tuple(out))


def keep_departed_until_replaced(new: Config, old: Config, serving: Collection[RsKey]
                                 ) -> tuple[Config, frozenset[RsKey]]:
    """``new`` with the departed real servers that still serve kept, for each virtual server
    none of whose members serves yet; and the keys kept.

    Members arrive one at a time (the lease reconciler publishes them so at start) and a new one
    serves only after ``rise`` good probes: taking out the last serving real servers before then
    would leave the virtual server on fail-open, or empty. They go once a member serves."""
    out, kept = [], set()
    for vs in new.virtual_servers:
        if any((vs.endpoint, rs.endpoint) in serving for rs in vs.real_servers):
            out.append(vs)
            continue
        before = next((v for v in old.virtual_servers if v.endpoint == vs.endpoint), None)
        present = {rs.endpoint for rs in vs.real_servers}
        stay = tuple(rs for rs in (before.real_servers if before else ())
                     if rs.endpoint not in present and (vs.endpoint, rs.endpoint) in serving)
        kept |= {(vs.endpoint, rs.endpoint) for rs in stay}
        out.append(replace(vs, real_servers=vs.real_servers + stay) if stay else vs)
    return replace(new, virtual_servers=tuple(out)), frozenset(kept)


def drain_departed(new: Config, old: Config, draining: Collection[RsKey]
                   ) -> tuple[Config, frozenset[RsKey]]:
    """``new`` with the real servers of ``old`` that left the members but are still ``draining``
    (serving, or held at weight 0 while their connections finish) kept; and the keys kept.

    Deleting a member the moment it leaves resets every client it still serves, though a
    kube-apiserver leaves the Endpoints at SIGTERM and keeps serving through its shutdown delay."""
    out, kept = [], set()
    for vs in new.virtual_servers:
        before = next((v for v in old.virtual_servers if v.endpoint == vs.endpoint), None)
        present = {rs.endpoint for rs in vs.real_servers}
        stay = tuple(rs for rs in (before.real_servers if before else ())
                     if rs.endpoint not in present and (vs.endpoint, rs.endpoint) in draining)
        kept |= {(vs.endpoint, rs.endpoint) for rs in stay}
        out.append(replace(vs, real_servers=vs.real_servers + stay) if stay else vs)
    return replace(new, virtual_servers=tuple(out)), frozenset(kept)


def seed_weights(cfg: Config) -> dict[Endpoint, int]:
    return {rs.endpoint: rs.weight for vs in cfg.virtual_servers for rs in vs.real_servers}


# -- the state file ------------------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    cluster: str  # KubeConfig.cluster_identity()
    server: str
    read_at: float  # wall clock
    members: tuple[Endpoint, ...]


def encode_state(state: State) -> bytes:
    return (json.dumps({
        "version": STATE_VERSION, "cluster": state.cluster, "server": state.server,
        "readAt": state.read_at,
        "readAtText": datetime.datetime.fromtimestamp(state.read_at, datetime.UTC)
        .strftime("%Y-%m-%dT%H:%M:%SZ"),
        "members": [str(m) for m in state.members]}, indent=2) + "\n").encode()


def decode_state(data: bytes) -> State:
    """Raises Unusable("state", …) for anything but a whole state file."""
    try:
        doc: Any = json.loads(data)
        if doc.get("version") != STATE_VERSION:
            raise Unusable("state", f"version {doc.get('version')!r}")
        members = tuple(parse_endpoint(str(m), "member") for m in doc["members"])
        if not members:
            raise Unusable("state", "no members")
        return State(str(doc["cluster"]), str(doc["server"]), float(doc["readAt"]), members)
    except (ValueError, KeyError, TypeError, AttributeError, UserError, RecursionError) as exc:
        raise Unusable("state", f"not a state file ({type(exc).__name__})") from None
