"""The installer's cluster check against a real control plane: on the first master, a real
kube-apiserver (1.20) with etcd, its static-pod manifest written with the flags it runs with, the
real kubectl reading the real ``kube-proxy`` ConfigMap with the admin's kubeconfig. Only the node
that joins keeps its kubeadm test double (no kubelet runs here)."""

from __future__ import annotations

import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from lvscare_rig import realplane, sshnodes
from lvscare_rig.realplane import ControlPlane
from lvscare_rig.sshnodes import SshLab
from lvscare_rig.topology import Backend, Lab

pytestmark = pytest.mark.needs("control-plane")

KUBE_PROXY = """apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: ipvs
ipvs:
  scheduler: rr
"""


def installer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lvscare_installer", *args], capture_output=True,
                          text=True, timeout=600)


@pytest.fixture
def master_with_apiserver() -> Iterator[tuple[SshLab, ControlPlane]]:
    lab2 = sshnodes.build(2)
    master = lab2.nodes[0]
    work = master.dir / "apiserver"
    work.mkdir()
    # The master's own namespace and address: etcd on its loopback, the apiserver on its address.
    apiserver = Backend("apiserver", master.netns, master.address, "", 6443, work / "fault")
    here = Lab(node=master.netns, tag=f"{lab2.tag}cp", workdir=work, cert=Path(), key=Path(),
               backends=[apiserver])
    cp = realplane.build(here, shutdown_delay=5, etcd_address="127.0.0.1",
                         extra=["--service-cluster-ip-range=10.96.0.0/22"])
    try:
        yield lab2, cp
    finally:
        cp.stop(apiserver, signal.SIGKILL)
        cp.close()
        lab2.close()


@pytest.mark.smoke(quick=False)
def test_the_cluster_check_reads_the_real_apiserver_flags_and_kube_proxy_configmap(
        master_with_apiserver: tuple[SshLab, ControlPlane]) -> None:
    lab2, cp = master_with_apiserver
    master, node = lab2.nodes
    (apiserver,) = cp.lab.backends
    # What kubeadm leaves on a master: the apiserver's manifest and admin.conf; kubectl is real.
    master.file("kubernetes/manifests/kube-apiserver.yaml").write_text(
        yaml.safe_dump(cp.static_pod(apiserver)))
    master.file("kubernetes/admin.conf").write_text(
        Path(cp.kubeconfig("admin", server=f"https://{master.address}:6443")).read_text())
    kubectl = master.file("bin/kubectl")
    kubectl.write_text(f"#!/bin/sh\nexec {cp.bin / 'kubectl'} \"$@\"\n")
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IXUSR)
    conf = master.dir / "kube-proxy-config.conf"
    conf.write_text(KUBE_PROXY)
    made = cp.kubectl("-n", "kube-system", "create", "configmap", "kube-proxy",
                      f"--from-file=config.conf={conf}", server=f"https://{master.address}:6443")
    assert made.returncode == 0, made.stderr

    args = ["join", "--master", master.address, "--node", node.address, *lab2.flags()]
    # kube-proxy in ipvs mode, the VIP not excluded: refused, one line with the patch to apply.
    refused = installer(*args)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "ipvs: {excludeCIDRs: [10.103.97.2/32]}" in refused.stderr
    assert "10.103.97.2" not in node.ipvsadm() and node.kubeadm_calls() == []
    # The ConfigMap patched as the line says: the join goes on, with the shutdown notes that the
    # real flags (--shutdown-delay-duration=5s, no grace period in the manifest) earn.
    conf.write_text(KUBE_PROXY + "  excludeCIDRs: [10.103.97.2/32]\n")
    replaced = cp.kubectl("-n", "kube-system", "create", "configmap", "kube-proxy",
                          f"--from-file=config.conf={conf}", "--dry-run=client", "-o", "yaml",
                          server=f"https://{master.address}:6443")
    (master.dir / "kube-proxy.yaml").write_text(replaced.stdout)
    applied = cp.kubectl("replace", "-f", str(master.dir / "kube-proxy.yaml"),
                         server=f"https://{master.address}:6443")
    assert applied.returncode == 0, applied.stderr
    joined = installer(*args)
    assert joined.returncode == 0, joined.stdout + joined.stderr
    assert f"kube-apiserver on {master.address} has --shutdown-delay-duration 5s" in joined.stderr
    assert "terminationGracePeriodSeconds 30 (the default)" in joined.stderr
    assert "TCP  10.103.97.2:6443 rr" in node.ipvsadm()
