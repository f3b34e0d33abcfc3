"""``lvscare care`` one-shot actions: program the rules (``--run-once``) and remove them (``-C``).

The long-running daemon (``daemon.py``) uses the same ``reconcile``.
"""

from __future__ import annotations

from collections.abc import Iterable

from lvscare.config import Config
from lvscare.effects import IpvsTable, VipAccess
from lvscare.errors import KernelError
from lvscare.ipvs import IPVS
from lvscare.log import get_logger
from lvscare.plan import (
    Op,
    ServiceKey,
    Table,
    describe_op,
    desired_table,
    diff,
    op_key,
    run_once_weights,
    service_key,
)
from lvscare.tls import check_certificates
from lvscare.vip import Access, ensure_sysctls

log = get_logger("lvscare")

ATTEMPTS = 3


async def reconcile(ipvs: IpvsTable, desired: Table, owned: Iterable[ServiceKey]) -> list[Op]:
    """Bring the owned services to ``desired``; return the operations that were applied."""
    ops, _ = await reconcile_observed(ipvs, desired, owned)
    return ops


async def reconcile_observed(ipvs: IpvsTable, desired: Table,
                             owned: Iterable[ServiceKey]) -> tuple[list[Op], Table]:
    """``reconcile``, also returning the kernel's table as last read (for statistics).

    If someone changes the table between our read and our write (an operation fails with EEXIST
    or ESRCH), read again and re-plan; give up after a few rounds with the kernel's reason.
    """
    owned = set(owned)
    applied: list[Op] = []
    for _ in range(ATTEMPTS):
        kernel = await ipvs.read(owned | set(desired))
        ops = diff(desired, kernel, owned)
        if not ops:
            return applied, kernel
        result = await ipvs.apply(ops)
        applied += result.applied
        for op in result.applied:
            log.debug("ipvs", change=describe_op(op))
        if not result.failed:
            return applied, kernel
        for failure in result.failed:
            log.warning("ipvs change failed", change=str(failure))
    failure = result.failed[0]
    raise KernelError(f"cannot {failure}", failure.errno)


async def run_once(cfg: Config) -> list[Op]:
    """Create the virtual servers with every real server at its configured weight, then exit. A
    virtual server the kernel already holds keeps the daemon's verdicts (``run_once_weights``).

    The probes' certificates are read first, as the daemon would: a file the daemon will refuse
    fails here, before any rule exists without a daemon able to keep it healthy."""
    check_certificates([vs.health for vs in cfg.virtual_servers])
    async with IPVS() as ipvs:
        changed = ensure_sysctls({vs.mode for vs in cfg.virtual_servers})
        if changed:
            log.info("sysctls set", names=changed)
        keys = [service_key(vs) for vs in cfg.virtual_servers]
        weights = run_once_weights(cfg.virtual_servers, await ipvs.read(keys))
        ops = await reconcile(ipvs, desired_table(cfg.virtual_servers, weights), keys)
        async with Access(cfg.iface, cfg.ip) as access:
            await access.remove_go_leftovers(cfg.virtual_servers)
            for vs in cfg.virtual_servers:
                await access.ensure(vs)
    for vs in cfg.virtual_servers:
        out = [str(rs.endpoint) for rs in vs.real_servers
               if weights.get((vs.endpoint, rs.endpoint), 0) is None]
        log.info("virtual server ready", vs=str(vs.endpoint), mode=vs.mode,
                 real_servers=[str(rs.endpoint) for rs in vs.real_servers if str(rs.endpoint) not in out],
                 changes=sum(1 for op in ops if op_key(op) == service_key(vs)),
                 **({"left_out_as_the_daemon_left_them": out} if out else {}))
    return ops


async def clean(cfg: Config) -> list[Op]:
    """Delete our virtual servers and what their mode created, and what the Go lvscare created for
    the same VIPs; nothing else."""
    async with IPVS() as ipvs, Access(cfg.iface, cfg.ip) as access:
        await access.remove_go_leftovers(cfg.virtual_servers)
        return await remove_all(cfg, ipvs, access)


async def remove_all(cfg: Config, ipvs: IpvsTable, access: VipAccess) -> list[Op]:
    """``-C``'s work, also done by a daemon stopping with ``--clean-on-exit``."""
    keys = [service_key(vs) for vs in cfg.virtual_servers]
    ops = await reconcile(ipvs, {}, keys)
    for vs in cfg.virtual_servers:
        removed = await access.remove(vs)
        log.info("virtual server removed", vs=str(vs.endpoint),
                 ipvs=any(op_key(op) == service_key(vs) for op in ops), access=removed)
    return ops
