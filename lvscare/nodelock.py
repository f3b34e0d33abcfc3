"""One daemon per virtual server on a node: a lock that ends with its process.

A static pod and the DaemonSet on one node, or a ``lvscare care`` started by hand next to the pod,
would otherwise both write the same virtual server, each undoing the other's view of health. The
lock is an abstract unix socket named for the virtual server, bound in the node's network
namespace, which every hostNetwork pod and every process on the node shares. The kernel releases
it when the process ends, however it ends (SIGKILL, OOM), so there is no stale lock file, no
hostPath to mount and no capability needed.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable

from lvscare.config import Endpoint


def lock_name(vs: Endpoint) -> str:
    return f"lvscare {vs}"


class NodeLock:
    """Holds the locks of the virtual servers this daemon manages."""

    def __init__(self) -> None:
        self._held: dict[Endpoint, socket.socket] = {}

    def acquire(self, virtual_servers: Iterable[Endpoint]) -> bool:
        """Hold exactly these virtual servers' locks: True if all are held (already, or now);
        False if another process holds any, and then nothing held changes."""
        wanted = set(virtual_servers)
        new: dict[Endpoint, socket.socket] = {}
        for vs in sorted(wanted - set(self._held), key=str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind("\0" + lock_name(vs))
            except OSError as exc:
                sock.close()
                for s in new.values():
                    s.close()
                if exc.errno == errno.EADDRINUSE:
                    return False
                raise
            new[vs] = sock
        for vs in set(self._held) - wanted:
            self._held.pop(vs).close()
        self._held.update(new)
        return True

    def release(self) -> None:
        for sock in self._held.values():
            sock.close()
        self._held.clear()
