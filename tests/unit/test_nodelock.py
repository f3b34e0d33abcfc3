"""The node lock itself (an abstract unix socket; host network namespace here): held once, freed
when released or when its holder dies. The kernel tests run two daemons against it."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from lvscare.nodelock import NodeLock

from .fakes import ep

A, B = ep("10.103.97.2:6443"), ep("10.103.97.3:6443")


def test_one_holder_per_virtual_server_and_nothing_changes_on_failure() -> None:
    first, second = NodeLock(), NodeLock()
    try:
        assert first.acquire([A])
        assert not second.acquire([B, A])
        assert second.acquire([B])  # B was not taken by the failed attempt
        assert not first.acquire([A, B])
        assert first.acquire([A])  # still held after the failed attempt
        second.release()
        assert first.acquire([B])  # holds exactly B now: A is free again
        assert second.acquire([A])
    finally:
        first.release()
        second.release()


def test_the_lock_ends_with_its_process() -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom lvscare.nodelock import NodeLock\n"
         "from lvscare.config import Endpoint\nimport ipaddress\n"
         "l = NodeLock(); assert l.acquire([Endpoint(ipaddress.ip_address('10.103.97.2'), 6443)])\n"
         "print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    mine = NodeLock()
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert not mine.acquire([A])
        holder.kill()
        holder.wait()
        assert mine.acquire([A])
    finally:
        holder.kill()
        holder.wait()
        mine.release()


SQUAT = """
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("\\0lvscare 10.103.97.2:6443")
if sys.argv[1] == "listen":
    s.listen(1)
print("bound", flush=True)
time.sleep(60)
"""


def _squatter(how: str) -> subprocess.Popen[str]:
    """Anyone on the node: uid 65534, no capabilities."""
    proc = subprocess.Popen(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                             "--inh-caps=-all", sys.executable, "-c", SQUAT, how],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "bound"
    return proc


@pytest.mark.parametrize("how", ["listen", "bind"])
def test_a_squatter_on_the_lock_s_name_is_ignored_and_two_real_daemons_still_meet(
        how: str) -> None:
    squatter = _squatter(how)
    first, second = NodeLock(), NodeLock()
    try:
        assert first.acquire([A])
        assert len(first.ignored) == 1 and "'lvscare 10.103.97.2:6443'" in first.ignored[0]
        assert ("uid 65534" if how == "listen" else "does not listen") in first.ignored[0]
        assert not second.acquire([A])  # the real holder, one name further, counts
        first.release()
        assert second.acquire([A])
    finally:
        squatter.kill()
        squatter.wait()
        first.release()
        second.release()


def test_a_holder_on_a_loop_answers_any_number_of_contenders() -> None:
    """Contenders connect to read the holder's credentials; a backlog left full would make the
    holder look like a socket that does not listen, and a contender would take over."""

    async def main() -> None:
        holder = NodeLock()
        assert holder.acquire([A])
        try:
            for _ in range(150):  # more than the backlog: a standby daemon looks every second
                assert not NodeLock().acquire([A])
                await asyncio.sleep(0)
        finally:
            holder.release()

    asyncio.run(main())


def test_a_holder_seen_between_its_bind_and_its_listen_still_counts() -> None:
    """A contender that looks in the few system calls between the holder's bind() and listen()
    must not take it for a squatter that does not listen: both would hold a lock on A."""
    import socket
    import threading

    from lvscare.nodelock import lock_name

    holder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    holder.bind("\0" + lock_name(A))  # what NodeLock does first …
    listening = threading.Timer(0.02, holder.listen, args=(64,))  # … and a moment later
    listening.start()
    contender = NodeLock()
    try:
        assert not contender.acquire([A])
        assert contender.ignored == []
    finally:
        listening.join()
        contender.release()
        holder.close()
