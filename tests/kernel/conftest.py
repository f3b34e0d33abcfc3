"""Kernel tests run inside a kernel with IPVS (scripts/kernel-test boots one). Elsewhere they fail,
never skip: a green run must mean the kernel behaviour was checked."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from lvscare_rig import tools, topology


def _kernel_has_ipvs() -> bool:
    subprocess.run(["modprobe", "ip_vs"], capture_output=True, check=False)
    return Path("/proc/net/ip_vs").exists() or Path("/proc/sys/net/ipv4/vs").exists()


@pytest.fixture(autouse=True, scope="session")
def _listed_tools_only() -> Iterator[None]:
    """A program the tests or the rig run must be listed, with its package (lvscare_rig.tools)."""
    with tools.guard():
        yield


@pytest.fixture(autouse=True, scope="session")
def ipvs_kernel() -> None:
    if not _kernel_has_ipvs():
        pytest.fail("this kernel has no IPVS: run the kernel tests with scripts/kernel-test, "
                    "which boots one (apt-get install user-mode-linux kmod)")


@pytest.fixture
def lab() -> Iterator[topology.Lab]:
    lab = topology.build(backends=3)
    yield lab
    lab.close()


@pytest.fixture
def lab_local() -> Iterator[topology.Lab]:
    """Two remote apiservers and one on the node itself, as on a control-plane node."""
    lab = topology.build(backends=3, local=True)
    yield lab
    lab.close()
