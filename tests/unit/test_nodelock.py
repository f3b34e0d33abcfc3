"""The node lock itself (an abstract unix socket; host network namespace here): held once, freed
when released or when its holder dies. The kernel tests run two daemons against it."""

from __future__ import annotations

import subprocess
import sys

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
