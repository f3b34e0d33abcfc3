"""How processes on the node reach the VIP (``--mode``), the IPVS sysctls, and their removal.

IPVS catches a locally generated packet in LOCAL_OUT, after routing chose its source address. The
apiservers have no route back to the VIP, so that source must be an address they can answer:

* ``route``: a host route for the VIP whose preferred source is the node's own address (of type
  local, see below). No iptables, no interface. Works for remote real servers and for one on
  the node itself.
* ``link``: the VIP on a dummy interface (as kube-proxy's ``kube-ipvs0``), and source NAT of what
  IPVS sends to a real server, in our own nat chain. Works for local and remote real servers.
* ``none``: IPVS only.

Everything created here carries a mark of ours (route protocol 76, iptables comment ``lvscare``)
so that ``-C`` removes exactly that and nothing of anyone else's.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from lvscare import goleftovers, rtnl
from lvscare.config import DEFAULT_IFACE, IPAddress, VirtualServer
from lvscare.errors import KernelError
from lvscare.log import get_logger
from lvscare.netlink import NetlinkError, Socket

log = get_logger("lvscare.vip")

RTPROT_LVSCARE = 76  # unassigned in iproute2's rt_protos; marks routes that are ours
NAT_CHAIN = "LVSCARE-POSTROUTING"
IFA_F_NODAD = 0x02

# Each sysctl with the reason lvscare needs it.
SYSCTLS: dict[str, tuple[str, str]] = {
    "net/ipv4/vs/expire_nodest_conn": (
        "1", "connections to a deleted real server are dropped at their next packet, so clients "
             "reconnect at once instead of hanging until TCP gives up"),
    "net/ipv4/vs/expire_quiescent_template": (
        "1", "persistence templates of a weight-0 real server expire, so no new client sticks to it"),
    "net/ipv4/vs/conntrack": (
        "1", "link mode: netfilter must see IPVS connections to source-NAT them"),
}
SYSCTL_ROOT = Path("/proc/sys")


def sysctl_values() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in SYSCTLS:
        try:
            out[name] = (SYSCTL_ROOT / name).read_text().strip()
        except OSError:
            out[name] = None
    return out


def ensure_sysctls(modes: set[str]) -> list[str]:
    """Set the IPVS sysctls lvscare relies on; return the names it had to change.

    They exist only once ``ip_vs`` is loaded, so call this after IPVS was opened.
    """
    changed = []
    for name, (value, _reason) in SYSCTLS.items():
        if name.endswith("/conntrack") and "link" not in modes:
            continue
        path = SYSCTL_ROOT / name
        try:
            if path.read_text().strip() == value:
                continue
            path.write_text(value)
        except OSError as exc:
            raise KernelError(f"cannot set sysctl {name.replace('/', '.')}={value}: "
                              f"{exc.strerror}", exc.errno) from None
        changed.append(name.replace("/", "."))
    return changed


class KernelSysctls:
    """The sysctls of the node's kernel, as the daemon's ``effects.Sysctls``."""

    def ensure(self, modes: set[str]) -> list[str]:
        return ensure_sysctls(modes)

    def read(self) -> dict[str, str | None]:
        return sysctl_values()


def _prefixlen(ip: IPAddress) -> int:
    return 32 if ip.version == 4 else 128


# -- route mode ------------------------------------------------------------------------------
# The VIP becomes a local destination through a route of type "local" in the local table whose
# preferred source is the node's own address: ``local VIP dev lo src NODE_IP proto 76``.
# Measured in the test kernel against the Go lvscare's "VIP via NODE_IP" route: the same source
# address (so real servers can answer without any NAT), but it also works for a real server on
# the node itself, needs no gateway, and a packet that IPVS no longer takes (its real server was
# deleted) reaches the local stack, which answers it with a reset, so clients reconnect at once
# instead of retransmitting into a route that leads nowhere.

RT_TABLE_LOCAL = 255
RTN_LOCAL = 2
RT_SCOPE_HOST = 254


async def _node_source(nl: Socket, vs: VirtualServer, node_ip: IPAddress | None) -> IPAddress:
    """--ip, else the source address of the node's route to the first real server."""
    if node_ip is not None:
        return node_ip
    if not vs.real_servers:
        raise KernelError(f"route mode for {vs.endpoint}: no real server to route towards; "
                          "give --ip")
    target = vs.real_servers[0].endpoint.ip
    try:
        route = await rtnl.route_get(nl, target)
    except NetlinkError as exc:
        raise KernelError(f"route mode for {vs.endpoint}: no route to real server {target}: "
                          f"{os.strerror(exc.code)}; give --ip", exc.errno) from None
    if route is None or route.prefsrc is None:
        raise KernelError(f"route mode for {vs.endpoint}: cannot tell the node's address; "
                          "give --ip")
    return route.prefsrc


async def _our_routes(nl: Socket, vip: IPAddress) -> list[rtnl.Route]:
    # Table main (254) too: routes of earlier versions, to clean them up.
    return [r for r in await rtnl.route_dump(nl, rtnl.family(vip))
            if r.dst == vip and r.dst_len == _prefixlen(vip) and r.protocol == RTPROT_LVSCARE
            and r.table in (RT_TABLE_LOCAL, 254)]


async def ensure_route(nl: Socket, vs: VirtualServer, node_ip: IPAddress | None) -> bool:
    """Make the VIP's local route match; True if it changed anything."""
    vip = vs.endpoint.ip
    source = await _node_source(nl, vs, node_ip)
    current = await _our_routes(nl, vip)
    if len(current) == 1:
        r = current[0]
        if r.type == RTN_LOCAL and r.table == RT_TABLE_LOCAL and r.prefsrc == source:
            return False
    for r in current:
        await _delete_route(nl, r)
    try:
        lo = await rtnl.link_get(nl, "lo")
        assert lo is not None
        await rtnl.route_replace(nl, rtnl.Route(
            rtnl.family(vip), vip, _prefixlen(vip), RT_TABLE_LOCAL, RTPROT_LVSCARE, RT_SCOPE_HOST,
            RTN_LOCAL, source, lo.index, None))
    except NetlinkError as exc:
        raise KernelError(f"cannot add route for VIP {vip} (source {source}): "
                          f"{os.strerror(exc.code)}", exc.errno) from None
    log.info("route set", vip=str(vip), source=str(source))
    return True


async def _delete_route(nl: Socket, r: rtnl.Route) -> None:
    try:
        await rtnl.route_delete(nl, rtnl.Route(r.family, r.dst, r.dst_len, r.table, r.protocol,
                                               r.scope, r.type, None, None, r.priority))
    except NetlinkError as exc:
        if exc.code != errno.ESRCH:
            raise KernelError(f"cannot delete route for {r.dst}: "
                              f"{os.strerror(exc.code)}", exc.errno) from None


async def remove_route(nl: Socket, vip: IPAddress) -> bool:
    routes = await _our_routes(nl, vip)
    for r in routes:
        await _delete_route(nl, r)
    return bool(routes)


# -- link mode: dummy interface ------------------------------------------------------------------


# The alias (ip link set DEV alias …) that marks a dummy interface as lvscare's: -C deletes only
# what carries it. The default name is ours too, for interfaces made before the mark existed.
OWNER_ALIAS = "lvscare"


def owned(link: rtnl.Link, iface: str) -> bool:
    return link.kind == "dummy" and (
        link.alias == OWNER_ALIAS or (link.alias is None and iface == DEFAULT_IFACE))


async def ensure_dummy_address(nl: Socket, iface: str, vip: IPAddress) -> bool:
    changed = False
    try:
        link = await rtnl.link_get(nl, iface)
        if link is None:
            await rtnl.link_add_dummy(nl, iface)
            link = await rtnl.link_get(nl, iface)
            assert link is not None
            await rtnl.link_set_alias(nl, link.index, OWNER_ALIAS)
            changed = True
        if not link.flags & rtnl.IFF_UP:  # needed for an IPv6 VIP to be local
            await rtnl.link_up(nl, link.index)
            changed = True
        if not any(a.address == vip for a in await rtnl.addr_dump(nl, link.index)):
            await rtnl.addr_add(nl, link.index, vip, IFA_F_NODAD)
            changed = True
    except NetlinkError as exc:
        hint = " (is the dummy module available?)" if exc.code == errno.EOPNOTSUPP else ""
        raise KernelError(f"cannot put VIP {vip} on interface {iface}: "
                          f"{os.strerror(exc.code)}{hint}", exc.errno) from None
    if changed:
        log.info("VIP bound", vip=str(vip), iface=iface)
    return changed


async def remove_dummy_address(nl: Socket, iface: str, vip: IPAddress) -> bool:
    """Remove the VIP from ``iface`` and the interface if it is then empty, only if the interface
    is a dummy lvscare created: ``-C -i kube-ipvs0`` must leave kube-proxy's device alone."""
    changed = False
    try:
        link = await rtnl.link_get(nl, iface)
        if link is None:
            return False
        if not owned(link, iface):
            log.warning("interface not created by lvscare: left as it is", iface=iface, vip=str(vip),
                        kind=link.kind)
            return False
        if any(a.address == vip for a in await rtnl.addr_dump(nl, link.index)):
            await rtnl.addr_delete(nl, link.index, vip)
            changed = True
        remaining = [a for a in await rtnl.addr_dump(nl, link.index) if not a.address.is_link_local]
        if link.kind == "dummy" and not remaining:
            await rtnl.link_delete(nl, link.index)
            changed = True
    except NetlinkError as exc:
        raise KernelError(f"cannot remove VIP {vip} from {iface}: {os.strerror(exc.code)}",
                          exc.errno) from None
    return changed


# -- link mode: source NAT -------------------------------------------------------------------


def iptables_binaries(version: int) -> list[str]:
    """Every installed iptables backend (nft, legacy), each once."""
    base = "iptables" if version == 4 else "ip6tables"
    found = [shutil.which(n) for n in (f"{base}-nft", f"{base}-legacy", base)]
    unique: list[str] = []
    for path in found:
        if path and os.path.realpath(path) not in map(os.path.realpath, unique):
            unique.append(path)
    return unique


class Iptables:
    """Our nat rules, through the iptables binary of the backend the host already uses.

    A host whose kube-proxy and CNI wrote their rules with iptables-nft must not get ours from
    iptables-legacy (or the other way round): packets would cross two rule sets. As kube-proxy's
    iptables-wrapper does, we prefer the backend that holds more rules, then nft; a backend the
    kernel cannot write (nft without nf_tables) is skipped.
    """

    JUMP = ("-m", "comment", "--comment", "lvscare", "-j", NAT_CHAIN)

    def __init__(self, version: int) -> None:
        self.version = version
        self._binary: str | None = None

    def _available(self) -> list[str]:
        return iptables_binaries(self.version)

    @staticmethod
    def _run(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([binary, "-w", "5", "-t", "nat", *args], capture_output=True,
                              text=True, check=False)

    def _ranked(self) -> list[str]:
        def rules(binary: str) -> int:
            out = self._run(binary, "-S").stdout
            return sum(1 for line in out.splitlines() if line.startswith("-A"))

        available = self._available()
        return sorted(available, key=lambda b: (-rules(b), available.index(b)))

    def _has_chain(self, binary: str) -> bool:
        return self._run(binary, "-S", NAT_CHAIN).returncode == 0

    async def _listing(self, binary: str) -> list[str] | None:
        """``-S`` of our chain; None when the chain does not exist."""
        proc = await asyncio.create_subprocess_exec(
            binary, "-w", "5", "-t", "nat", "-S", NAT_CHAIN,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        out, _ = await proc.communicate()
        return out.decode().strip().splitlines() if proc.returncode == 0 else None

    def _choose(self) -> str:
        """The binary holding our chain, or the best one that can create it."""
        if self._binary is not None:
            return self._binary
        errors = []
        for binary in self._ranked():
            if self._has_chain(binary):
                self._binary = binary
                return binary
            created = self._run(binary, "-N", NAT_CHAIN)
            if created.returncode == 0:
                self._binary = binary
                return binary
            errors.append(f"{Path(binary).name}: {created.stderr.strip()}")
        base = "iptables" if self.version == 4 else "ip6tables"
        raise KernelError(f"link mode needs {base} with a nat table the kernel supports"
                          + (f" ({'; '.join(errors)})" if errors else ": none installed"))

    async def _exec(self, binary: str, *args: str, check: bool = True) -> bool:
        proc = await asyncio.create_subprocess_exec(
            binary, "-w", "5", "-t", "nat", *args,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        if proc.returncode != 0 and check:
            raise KernelError(f"{Path(binary).name} -t nat {' '.join(args)}: "
                              f"{err.decode().strip()}")
        return proc.returncode == 0

    @staticmethod
    def rule(vs: VirtualServer) -> list[str]:
        vip = vs.endpoint.ip
        return ["-m", "comment", "--comment", f"lvscare {vs.endpoint}",
                "-m", "ipvs", "--vaddr", f"{vip}/{_prefixlen(vip)}",
                "--vport", str(vs.endpoint.port), "--vdir", "ORIGINAL", "-j", "MASQUERADE"]

    async def ensure(self, vs: VirtualServer) -> bool:
        binary = await asyncio.to_thread(self._choose)
        changed = False
        # First in POSTROUTING, so that a CNI's RETURN for node traffic cannot skip our NAT.
        if not await self._exec(binary, "-C", "POSTROUTING", *self.JUMP, check=False):
            # A reloaded firewall (firewalld, "iptables -t nat -F; -X") takes the chain with the
            # jump: create it again. "Chain already exists" is the usual answer, and harmless.
            await self._exec(binary, "-N", NAT_CHAIN, check=False)
            await self._exec(binary, "-I", "POSTROUTING", "1", *self.JUMP)
            changed = True
        if not await self._exec(binary, "-C", NAT_CHAIN, *self.rule(vs), check=False):
            await self._exec(binary, "-A", NAT_CHAIN, *self.rule(vs))
            changed = True
        if changed:
            log.info("source NAT set", vip=str(vs.endpoint), iptables=Path(binary).name)
        return changed

    async def remove(self, vs: VirtualServer) -> bool:
        """Remove our rule for ``vs`` from every backend that has our chain."""
        changed = False
        for binary in self._available():
            if await self._listing(binary) is None:
                continue
            while await self._exec(binary, "-D", NAT_CHAIN, *self.rule(vs), check=False):
                changed = True
            listing = await self._listing(binary) or []
            if len(listing) <= 1:  # only "-N LVSCARE-POSTROUTING": no other VIP of ours
                while await self._exec(binary, "-D", "POSTROUTING", *self.JUMP, check=False):
                    pass
                await self._exec(binary, "-X", NAT_CHAIN, check=False)
                changed = True
        return changed


# -- entry points ------------------------------------------------------------------------------


class Access:
    """Sets up and removes, per virtual server, what its mode needs. Holds one rtnetlink socket."""

    def __init__(self, iface: str, node_ip: IPAddress | None) -> None:
        self.iface = iface
        self.node_ip = node_ip
        self._nl: Socket | None = None
        self._iptables: dict[int, Iptables] = {}

    async def open(self) -> Access:
        try:
            self._nl = rtnl.open_socket()
        except OSError as exc:
            raise KernelError(f"cannot open rtnetlink: {exc.strerror or exc}", exc.errno) from None
        return self

    def close(self) -> None:
        if self._nl is not None:
            self._nl.close()
            self._nl = None

    @property
    def nl(self) -> Socket:
        assert self._nl is not None, "Access.open() first"
        return self._nl

    async def __aenter__(self) -> Access:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def iptables(self, version: int) -> Iptables:
        return self._iptables.setdefault(version, Iptables(version))

    async def ensure(self, vs: VirtualServer, *, iptables: bool = True) -> bool:
        """Make the VIP reachable as ``vs.mode`` says; True if anything had to change.

        ``iptables=False`` checks only what netlink can check (route, address, link: two or
        three dumps, as cheap as reading the IPVS table), not the NAT rule (a process each)."""
        vip = vs.endpoint.ip
        changed = False
        if vs.mode == "route":
            changed |= await ensure_route(self.nl, vs, self.node_ip)
        elif vs.mode == "link":
            changed |= await ensure_dummy_address(self.nl, self.iface, vip)
            if iptables:
                changed |= await self.iptables(vip.version).ensure(vs)
        return changed

    async def remove_go_leftovers(self, vss: Sequence[VirtualServer]) -> list[str]:
        """Remove what the Go lvscare left for these VIPs (``goleftovers.py``)."""
        return await goleftovers.remove(self.nl, vss, await asyncio.to_thread(iptables_binaries, 4))

    async def remove(self, vs: VirtualServer) -> bool:
        """Remove what any mode created for this VIP: -C works whatever --mode was used."""
        vip = vs.endpoint.ip
        changed = await remove_route(self.nl, vip)
        changed |= await remove_dummy_address(self.nl, self.iface, vip)
        changed |= await self.iptables(vip.version).remove(vs)
        return changed
