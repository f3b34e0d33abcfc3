"""A real Kubernetes control plane in a lab: etcd on the node, a kube-apiserver in each backend's
namespace, from the binaries lvscare_rig.controlplane built from Debian's archive.

Flags are a kubeadm control plane's where they matter to lvscare: Node and RBAC authorization, the
lease endpoint reconciler (each apiserver publishes its own address in the ``kubernetes``
Endpoints and removes it at SIGTERM), a client CA, the serving certificate's SANs, and a
shutdown delay chosen per test. etcd is plain HTTP on the node (TLS between them is not what the
tests look at). Certificates: a CA (also the client CA), a serving certificate per apiserver, a
kubelet-like node certificate (``system:node:node-1`` in ``system:nodes``) with its kubeconfig,
and an admin one (``system:masters``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lvscare_rig import controlplane
from lvscare_rig.topology import Backend, Lab, sh, wait_for

VIP = "10.103.97.2"
ETCD = "10.200.1.1"  # the node's address towards backend 1


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@dataclass
class ControlPlane:
    lab: Lab
    dir: Path
    bin: Path
    shutdown_delay: float = 0.0
    extra: list[str] = field(default_factory=list)
    etcd_address: str = ETCD
    etcd: subprocess.Popen[bytes] | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    # -- certificates ----------------------------------------------------------------------------

    def _cert(self, name: str, subject: str, sans: str | None = None) -> None:
        d = self.dir
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"), "-subj", subject)
        ext = d / f"{name}.ext"
        ext.write_text(f"subjectAltName={sans}\n" if sans else "basicConstraints=CA:FALSE\n")
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"),
                 "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
                 "-extfile", str(ext), "-out", str(d / f"{name}.crt"))

    def certificates(self) -> None:
        d = self.dir
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"), "-days", "2",
                 "-subj", "/CN=kubernetes")
        for b in self.lab.backends:
            self._cert(b.name, "/CN=kube-apiserver",
                       f"IP:{b.ip4},IP:{VIP},IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,"
                       "DNS:apiserver.cluster.local")
        self._cert("node", "/O=system:nodes/CN=system:node:node-1")
        self._cert("admin", "/O=system:masters/CN=kubernetes-admin")
        _openssl("genrsa", "-out", str(d / "sa.key"), "2048")
        _openssl("rsa", "-in", str(d / "sa.key"), "-pubout", "-out", str(d / "sa.pub"))
        (d / "node.pem").write_bytes((d / "node.crt").read_bytes() + (d / "node.key").read_bytes())

    def kubeconfig(self, who: str = "node", server: str = f"https://{VIP}:6443") -> str:
        path = self.dir / f"{who}-{time.monotonic_ns()}.conf"
        user = {"client-certificate": str(self.dir / f"{who}.crt"),
                "client-key": str(self.dir / f"{who}.key")}
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": who,
            "contexts": [{"name": who, "context": {"cluster": "kubernetes", "user": who}}],
            "clusters": [{"name": "kubernetes", "cluster": {
                "server": server, "certificate-authority": str(self.dir / "ca.crt")}}],
            "users": [{"name": who, "user": user}]}))
        return str(path)

    # -- processes -------------------------------------------------------------------------------

    def start_etcd(self) -> None:
        data = self.dir / "etcd"
        self.etcd = subprocess.Popen(
            self.lab.node_cmd(str(self.bin / "etcd"), "--data-dir", str(data), "--name", "node",
                              "--listen-client-urls", f"http://{self.etcd_address}:2379",
                              "--advertise-client-urls", f"http://{self.etcd_address}:2379",
                              "--listen-peer-urls", "http://127.0.0.1:2380",
                              "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                              "--initial-cluster", "node=http://127.0.0.1:2380",
                              "--unsafe-no-fsync", "--log-level", "error"),
            stdout=subprocess.DEVNULL, stderr=(self.dir / "etcd.log").open("ab"),
            start_new_session=True)

    def argv(self, b: Backend) -> list[str]:
        """kube-apiserver's command line; a flag of ``extra`` replaces the default one."""
        d = self.dir
        argv = [str(self.bin / "kube-apiserver"),
                f"--advertise-address={b.ip4}", f"--bind-address={b.ip4}", "--secure-port=6443",
                f"--etcd-servers=http://{self.etcd_address}:2379",
                f"--client-ca-file={d / 'ca.crt'}",
                f"--tls-cert-file={d / f'{b.name}.crt'}", f"--tls-private-key-file={d / f'{b.name}.key'}",
                f"--service-account-key-file={d / 'sa.pub'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range=10.96.0.0/12",
                "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
                "--endpoint-reconciler-type=lease", "--allow-privileged=true",
                f"--cert-dir={d / ('certs-' + b.name)}",
                f"--shutdown-delay-duration={self.shutdown_delay:g}s",
                "--request-timeout=60s", "--v=0"]
        given = {e.split("=", 1)[0] for e in self.extra}
        return [a for a in argv if a.split("=", 1)[0] not in given] + self.extra

    def start(self, b: Backend) -> None:
        """Start ``b``'s apiserver (not waiting for it)."""
        log = (self.dir / f"{b.name}.log").open("ab")
        self.procs[b.name] = subprocess.Popen(
            ["ip", "netns", "exec", b.netns, *self.argv(b)], stdout=subprocess.DEVNULL,
            stderr=log, start_new_session=True)

    def ready(self, b: Backend) -> bool:
        # curl, not a Python: its start costs a busy test kernel a fraction of a second, not a
        # second or two, every round of every wait.
        try:
            p = sh("ip", "netns", "exec", b.netns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                   "--max-time", "2", "--cacert", str(self.dir / "ca.crt"),
                   f"https://{b.ip4}:6443/readyz", check=False, timeout=30)
        except subprocess.TimeoutExpired:
            return False
        return p.stdout.strip() == "200"

    def wait_ready(self, *backends: Backend, timeout: float = 240) -> float:
        return wait_for(lambda: all(self.ready(b) for b in backends), timeout, interval=1)

    def stop(self, b: Backend, sig: int = signal.SIGTERM, wait: bool = True) -> None:
        proc = self.procs.pop(b.name, None)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        if wait:
            proc.wait(timeout=120)

    def kubectl(self, *args: str, who: str = "admin", server: str = f"https://{VIP}:6443",
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return sh(*self.lab.node_cmd(str(self.bin / "kubectl"), "--kubeconfig",
                                     self.kubeconfig(who, server), *args), check=False, timeout=timeout)

    def static_pod(self, b: Backend) -> dict[str, object]:
        """The manifest kubeadm would write for ``b``'s apiserver, with the flags it runs with."""
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "kube-apiserver", "namespace": "kube-system"},
                "spec": {"containers": [{"name": "kube-apiserver",
                                         "command": ["kube-apiserver", *self.argv(b)[1:]]}]}}

    def close(self) -> None:
        for b in self.lab.backends:
            self.stop(b, signal.SIGKILL)
        if self.etcd is not None and self.etcd.poll() is None:
            os.killpg(self.etcd.pid, signal.SIGKILL)
            self.etcd.wait()


def build(lab: Lab, shutdown_delay: float = 0.0, extra: list[str] | None = None,
          start: bool = True, etcd_address: str = ETCD) -> ControlPlane:
    """The control plane of ``lab`` (whose backends must not be started): certificates, etcd (on
    the lab's node, at ``etcd_address``), and every apiserver started and ready unless ``start``
    is False."""
    d = lab.workdir / "controlplane"
    d.mkdir()
    cp = ControlPlane(lab, d, controlplane.bindir(), shutdown_delay, list(extra or []), etcd_address)
    cp.certificates()
    cp.start_etcd()
    if start:
        for b in lab.backends:
            cp.start(b)
        cp.wait_ready(*lab.backends)
    return cp
