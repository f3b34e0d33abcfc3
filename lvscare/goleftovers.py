"""What the Go lvscare leaves on a node that moves to this one: found by exact shape, removed.

The Go lvscare (sealos ``lifecycle/staging/src/github.com/labring/lvscare``: ``pkg/route/route.go``,
``care/iptables.go``) creates for its one VIP, IPv4 only:

* route mode: ``VIP/32 via NODE_IP metric 50`` in the main table (protocol boot), NODE_IP being one
  of the node's own addresses;
* link mode: the ipset ``VIRTUAL-IP`` (hash:ip,port) holding ``VIP,tcp:PORT``; the nat chains
  ``VIRTUAL-SERVICES``, ``VIRTUAL-POSTROUTING`` and ``VIRTUAL-MARK-MASQ``, entered from OUTPUT and
  PREROUTING (comment ``virtual service portals``) and POSTROUTING (``virtual service postrouting
  rules``); first in filter OUTPUT, ``accept for all marked by lvscare`` (``-m mark --mark BIT -j
  ACCEPT``); and the empty ``VIRTUAL-CANARY`` chains its iptables monitor keeps in filter and nat.

Left in place, the link-mode rules mark and masquerade traffic to the VIP a second time, and the
filter ACCEPT lets marked packets past every OUTPUT rule a CNI or an admin adds after it. They are
removed only when they carry one of our VIPs: the route when its destination is the VIP and its
gateway is local; the chains only when the set holds nothing but our VIPs. A set that also holds
another VIP belongs to a Go lvscare still serving it: then only our entries leave the set.
Nothing else is touched. A failure is logged and skipped: a leftover must never stop the daemon.
"""

from __future__ import annotations

import asyncio
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path

from lvscare import rtnl
from lvscare.config import IPAddress, VirtualServer
from lvscare.log import get_logger
from lvscare.netlink import NetlinkError, Socket

log = get_logger("lvscare.vip")

GO_SET = "VIRTUAL-IP"
GO_CHAINS = ("VIRTUAL-SERVICES", "VIRTUAL-POSTROUTING", "VIRTUAL-MARK-MASQ")
GO_CANARY = "VIRTUAL-CANARY"
_PORTALS = ("-m", "comment", "--comment", "virtual service portals", "-j", "VIRTUAL-SERVICES")
GO_JUMPS = {
    ("OUTPUT", _PORTALS),
    ("PREROUTING", _PORTALS),
    ("POSTROUTING", ("-m", "comment", "--comment", "virtual service postrouting rules",
                     "-j", "VIRTUAL-POSTROUTING")),
}
GO_ACCEPT_COMMENT = "accept for all marked by lvscare"
GO_ROUTE_METRIC = 50
RT_TABLE_MAIN, RTPROT_BOOT, RTN_UNICAST, RTN_LOCAL = 254, 3, 1, 2
TIMEOUT = 10.0


# -- shapes (pure) -----------------------------------------------------------------------------


def set_entry(vs: VirtualServer) -> str:
    """The Go lvscare's ``VIRTUAL-IP`` entry for ``vs``, as ``ipset save`` prints it."""
    return f"{vs.endpoint.ip},tcp:{vs.endpoint.port}"


def set_members(saved: str) -> set[str]:
    """The entries in the output of ``ipset save VIRTUAL-IP``."""
    members = set()
    for line in saved.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "add" and words[1] == GO_SET:
            members.add(words[2])
    return members


def _is_go_accept(rule: tuple[str, ...]) -> bool:
    return (len(rule) == 10 and rule[:4] == ("-m", "comment", "--comment", GO_ACCEPT_COMMENT)
            and rule[4:7] == ("-m", "mark", "--mark") and rule[8:] == ("-j", "ACCEPT"))


def go_rules(table: str, listing: str) -> list[tuple[str, ...]]:
    """The Go lvscare's jumps (nat) and mark ACCEPT (filter) in ``iptables -t TABLE -S`` output,
    each as the ``-A CHAIN ...`` words of its line (``-D`` instead of ``-A`` deletes it)."""
    found = []
    for line in listing.splitlines():
        try:
            words = tuple(shlex.split(line))
        except ValueError:
            continue
        if len(words) < 3 or words[0] != "-A":
            continue
        chain, rule = words[1], words[2:]
        if (table == "nat" and (chain, rule) in GO_JUMPS) or (
                table == "filter" and chain == "OUTPUT" and _is_go_accept(rule)):
            found.append(words)
    return found


def chains(listing: str) -> set[str]:
    """The user chains declared (``-N``) in ``iptables -S`` output."""
    return {line.split()[1] for line in listing.splitlines()
            if line.startswith("-N ") and len(line.split()) == 2}


def is_go_route(r: rtnl.Route, vip: IPAddress) -> bool:
    """``VIP/32 via GW metric 50`` in the main table, as Go's ``netlink.RouteAdd`` writes it.
    (Whether GW is local is asked of the kernel.)"""
    return (r.dst == vip and r.dst_len == 32 and r.table == RT_TABLE_MAIN
            and r.protocol == RTPROT_BOOT and r.type == RTN_UNICAST
            and r.priority == GO_ROUTE_METRIC and r.gateway is not None)


# -- effects -----------------------------------------------------------------------------------


async def _run(*argv: str) -> tuple[int, str, str]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        return 127, "", exc.strerror or str(exc)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return 124, "", f"no answer in {TIMEOUT:g} s"
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace").strip()


async def _remove_routes(nl: Socket, vip: IPAddress) -> list[str]:
    removed = []
    for r in await rtnl.route_dump(nl, rtnl.family(vip)):
        if not is_go_route(r, vip):
            continue
        assert r.gateway is not None
        via = await rtnl.route_get(nl, r.gateway)
        if via is None or via.type != RTN_LOCAL:  # someone's real gateway: not the Go lvscare's
            continue
        try:
            await rtnl.route_delete(nl, rtnl.Route(r.family, r.dst, r.dst_len, r.table, r.protocol,
                                                   r.scope, r.type, None, None, r.priority, r.gateway))
        except NetlinkError as exc:
            log.warning("Go lvscare route left", vip=str(vip), gateway=str(r.gateway), error=str(exc))
            continue
        removed.append(f"route {vip}/32 via {r.gateway} metric {GO_ROUTE_METRIC}")
    return removed


async def _remove_iptables(binary: str) -> list[str]:
    name = Path(binary).name
    removed = []
    listings = {}
    for table in ("nat", "filter"):
        rc, out, _ = await _run(binary, "-w", "5", "-t", table, "-S")
        if rc != 0:  # a backend the kernel cannot serve (nft without nf_tables) holds nothing
            return []
        listings[table] = out
    for table, listing in listings.items():
        for words in go_rules(table, listing):
            rc, _, err = await _run(binary, "-w", "5", "-t", table, "-D", *words[1:])
            if rc == 0:
                removed.append(f"{name} -t {table} {shlex.join(words)}")
            else:
                log.warning("Go lvscare rule left", iptables=name, rule=shlex.join(words), error=err)
    present = [c for c in GO_CHAINS if c in chains(listings["nat"])]
    for chain in present:  # flushed first: they jump to each other
        await _run(binary, "-w", "5", "-t", "nat", "-F", chain)
    for chain in present:
        rc, _, err = await _run(binary, "-w", "5", "-t", "nat", "-X", chain)
        if rc == 0:
            removed.append(f"{name} -t nat chain {chain}")
        else:
            log.warning("Go lvscare chain left", iptables=name, chain=chain, error=err)
    for table, listing in listings.items():
        # -X refuses a chain with rules: a canary someone filled is not an empty canary.
        if GO_CANARY in chains(listing):
            rc, _, _ = await _run(binary, "-w", "5", "-t", table, "-X", GO_CANARY)
            if rc == 0:
                removed.append(f"{name} -t {table} chain {GO_CANARY}")
    return removed


async def _remove_link_mode(vss: Sequence[VirtualServer], binaries: Sequence[str]) -> list[str]:
    ours = {set_entry(vs) for vs in vss}
    ipset = shutil.which("ipset")
    if ipset is None:
        for binary in binaries:
            rc, out, _ = await _run(binary, "-w", "5", "-t", "nat", "-S")
            if rc == 0 and set(GO_CHAINS) & chains(out):
                log.warning("Go lvscare chains found but ipset is not installed: cannot tell "
                            "whether they serve our VIP; left", iptables=Path(binary).name)
                break
        return []
    rc, out, _ = await _run(ipset, "save", GO_SET)
    members = set_members(out) if rc == 0 else set()
    if not members & ours:
        return []
    others = members - ours
    removed = []
    if others:
        for entry in sorted(members & ours):
            rc, _, err = await _run(ipset, "del", GO_SET, entry)
            if rc == 0:
                removed.append(f"ipset {GO_SET} entry {entry}")
            else:
                log.warning("Go lvscare ipset entry left", entry=entry, error=err)
        log.info("Go lvscare chains left: its set still serves other VIPs", others=sorted(others))
        return removed
    for binary in binaries:
        removed += await _remove_iptables(binary)
    rc, _, err = await _run(ipset, "destroy", GO_SET)
    if rc == 0:
        removed.append(f"ipset {GO_SET}")
    else:
        log.warning("Go lvscare ipset left", set=GO_SET, error=err)
    return removed


async def remove(nl: Socket, vss: Sequence[VirtualServer], iptables: Sequence[str]) -> list[str]:
    """Remove the Go lvscare's objects that carry these VIPs, through ``nl`` and the given
    iptables binaries (every backend installed); return what was removed, and log it once."""
    v4 = [vs for vs in vss if vs.endpoint.ip.version == 4]
    removed: list[str] = []
    for vs in v4:
        try:
            removed += await _remove_routes(nl, vs.endpoint.ip)
        except NetlinkError as exc:
            log.warning("cannot look for Go lvscare routes", vip=str(vs.endpoint.ip), error=str(exc))
    if v4:
        removed += await _remove_link_mode(v4, iptables)
    if removed:
        log.info("Go lvscare leftovers removed", removed=removed)
    return removed
