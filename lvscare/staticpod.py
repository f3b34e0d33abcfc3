"""The static pod manifest that keeps lvscare running on a node (``lvscare static-pod``).

One source for the manifest: the installer renders it with this module, and the Helm chart's tests
compare their DaemonSet arguments against :func:`care_args`. The layout follows Go lvscare's
``sealctl static-pod lvscare`` (same default name and path, same argument order) so that a node
moved from the Go tool keeps exactly one lvscare pod.

Privileges: the long-running container has only CAP_NET_ADMIN (IPVS and routes over netlink) and
CAP_NET_RAW (iptables in link mode; the raw packets of ``lvscare.nudge``). Container runtimes
mount ``/proc/sys`` read-only unless the container is privileged, so a privileged init container
runs the same arguments with ``--run-once``: it writes the sysctls after a reboot and puts the
rules back before the daemon starts, then exits. The daemon checks those sysctls and reports one it
cannot set (docs/operating.md#privileges).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lvscare import __version__
from lvscare.careflags import load_config, parse_care_args
from lvscare.config import DEFAULT_VS, parse_endpoint, parse_ip, show
from lvscare.errors import UserError
from lvscare.files import read_text_file

DEFAULT_NAME = "kube-sealos-lvscare"
DEFAULT_PATH = "/etc/kubernetes/manifests"
DEFAULT_IMAGE = f"ghcr.io/lvscare/lvscare:v{__version__}"


@dataclass(frozen=True)
class StaticPod:
    vip: str = DEFAULT_VS
    masters: tuple[str, ...] = ()
    image: str = DEFAULT_IMAGE
    name: str = DEFAULT_NAME
    options: tuple[str, ...] = field(default=())
    discover: bool = False  # follow the control plane's members (docs/operating.md#discovery)


_NAME = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
# The image reference grammar of distribution/reference, without its rarely used corners.
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*(?::[0-9]+)?"
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(rf"(?:{_DOMAIN}/)?{_PATH}(?:/{_PATH})*(?::[\w][\w.-]{{0,127}})?"
                    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?")
# The probes' certificates are mounted from the node (read-only, at the same path). A --config file
# is not: the manifest itself is the configuration, and a file beside it would be a second one.
_HOST_FILES = ("--config", "--discover-from", "--state-dir")
# Discovery (--discover) reads the kubelet's kubeconfig and its rotated client certificate, and keeps
# the last members in the state directory: all at kubeadm's paths on every node.
KUBELET_CONF = "/etc/kubernetes/kubelet.conf"
KUBELET_PKI = "/var/lib/kubelet/pki"
STATE_DIR = "/var/lib/lvscare"
CERTIFICATE_FLAGS = ("health-ca", "health-cert", "health-key")


def check_name(name: str) -> str:
    """A pod name that is also the file name: a DNS label, so no path can come of it."""
    if not _NAME.fullmatch(name):
        raise UserError(f"--name: {show(name)} is not a valid pod name "
                        "(lowercase letters, digits and '-', at most 63)")
    return name


def check_image(image: str, flag: str = "--image") -> str:
    if len(image) > 255 or not _IMAGE.fullmatch(image):
        raise UserError(f"{flag}: {show(image)} is not an image reference")
    return image


def real_servers(vip: str, masters: Sequence[str]) -> list[str]:
    """Masters as ``address:port``; a bare address takes the VIP's port, as kubeadm's apiservers
    listen on the same port the VIP serves."""
    port = parse_endpoint(vip, "--vip").port
    out = []
    for m in masters:
        for item in filter(None, (p.strip() for p in m.split(","))):
            try:
                out.append(str(parse_endpoint(item, "--masters")))
            except UserError:
                try:
                    ip = parse_ip(item.strip("[]"), "--masters")
                except UserError:
                    raise UserError(f"--masters: {item!r} is not an address or address:port") from None
                out.append(str(parse_endpoint(f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}")))
    return out


def care_args(vip: str, masters: Sequence[str], options: Sequence[str] = (),
              discover: bool = False) -> list[str]:
    """The daemon's arguments, in Go lvscare's order, checked by the daemon's own parser."""
    args = ["care", "--vs", str(parse_endpoint(vip, "--vip")), "--health-path", "/readyz",
            "--health-schem", "https"]
    for rs in real_servers(vip, masters):
        args += ["--rs", rs]
    _check([*args, *options])
    if discover:
        args += ["--discover-from", KUBELET_CONF, "--state-dir", STATE_DIR]
    args += list(options)
    parse_care_args(args)
    return args


def discovery_mounts() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The kubelet's kubeconfig and certificates read-only, the state directory read-write."""
    volumes: list[dict[str, Any]] = [
        {"name": "kubelet-conf", "hostPath": {"path": KUBELET_CONF, "type": "File"}},
        {"name": "kubelet-pki", "hostPath": {"path": KUBELET_PKI, "type": "Directory"}},
        {"name": "lvscare-state", "hostPath": {"path": STATE_DIR, "type": "DirectoryOrCreate"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "kubelet-conf", "mountPath": KUBELET_CONF, "readOnly": True},
        {"name": "kubelet-pki", "mountPath": KUBELET_PKI, "readOnly": True},
        {"name": "lvscare-state", "mountPath": STATE_DIR},
    ]
    return volumes, mounts


def liveness_probe(args: list[str]) -> dict[str, Any] | None:
    """kubelet's check of the daemon's /healthz, where the daemon's arguments say it listens;
    none when they turn the endpoint off (a probe of nothing would restart the pod forever)."""
    address = load_config(parse_care_args(args), {}, hosts=None).metrics_address
    if not address:
        return None
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    return {
        "httpGet": {"host": "127.0.0.1" if host in ("", "0.0.0.0", "::") else host,
                    "port": int(port), "path": "/healthz"},
        "initialDelaySeconds": 10,
        "periodSeconds": 10,
        "timeoutSeconds": 3,
        "failureThreshold": 6,
    }


def _check(args: list[str]) -> None:
    # The manifest must not carry arguments that would make the pod crash-loop on every node.
    for arg in args:
        if arg.split("=", 1)[0] in _HOST_FILES:
            hint = "; use --discover" if arg.startswith(("--discover-from", "--state-dir")) else ""
            raise UserError(f"--options: {show(arg)} names a file on the node, which the pod does "
                            f"not mount{hint}")
    try:
        values = parse_care_args(args)
    except UserError as exc:
        raise UserError(f"--options: lvscare care would reject it: {exc}") from None
    if "rs" not in values and "config" not in values:
        raise UserError("--masters: at least one apiserver address is needed")
    if "run-once" in values or "clean" in values:
        raise UserError("--options: --run-once and -C make no sense in a long-running pod")
    load_config(values, {}, hosts=None)
    for flag, path in certificates(args):
        if not path.startswith("/"):
            raise UserError(f"--options: --{flag} {show(path)} must be an absolute path on the node")


def certificates(args: list[str]) -> list[tuple[str, str]]:
    """The probes' certificate files the arguments name, as (flag, path): the pod mounts them."""
    health = load_config(parse_care_args(args), {}, hosts=None).virtual_servers[0].health
    paths = {"health-ca": health.ca, "health-cert": health.cert, "health-key": health.key}
    return [(flag, path) for flag in CERTIFICATE_FLAGS if (path := paths[flag])]


def check_certificate_files(args: list[str]) -> None:
    """Read the probes' certificate files as the daemon would (where the manifest is written)."""
    from lvscare.tls import check_certificates

    check_certificates([vs.health for vs in
                        load_config(parse_care_args(args), {}, hosts=None).virtual_servers])


def certificate_mounts(args: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes and read-only mounts (at the same path) for the files of ``certificates``."""
    named = certificates(args)
    volumes = [{"name": flag, "hostPath": {"path": path, "type": "File"}} for flag, path in named]
    mounts = [{"name": flag, "mountPath": path, "readOnly": True} for flag, path in named]
    return volumes, mounts


def manifest(pod: StaticPod) -> dict[str, Any]:
    args = care_args(pod.vip, pod.masters, pod.options, pod.discover)
    probe = liveness_probe(args)
    check_image(pod.image)
    check_name(pod.name)
    lib_modules = {"name": "lib-modules", "mountPath": "/lib/modules", "readOnly": True}
    # iptables (link mode) takes this lock; sharing the host's serialises us with kube-proxy.
    xtables_lock = {"name": "xtables-lock", "mountPath": "/run/xtables.lock"}
    cert_volumes, cert_mounts = certificate_mounts(args)
    disc_volumes, disc_mounts = discovery_mounts() if pod.discover else ([], [])
    labels = {"app.kubernetes.io/name": "lvscare", "component": "lvscare", "tier": "control-plane"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": "kube-system", "labels": labels},
        "spec": {
            "hostNetwork": True,
            "priorityClassName": "system-node-critical",
            "dnsPolicy": "ClusterFirstWithHostNet",
            "initContainers": [{
                "name": "rules",
                "image": pod.image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["lvscare"],
                "args": [*args, "--run-once"],
                "securityContext": {"privileged": True, "runAsUser": 0},
                "volumeMounts": [lib_modules, xtables_lock, *cert_mounts],
            }],
            "containers": [{
                "name": pod.name,
                "image": pod.image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["lvscare"],
                "args": args,
                "securityContext": {
                    "privileged": False,
                    # The image's default user is unprivileged; capabilities added to a non-root
                    # process are not effective in Kubernetes (no ambient capabilities).
                    "runAsUser": 0,
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "resources": {
                    "requests": {"cpu": "10m", "memory": "64Mi"},
                    "limits": {"cpu": "200m", "memory": "128Mi"},
                },
                **({"livenessProbe": probe} if probe else {}),
                "volumeMounts": [lib_modules, xtables_lock, *cert_mounts, *disc_mounts],
            }],
            "volumes": [
                {"name": "lib-modules", "hostPath": {"path": "/lib/modules", "type": ""}},
                {"name": "xtables-lock", "hostPath": {"path": "/run/xtables.lock", "type": "FileOrCreate"}},
                *cert_volumes,
                *disc_volumes,
            ],
        },
    }


class _Dumper(yaml.SafeDumper):
    """No anchors (``&id001``): kubeadm's manifests have none, and anchored YAML diffs badly."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def render(pod: StaticPod) -> str:
    return dump(manifest(pod))


def write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Write through a temporary file in the same directory: kubelet never reads half a manifest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def set_image(path: Path, image: str) -> str:
    """Rewrite only the image of an existing manifest (``--set-img``, as sealctl)."""
    check_image(image)
    try:
        data = yaml.safe_load(read_text_file(str(path), "--set-img: manifest"))
        spec = data["spec"]
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            c["image"] = image
    except UserError:
        raise
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        # AttributeError: a spec (or a container) that is not a mapping.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"--set-img: cannot rewrite {path}: not a pod manifest ({reason})") from None
    return dump(data)
