"""The part of a kubeconfig discovery needs: the server, how to trust it, who we are.

The kubelet's ``/etc/kubernetes/kubelet.conf`` names its client certificate and key as a file
(kubeadm: ``/var/lib/kubelet/pki/kubelet-client-current.pem``, rotated by the kubelet); an admin
kubeconfig embeds them. Both, and the CA as a path or as data, and ``insecure-skip-tls-verify``,
are supported. Files are read again for every request (``ssl_context``), so a rotated certificate
is used without a restart.

Embedded keys never touch the disk: OpenSSL loads certificates from files only, so they go to an
anonymous memory file (``memfd``) whose ``/proc/self/fd`` path is handed to it, then closed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import yaml

from lvscare.config import show
from lvscare.errors import UserError
from lvscare.files import read_bytes, read_text_file

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


@dataclass(frozen=True)
class Material:
    """PEM bytes given inline, or a file read when needed."""

    data: bytes | None = None
    path: str | None = None

    def read(self, name: str) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return read_bytes(self.path, name)


@dataclass(frozen=True)
class KubeConfig:
    source: str  # the kubeconfig's path, for messages
    server: str  # https://host:port
    host: str  # the server's host name or address, to connect to
    port: int
    server_name: str  # what its certificate must name: tls-server-name, else the host
    ca: Material | None
    cert: Material | None
    key: Material | None
    insecure: bool

    def cluster_identity(self) -> str:
        """What tells one cluster from another: the SHA-256 of the CA certificates (DER), or,
        without a CA, of the server URL (weaker: a rebuilt cluster behind the same name matches)."""
        if self.ca is None:
            return "server:" + hashlib.sha256(self.server.encode()).hexdigest()
        digest = hashlib.sha256()
        pem = self.ca.read("kubeconfig CA")
        for block in _PEM_CERT.findall(pem):
            digest.update(ssl.PEM_cert_to_DER_cert(block.decode("ascii")))
        return "ca:" + digest.hexdigest()

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting the kubeconfig's CA and presenting its client certificate.
        Raises UserError when a file is missing or unusable."""
        ctx = ssl.create_default_context()
        try:
            if self.insecure and self.ca is None:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            elif self.ca is not None:
                ctx.load_verify_locations(cadata=self.ca.read("kubeconfig CA").decode("ascii", "replace"))
            if self.cert is not None and self.key is not None:
                with _as_file(self.cert, "client certificate") as cert, \
                        _as_file(self.key, "client key") as key:
                    ctx.load_cert_chain(cert, key, password=lambda: b"")
        except UserError as exc:  # a file named in the kubeconfig
            raise UserError(f"--discover-from {show(self.source, 200)}: {exc}") from None
        except (OSError, ssl.SSLError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
            raise UserError(f"--discover-from {show(self.source, 200)}: {reason}") from None
        return ctx


@contextlib.contextmanager
def _as_file(material: Material, name: str) -> Iterator[str]:
    if material.path is not None:
        read_bytes(material.path, name)  # a regular, small file: OpenSSL would block on a FIFO
        yield material.path
        return
    assert material.data is not None
    fd = os.memfd_create("lvscare-kubeconfig", os.MFD_CLOEXEC)
    try:
        os.write(fd, material.data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _named(items: Any, name: str, kind: str, where: str) -> dict[str, Any]:
    if not isinstance(items, list):
        raise UserError(f"{where}: no {kind}s")
    for item in items:
        if isinstance(item, dict) and item.get("name") == name and isinstance(item.get(kind), dict):
            return item[kind]  # type: ignore[no-any-return]
    raise UserError(f"{where}: {kind} {show(name)} not found")


def _material(section: dict[str, Any], key: str, base: str, where: str) -> Material | None:
    data, path = section.get(f"{key}-data"), section.get(key)
    if data:
        try:
            return Material(data=base64.b64decode(str(data), validate=True))
        except (binascii.Error, ValueError):
            raise UserError(f"{where}: {key}-data is not base64") from None
    if path:
        # Relative paths are relative to the kubeconfig's own directory, as kubectl reads them.
        return Material(path=os.path.join(base, str(path)))
    return None


def load(path: str) -> KubeConfig:
    """Parse the kubeconfig at ``path`` (its current context). Raises UserError with one line."""
    where = f"--discover-from {show(path, 200)}"
    try:
        doc = yaml.safe_load(read_text_file(path, "--discover-from"))
    except yaml.YAMLError as exc:
        raise UserError(f"{where}: not YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{where}: not a kubeconfig")
    contexts = doc.get("contexts")
    current = doc.get("current-context")
    if not current and isinstance(contexts, list) and len(contexts) == 1 and isinstance(contexts[0], dict):
        current = contexts[0].get("name")
    if not current:
        raise UserError(f"{where}: no current-context")
    context = _named(contexts, str(current), "context", where)
    cluster = _named(doc.get("clusters"), str(context.get("cluster")), "cluster", where)
    user_name = context.get("user")
    user = _named(doc.get("users"), str(user_name), "user", where) if user_name else {}
    server = str(cluster.get("server") or "")
    parts = urlsplit(server)
    try:
        port = parts.port or 443
    except ValueError:
        port = -1
    if parts.scheme != "https" or not parts.hostname or port <= 0:
        raise UserError(f"{where}: server {show(server)} is not an https:// URL")
    base = os.path.dirname(os.path.abspath(path))
    ca = _material(cluster, "certificate-authority", base, where)
    cert = _material(user, "client-certificate", base, where)
    key = _material(user, "client-key", base, where)
    if (cert is None) != (key is None):
        raise UserError(f"{where}: a client certificate needs its key, and a key its certificate")
    if user.get("token") or user.get("tokenFile") or user.get("exec") or user.get("auth-provider"):
        raise UserError(f"{where}: only client certificates are supported (the kubelet's kind), "
                        "not tokens or exec plugins")
    insecure = cluster.get("insecure-skip-tls-verify") is True
    server_name = str(cluster.get("tls-server-name") or parts.hostname)
    kc = KubeConfig(path, server, parts.hostname, port, server_name, ca, cert, key, insecure)
    kc.ssl_context()  # the files exist and fit together, now rather than at the first poll
    return kc
