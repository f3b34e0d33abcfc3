"""The lab's backends as a control plane: the ``kubernetes`` Endpoints object they serve (through
the VIP too), a client CA and a kubelet's certificate that they ask for, and kubeconfigs. Used by
the discovery tests and the chaos campaign (bench/chaos.py)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import yaml

from lvscare_rig import topology
from lvscare_rig.topology import Lab

VIP = "10.103.97.2"


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


class Cluster:
    """The lab's backends as a control plane: its Endpoints file, a client CA and a kubelet's
    certificate, and kubeconfigs."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        d = self.dir = lab.workdir / "cluster"
        d.mkdir()
        self.endpoints = d / "endpoints.json"
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", str(d / "client-ca.key"), "-out", str(d / "client-ca.crt"), "-days", "2",
                "-subj", "/CN=kubernetes-client-ca")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", str(d / "kubelet.key"), "-out", str(d / "kubelet.csr"),
                "-subj", "/O=system:nodes/CN=system:node:node-1")
        openssl("x509", "-req", "-in", str(d / "kubelet.csr"), "-CA", str(d / "client-ca.crt"),
                "-CAkey", str(d / "client-ca.key"), "-CAcreateserial", "-days", "2",
                "-out", str(d / "kubelet.crt"))
        # kubelet-client-current.pem: certificate and key in one file, named twice.
        (d / "kubelet-client-current.pem").write_bytes(
            (d / "kubelet.crt").read_bytes() + (d / "kubelet.key").read_bytes())
        lab.backend_args = ["--client-ca", str(d / "client-ca.crt"), "--endpoints-file", str(self.endpoints)]
        self.members(*lab.backends)
        for b in lab.backends:
            lab.start(b)

    def members(self, *backends: topology.Backend) -> None:
        self.write({"kind": "Endpoints", "apiVersion": "v1", "metadata": {"name": "kubernetes"},
                    "subsets": [{"addresses": [{"ip": b.ip4} for b in backends],
                                 "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]}]
                    if backends else []})

    def write(self, content: object) -> None:
        tmp = self.endpoints.with_suffix(".tmp")
        tmp.write_text(content if isinstance(content, str) else json.dumps(content))
        tmp.replace(self.endpoints)

    def kubeconfig(self, server: str = f"https://{VIP}:6443", ca: Path | None = None) -> str:
        path = self.dir / f"kubelet-{time.monotonic_ns()}.conf"
        pem = str(self.dir / "kubelet-client-current.pem")
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "system:node:node-1@kubernetes",
            "contexts": [{"name": "system:node:node-1@kubernetes",
                          "context": {"cluster": "kubernetes", "user": "system:node:node-1"}}],
            "clusters": [{"name": "kubernetes", "cluster": {
                "server": server, "certificate-authority": str(ca or self.lab.cert)}}],
            "users": [{"name": "system:node:node-1",
                       "user": {"client-certificate": pem, "client-key": pem}}]}))
        return str(path)
