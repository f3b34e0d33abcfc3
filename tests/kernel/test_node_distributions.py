"""``installer join`` / ``clean`` against nodes that run real distributions: Debian 11 (python3.9,
the oldest python3 the node side supports) and Debian 13 (python3.13), each root built from
Debian's archive (lvscare_rig.noderoots), its own sshd, libc and python3 running the bundle, in its
own network namespace inside the test kernel."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from lvscare_rig import noderoots, sshnodes
from lvscare_rig.sshnodes import HOSTS, SshLab

pytestmark = pytest.mark.needs("node-roots")

VS_LINE = "TCP  10.103.97.2:6443 rr"


def installer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lvscare_installer", *args], capture_output=True,
                          text=True, timeout=600)


def node_python(lab: SshLab, root: Path) -> str:
    """The python3 the node runs: the root's, in the node's namespace."""
    node = lab.nodes[1]
    return subprocess.run(["ip", "netns", "exec", node.netns, "chroot", str(root), "python3", "-c",
                           "import sys; print('%d.%d' % sys.version_info[:2])"],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(params=sorted(noderoots.RELEASES))
def distro(request: pytest.FixtureRequest) -> Iterator[tuple[str, Path, SshLab]]:
    release = request.param
    root = noderoots.root(release)
    lab = sshnodes.build(2, root=root)
    try:
        yield release, root, lab
    finally:
        lab.close()


@pytest.mark.smoke(quick=False)
def test_join_and_clean_a_node_of_each_distribution(distro: tuple[str, Path, SshLab]) -> None:
    release, root, lab = distro
    assert node_python(lab, root) == noderoots.RELEASES[release]
    master, node = lab.nodes
    joined = installer("join", "--master", master.address, "--node", node.address, *lab.flags())
    assert joined.returncode == 0, joined.stdout + joined.stderr
    # Real rules in the node's kernel namespace, written by the bundle on the root's python3.
    table = node.ipvsadm()
    assert VS_LINE in table and f"-> {master.address}:6443" in table, table
    hosts = node.file("hosts").read_text()
    assert hosts.startswith(HOSTS) and "10.103.97.2 apiserver.cluster.local" in hosts
    manifest = yaml.safe_load(node.file("kubernetes/manifests/kube-sealos-lvscare.yaml").read_text())
    assert manifest["spec"]["containers"][0]["args"][-2:] == ["--rs", f"{master.address}:6443"]
    assert node.kubeadm_calls()[-1] == "join --config /mnt/state/join-configuration.yaml"

    cleaned = installer("clean", "--node", node.address, *lab.flags())
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert node.file("hosts").read_text() == HOSTS
    assert not node.file("kubernetes/manifests/kube-sealos-lvscare.yaml").exists()
    assert "10.103.97.2" not in node.ipvsadm()
    assert not node.file("bin/lvscare").exists()


@pytest.fixture
def bullseye() -> Iterator[SshLab]:
    lab = sshnodes.build(2, root=noderoots.root("bullseye"))
    try:
        yield lab
    finally:
        lab.close()


def test_an_old_python3_stops_preflight_in_one_line_before_any_change(bullseye: SshLab) -> None:
    lab = bullseye
    master, node = lab.nodes
    # First on PATH on the node (sshd's SetEnv): answers as Debian 10's python3.7 would.
    fake = node.file("bin/python3")
    fake.write_text("#!/bin/sh\necho 3.7.3\nexit 1\n")
    fake.chmod(0o755)
    refused = installer("join", "--master", master.address, "--node", node.address, *lab.flags())
    assert refused.returncode == 1
    (line,) = [row for row in refused.stdout.splitlines() if row.startswith(node.address)]
    assert "python3 3.7.3 found; lvscare needs python3 >= 3.9" in line and "install" in line, line
    assert node.file("hosts").read_text() == HOSTS
    assert not node.file("bin/lvscare").exists()
    assert not node.file("kubernetes/manifests/kube-sealos-lvscare.yaml").exists()
    assert "10.103.97.2" not in node.ipvsadm() and node.kubeadm_calls() == []
