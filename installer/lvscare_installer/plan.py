"""Pure decisions of the installer: what each node gets, in which order, and how results read.

Nothing here touches the network; ``installer.steps`` carries the plan out over SSH.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import yaml

from lvscare.config import DEFAULT_PORT, DEFAULT_VIP, STATIC_POD_LABEL
from lvscare_installer import hosts

_TOKEN = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")
_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Paths:
    """Where things go on a node. Defaults are kubeadm's; k3s keeps static pods elsewhere."""

    manifests: str = "/etc/kubernetes/manifests"
    hosts: str = "/etc/hosts"
    binary: str = "/usr/local/bin/lvscare"
    state: str = "/var/lib/lvscare"

    @property
    def kubelet_conf(self) -> str:
        # kubeadm join writes it last: its presence means the node has joined.
        return str(PurePosixPath(self.manifests).parent / "kubelet.conf")

    @property
    def apiserver_manifest(self) -> str:
        """On a master: kube-apiserver's static pod, beside ours."""
        return str(PurePosixPath(self.manifests) / "kube-apiserver.yaml")

    @property
    def admin_conf(self) -> str:
        return str(PurePosixPath(self.manifests).parent / "admin.conf")


@dataclass(frozen=True)
class Plan:
    masters: tuple[str, ...]
    nodes: tuple[str, ...]
    user: str
    vip: str = DEFAULT_VIP
    port: int = DEFAULT_PORT
    image: str = ""
    pkg: str | None = None
    pkg_sha256: str | None = None
    parallel: int = 10
    paths: Paths = field(default_factory=Paths)
    options: tuple[str, ...] = ()
    discover: bool = False

    @property
    def vs(self) -> str:
        return f"[{self.vip}]:{self.port}" if ":" in self.vip else f"{self.vip}:{self.port}"

    @property
    def real_servers(self) -> list[str]:
        return [f"[{m}]:{self.port}" if ":" in m else f"{m}:{self.port}" for m in self.masters]

    @property
    def endpoint(self) -> str:
        return f"{hosts.NAME}:{self.port}"

    def care_args(self) -> list[str]:
        """The daemon's arguments. The static pod runs exactly these and the rules step runs them
        with ``--run-once``: one source, so the rules before join and the pod after agree."""
        from lvscare.staticpod import care_args

        return care_args(self.vs, self.real_servers, self.options, self.discover)


def describe(plan: Plan, node: str) -> list[str]:
    """What ``join`` will do on one node, for ``--dry-run``."""
    p = plan.paths
    out = [f"preflight: ssh {plan.user}@{node}, root or sudo, python3 >= 3.9, ip_vs loadable, "
           + ("kubeadm from the package" if plan.pkg else "kubeadm on PATH")]
    out.append(f"package: copy {plan.pkg} and run its init.sh" if plan.pkg else "package: none given")
    out += [
        f"lvscare: install the self-contained lvscare zipapp at {p.binary}",
        f"rules: {p.binary} {shlex.join([*plan.care_args(), '--run-once'])}",
        f"hosts: '{plan.vip} {hosts.NAME}' in lvscare's block of {p.hosts}",
        f"manifest: write {p.manifests}/<name>.yaml (lvscare static-pod)",
        f"join: kubeadm join {plan.endpoint} with a token from {plan.masters[0]} "
        f"(skipped if {p.kubelet_conf} exists)",
    ]
    return out


@dataclass(frozen=True)
class JoinToken:
    token: str
    ca_hashes: tuple[str, ...]


def parse_join_command(text: str) -> JoinToken:
    """The token and CA hashes of ``kubeadm token create --print-join-command`` output."""
    lines = [line for line in text.splitlines() if line.strip().startswith("kubeadm join")]
    if not lines:
        raise ValueError("no 'kubeadm join' line in the output of kubeadm token create")
    words = shlex.split(lines[-1])
    token, hashes = None, []
    for i, w in enumerate(words):
        key, eq, val = w.partition("=")
        if not eq and i + 1 < len(words):
            val = words[i + 1]
        if key == "--token":
            token = val
        elif key == "--discovery-token-ca-cert-hash":
            hashes.append(val)
    if token is None or not _TOKEN.match(token):
        raise ValueError("the join command has no valid --token")
    if not hashes or not all(_HASH.match(h) for h in hashes):
        raise ValueError("the join command has no valid --discovery-token-ca-cert-hash")
    return JoinToken(token, tuple(hashes))


def kubeadm_api_version(version: str) -> str:
    """v1beta4 from kubeadm 1.31 (which deprecates v1beta3), v1beta3 from 1.22, v1beta2 before."""
    parsed = kubeadm_version(version)
    if parsed is not None and parsed >= (1, 31):
        return "kubeadm.k8s.io/v1beta4"
    if parsed is not None and parsed < (1, 22):
        return "kubeadm.k8s.io/v1beta2"
    return "kubeadm.k8s.io/v1beta3"


def join_configuration(plan: Plan, token: JoinToken, api_version: str) -> str:
    """A JoinConfiguration file: the token travels in a 0600 file, never on a command line."""
    doc = {
        "apiVersion": api_version,
        "kind": "JoinConfiguration",
        "discovery": {"bootstrapToken": {
            "apiServerEndpoint": plan.endpoint,
            "token": token.token,
            "caCertHashes": list(token.ca_hashes),
        }},
        # The node says it runs lvscare as a static pod, so that the Helm chart's DaemonSet
        # skips it (kubelets may set labels outside the kubernetes.io namespaces themselves).
        "nodeRegistration": {"kubeletExtraArgs": (
            [{"name": "node-labels", "value": f"{STATIC_POD_LABEL}=true"}]
            if api_version.endswith("v1beta4") else {"node-labels": f"{STATIC_POD_LABEL}=true"})},
    }
    return yaml.safe_dump(doc, sort_keys=False)


@dataclass
class NodeResult:
    node: str
    steps: dict[str, str] = field(default_factory=dict)
    failed_step: str | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failed_step is None


def table(results: Sequence[NodeResult]) -> str:
    rows = [("NODE", "RESULT", "TIME", "DETAIL")]
    for r in results:
        if r.ok:
            detail = ", ".join(f"{k} {v}" for k, v in r.steps.items() if v != "done") or "all steps done"
            rows.append((r.node, "ok", f"{r.seconds:.1f}s", detail))
        else:
            rows.append((r.node, "FAILED", f"{r.seconds:.1f}s", f"{r.failed_step}: {r.error}"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3]
        for row in rows)


def redact(text: str, secrets: Sequence[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


# -- the cluster, checked on the first master before any node changes ---------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
OLD_KUBEADM = (1, 23)  # before: join refuses a non-empty manifests directory (DirAvailable)


def kubeadm_version(text: str) -> tuple[int, int] | None:
    m = re.match(r"v?(\d+)\.(\d+)", text.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def service_ranges(apiserver_manifest: str) -> list[Network]:
    """``--service-cluster-ip-range`` of kube-apiserver's static pod (dual-stack: two)."""
    m = re.search(r"--service-cluster-ip-range[= ]\s*\"?([0-9a-fA-F:./,]+)", apiserver_manifest)
    if not m:
        return []
    out = []
    for cidr in m.group(1).split(","):
        try:
            out.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            continue
    return out


# kube-apiserver's default when the flag is absent (kubeadm writes it; a hand-made pod may not).
DEFAULT_SERVICE_RANGE = ipaddress.ip_network("10.0.0.0/24")


def vip_in_service_range(vip: str, ranges: Sequence[Network], master: str) -> str | None:
    """One line refusing the VIP, or None."""
    ip = ipaddress.ip_address(vip)
    for net in ranges:
        if ip.version == net.version and ip in net:
            return (f"the VIP {vip} is inside the cluster's service range {net} (kube-apiserver "
                    f"--service-cluster-ip-range on {master}): a Service may be given that address "
                    "and kube-proxy's rules for it would take the VIP's traffic; choose a --vip "
                    "outside it (docs/coexistence.md), or --force")
    return None


# lvscare's worst case to see an apiserver's shutdown on /readyz: the readiness interval (5 s)
# and a probe timeout, with margin. A shorter --shutdown-delay-duration can refuse new connections
# that race its listener's close (docs/operating.md, "Zero-error apiserver restarts").
SHUTDOWN_DETECTION = 10.0


def _duration_seconds(text: str) -> float | None:
    """A Go duration as kube-apiserver's flags take it (``15s``, ``1m30s``, ``0``)."""
    text = text.strip().strip('"')
    if text == "0":
        return 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def shutdown_notes(apiserver_manifest: str, master: str) -> list[str]:
    """Notes (never refusals) on kube-apiserver's graceful shutdown settings in its static pod:
    the delay against lvscare's detection, the grace period against delay + 60 s."""
    m = re.search(r"--shutdown-delay-duration[= ]\s*\"?([0-9.hms]+)", apiserver_manifest)
    delay = _duration_seconds(m.group(1)) if m else 0.0
    notes = []
    if delay is not None and delay < SHUTDOWN_DETECTION:
        notes.append(f"kube-apiserver on {master} has --shutdown-delay-duration {delay:g}s, shorter "
                     f"than lvscare's {SHUTDOWN_DETECTION:g}s to see a shutdown: a new connection "
                     "can be refused during its restarts; 10-15s gives zero (docs/operating.md, "
                     "Zero-error apiserver restarts)")
    g = re.search(r"terminationGracePeriodSeconds:\s*(\d+)", apiserver_manifest)
    grace = int(g.group(1)) if g else 30
    if delay is not None and grace < delay + 60:
        notes.append(f"kube-apiserver's static pod on {master} has terminationGracePeriodSeconds "
                     f"{grace}{'' if g else ' (the default)'}, shorter than its shutdown delay + "
                     f"60s ({delay + 60:g}s): it is killed while it still serves long requests")
    return notes


def kube_proxy_check(vip: str, config_conf: str) -> tuple[str, str | None, str | None]:
    """kube-proxy's mode from its ConfigMap's config.conf: (mode, refusal, note)."""
    try:
        conf = yaml.safe_load(config_conf) or {}
    except yaml.YAMLError:
        return "unknown", None, "kube-proxy's configuration is not YAML: its mode was not checked"
    if not isinstance(conf, dict):
        return "unknown", None, "kube-proxy's configuration is not a mapping: its mode was not checked"
    mode = str(conf.get("mode") or "iptables")
    if mode == "ipvs":
        ip = ipaddress.ip_address(vip)
        excluded = (conf.get("ipvs") or {}).get("excludeCIDRs") or []
        for cidr in excluded:
            try:
                if ip in ipaddress.ip_network(str(cidr), strict=False):
                    return mode, None, None
            except ValueError:
                continue
        host = 32 if ip.version == 4 else 128
        return mode, (
            f"kube-proxy runs in ipvs mode without the VIP in ipvs.excludeCIDRs: it would delete "
            f"lvscare's virtual server; first add it - kubectl -n kube-system edit configmap "
            f"kube-proxy, under config.conf set ipvs: {{excludeCIDRs: [{vip}/{host}]}} (keeping any "
            f"there), then kubectl -n kube-system rollout restart daemonset kube-proxy - or --force"), None
    if mode == "nftables":
        return mode, None, ("kube-proxy runs in nftables mode: each time it starts it flushes every "
                            "IPVS virtual server on the node; lvscare puts its own back within one "
                            "interval (docs/coexistence.md)")
    return mode, None, None
