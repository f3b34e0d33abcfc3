"""One daemon per virtual server on a node: a lock that ends with its process.

A static pod and the DaemonSet on one node, or a ``lvscare care`` started by hand next to the pod,
would otherwise both write the same virtual server, each undoing the other's view of health. The
lock is an abstract unix socket named for the virtual server, bound in the node's network
namespace, which every hostNetwork pod and every process on the node shares. The kernel releases
it when the process ends, however it ends (SIGKILL, OOM), so there is no stale lock file, no
hostPath to mount and no capability needed.

An abstract name has no permissions: any process on the node can bind it first. So a holder
counts only if it is an lvscare that could manage IPVS: the lock listens, and a contender that
finds the name taken connects and reads the holder's credentials from the kernel
(``SO_PEERCRED``, taken when the holder called ``listen``). It must be root (uid 0 as this process
sees it) and, where its process is visible, have CAP_NET_ADMIN. Anything else (a user's process,
an unprivileged container, a socket that does not listen) is a squatter: ignored, and the lock
moves to the next of a few names (``lvscare <vs> #1`` …), so that two real daemons still meet
there. Every name is checked for a real holder before one is taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct
import time
from collections.abc import Iterable

from lvscare.config import Endpoint

SLOTS = 4  # names per virtual server: the first, and where to go when squatters hold it
# How long a holder may take from bind() to listen(): system calls apart, so this is generous
# even on a loaded node.
BIND_TO_LISTEN = 0.1
CAP_NET_ADMIN = 12


def lock_name(vs: Endpoint, slot: int = 0) -> str:
    return f"lvscare {vs}" if slot == 0 else f"lvscare {vs} #{slot}"


def _holder(name: str) -> tuple[int, int] | None:
    """(pid, uid) of the process listening on ``name``; None if nothing listens there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect("\0" + name)
        except OSError:
            return None  # bound but not listening (not ours), or gone meanwhile
        pid, uid, _ = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                        struct.calcsize("3i")))
    return pid, uid


def _listening_holder(name: str) -> tuple[int, int] | None:
    """``_holder``, looking again for a moment when nothing listens yet: a real lvscare binds the
    name, then listens a few system calls later, and one seen in between is no squatter (both
    would then hold a lock on the same virtual server). Only a name that is bound and not
    listening costs the wait, at start or at a reload."""
    holder = _holder(name)
    deadline = time.monotonic() + BIND_TO_LISTEN
    while holder is None and time.monotonic() < deadline:
        time.sleep(0.005)
        holder = _holder(name)
    return holder


def _may_manage_ipvs(pid: int, uid: int) -> bool:
    if uid != 0:
        return False
    if pid <= 0:
        return True  # in another pid namespace (another pod): its uid is all the kernel tells
    try:
        with open(f"/proc/{pid}/status") as fh:
            caps = next((line.split()[1] for line in fh if line.startswith("CapEff:")), "0")
    except OSError:
        return True  # ended meanwhile, or hidden: judged on its uid
    return bool(int(caps, 16) >> CAP_NET_ADMIN & 1)


class NodeLock:
    """Holds the locks of the virtual servers this daemon manages."""

    def __init__(self) -> None:
        self._held: dict[Endpoint, socket.socket] = {}
        self._loops: dict[socket.socket, asyncio.AbstractEventLoop] = {}
        # Holders of our names the last acquire() ignored, as "pid P uid U" (the daemon warns).
        self.ignored: list[str] = []

    def _claim(self, vs: Endpoint) -> socket.socket | bool:
        """The socket of a name now ours; False if a real lvscare holds any of ``vs``'s names;
        True if squatters hold them all (then run without a lock)."""
        mine: socket.socket | None = None
        for slot in range(SLOTS):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind("\0" + lock_name(vs, slot))
            except OSError as exc:
                sock.close()
                if exc.errno != errno.EADDRINUSE:
                    raise
                holder = _listening_holder(lock_name(vs, slot))
                if holder is not None and _may_manage_ipvs(*holder):
                    if mine is not None:
                        self._close(mine)
                    return False
                self.ignored.append(f"{lock_name(vs, slot)!r} held by "
                                    + (f"pid {holder[0]} uid {holder[1]}" if holder
                                       else "a socket that does not listen"))
                continue
            if mine is None:
                sock.listen(64)
                self._answer(sock)
                mine = sock
            else:
                sock.close()
        return mine if mine is not None else True

    def _answer(self, sock: socket.socket) -> None:
        """Accept and close the connections contenders make to read our credentials, on the
        running loop: a backlog left full would look like a holder that does not listen."""
        sock.setblocking(False)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a one-off check): the backlog is enough

        def drain() -> None:
            with contextlib.suppress(OSError):
                while True:
                    sock.accept()[0].close()

        loop.add_reader(sock.fileno(), drain)
        self._loops[sock] = loop

    def _close(self, sock: socket.socket) -> None:
        loop = self._loops.pop(sock, None)
        if loop is not None and not loop.is_closed():
            loop.remove_reader(sock.fileno())
        with contextlib.suppress(OSError):
            sock.close()

    def acquire(self, virtual_servers: Iterable[Endpoint]) -> bool:
        """Hold exactly these virtual servers' locks: True if all are held (already, or now, or
        every name is squatted); False if another lvscare holds any, and then nothing held
        changes."""
        wanted = set(virtual_servers)
        self.ignored = []
        new: dict[Endpoint, socket.socket | None] = {}
        for vs in sorted(wanted - set(self._held), key=str):
            got = self._claim(vs)
            if got is False:
                for s in new.values():
                    if s is not None:
                        self._close(s)
                return False
            new[vs] = got if isinstance(got, socket.socket) else None
        for vs in set(self._held) - wanted:
            self._close(self._held.pop(vs))
        self._held.update({vs: s for vs, s in new.items() if s is not None})
        return True

    def release(self) -> None:
        for sock in self._held.values():
            self._close(sock)
        self._held.clear()
