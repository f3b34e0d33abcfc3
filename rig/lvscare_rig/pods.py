"""A real pod runner inside the test kernel: Debian's podman 4.3 (``podman kube play``, crun), given
the image that scripts/image built. The pods run in a lab's node namespace: podman is started with
``nsenter --net``, so a ``hostNetwork`` pod gets the node's network and nothing else of the test
kernel's; the mount namespace stays the kernel's own, so every podman call sees the same mounts.

What the test kernel lacks, and how it is given (each once per boot, docs/testing.md):

- a cgroup v2 hierarchy: mounted at /sys/fs/cgroup, with the cpu, memory and pids controllers
  enabled for children (the pods' limits are applied);
- /dev with /dev/shm (podman's locks): the root is the host's read-only /, so a devtmpfs is
  mounted on /dev;
- somewhere to write: containers.conf and storage.conf in a directory of the test's, everything
  podman writes (images, containers, network files) under /run/lvscare-pods, a tmpfs.

Where podman is not a kubelet, and what the tests do about it:

- podman 4.3 on cgroup v2 without systemd gives a pod's cgroup a device program that denies every
  device, so no container can create /dev/null. A pod is played with ``--start=false``, the
  program detached with bpftool, then the pod started (``play``).
- podman 4.3 applies the pod's ``restartPolicy`` to its init containers too. Under ``Always`` (the
  default, and a static pod's) conmon restarts the one-shot init container as soon as it exits,
  before podman removes it, and ``pod start`` fails ("cannot remove container … as it is running").
  The kubelet applies ``restartPolicy`` to the app containers only and reruns an init container
  only when it fails. ``play`` gives a pod with init containers ``OnFailure``: for these pods, whose
  daemon exits 0 only when the runtime stops it, that is the kubelet's behaviour for both kinds.
  The kubelet's order (init to completion, then the daemon) is also tested as two pods.
- podman 4.3 refuses ``ports`` in a ``hostNetwork`` pod ("PortMappings can only be used with
  Bridge or slirp4netns networking"). For the kubelet they only declare what the pod listens on
  (the Helm chart's Service and ServiceMonitor find the metrics port by its name). ``play`` leaves
  them out of what podman reads.
- podman runs an ``httpGet`` liveness probe as ``curl`` inside the container, and only from a
  systemd timer: here it never runs. The kubelet sends the GET itself from the node; the tests do
  the same (``lvscare_rig.pods.kubelet_http_get``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from lvscare_rig import tools

REPO = Path(__file__).resolve().parents[2]
ARCHIVE = Path(os.environ.get("LVSCARE_IMAGE_OUT", REPO / "build" / "image")) / "lvscare.oci.tar"
STATE = Path("/run/lvscare-pods")
# The in-kernel copies of host paths the manifests mount that the test kernel lacks.
HOST_PATHS = {"/lib/modules": "/run/kroot/lib/modules"}

CONTAINERS_CONF = """\
[containers]
log_driver = "k8s-file"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "crun"
tmp_dir = "{state}/tmp"
[network]
network_config_dir = "{state}/networks"
"""
STORAGE_CONF = """\
[storage]
driver = "overlay"
runroot = "{state}/runroot"
graphroot = "{state}/graph"
"""


def source_digest() -> str:
    """A digest of the package's source, as scripts/image records it beside the archive."""
    h = hashlib.sha256()
    for path in sorted((REPO / "lvscare").rglob("*.py")):
        h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    h.update((REPO / "pyproject.toml").read_bytes())
    return h.hexdigest()


def image_name() -> str:
    return (ARCHIVE.with_name("lvscare.image")).read_text().strip()


def check_archive() -> None:
    """Fails (never skips) unless scripts/image built the archive from this very source."""
    if not ARCHIVE.exists():
        raise RuntimeError(f"no image archive at {ARCHIVE}: run scripts/image (scripts/kernel-test does)")
    recorded = ARCHIVE.with_name("lvscare.source").read_text().strip()
    if recorded != source_digest():
        raise RuntimeError(f"{ARCHIVE} was built from other sources than this checkout's: "
                           "run scripts/image again")


def _sh(*argv: str, env: dict[str, str] | None = None, timeout: float = 120,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc


def prepare_kernel() -> None:
    """What a node has and the test kernel's boot does not set up (see the module's text)."""
    if not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        _sh("mount", "-t", "cgroup2", "none", "/sys/fs/cgroup")
        Path("/sys/fs/cgroup/cgroup.subtree_control").write_text("+cpu +memory +pids")
    if not Path("/dev/shm").is_dir() or not os.path.ismount("/dev/shm"):
        if not os.path.ismount("/dev"):
            _sh("mount", "-t", "devtmpfs", "dev", "/dev")
        Path("/dev/shm").mkdir(exist_ok=True)
        Path("/dev/pts").mkdir(exist_ok=True)
        _sh("mount", "-t", "tmpfs", "shm", "/dev/shm")
        _sh("mount", "-t", "devpts", "devpts", "/dev/pts", check=False)
    for sub in ("tmp", "networks", "runroot", "graph", "conf", "manifests"):
        (STATE / sub).mkdir(parents=True, exist_ok=True)


class Podman:
    def __init__(self) -> None:
        # podman fails a pod late, and vaguely, for a helper it cannot find (no catatonit: "building
        # local pause image"): say which package is missing before anything starts.
        for tool in ("podman", "catatonit", "crun", "skopeo", "bpftool", "nsenter"):
            tools.need(tool)
        prepare_kernel()
        conf = STATE / "conf"
        (conf / "containers.conf").write_text(CONTAINERS_CONF.format(state=STATE))
        (conf / "storage.conf").write_text(STORAGE_CONF.format(state=STATE))
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf / "containers.conf"),
                    "CONTAINERS_STORAGE_CONF": str(conf / "storage.conf")}

    def __call__(self, *args: str, netns: str | None = None, check: bool = True,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
        enter = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []
        return _sh(*enter, "podman", *args, env=self.env, timeout=timeout, check=check)

    def load(self) -> tuple[str, float]:
        """The image from scripts/image's archive, unless loaded in this boot; its name and the
        seconds the load took (0 when it was there)."""
        check_archive()
        name = image_name()
        if self("image", "exists", name, check=False).returncode == 0:
            return name, 0.0
        start = time.monotonic()
        _sh("skopeo", "copy", "--quiet", f"oci-archive:{ARCHIVE}", f"containers-storage:{name}",
            env=self.env, timeout=600)
        return name, time.monotonic() - start

    def play(self, manifest: dict[str, Any], netns: str) -> str:
        """Create the pod of ``manifest`` in ``netns`` and start it; its name."""
        name = manifest["metadata"]["name"]
        spec = manifest["spec"]
        if spec.get("initContainers") and spec.get("restartPolicy", "Always") == "Always":
            manifest = {**manifest, "spec": {**manifest["spec"], "restartPolicy": "OnFailure"}}
        if manifest["spec"].get("hostNetwork"):
            containers = [{k: v for k, v in c.items() if k != "ports"}
                          for c in manifest["spec"]["containers"]]
            manifest = {**manifest, "spec": {**manifest["spec"], "containers": containers}}
        path = STATE / "manifests" / f"{name}.yaml"
        path.write_text(yaml.safe_dump(manifest, sort_keys=False))
        self("kube", "play", "--start=false", str(path), netns=netns, timeout=300)
        pod = json.loads(self("pod", "inspect", name).stdout)
        pod = pod[0] if isinstance(pod, list) else pod
        self._allow_devices(pod["CgroupPath"])
        self("pod", "start", name, netns=netns, timeout=300)
        return str(name)

    def _allow_devices(self, cgroup: str) -> None:
        root = Path("/sys/fs/cgroup") / cgroup.lstrip("/")
        for path in [root, *(p for p in root.rglob("*") if p.is_dir())]:
            tree = _sh("bpftool", "-j", "cgroup", "show", str(path), check=False).stdout
            for prog in json.loads(tree or "[]"):
                if prog.get("attach_type") in ("cgroup_device", "device"):
                    _sh("bpftool", "cgroup", "detach", str(path), "device", "id", str(prog["id"]))

    def remove(self, pod: str) -> None:
        self("pod", "rm", "--force", "--time", "10", pod, check=False, timeout=120)

    def container(self, pod: str, name: str) -> dict[str, Any]:
        info = json.loads(self("container", "inspect", f"{pod}-{name}").stdout)
        return info[0] if isinstance(info, list) else info  # type: ignore[no-any-return]

    def pid(self, pod: str, name: str) -> int:
        return int(self.container(pod, name)["State"]["Pid"])

    def exec(self, pod: str, name: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return self("exec", f"{pod}-{name}", *argv, check=False)


def for_the_test_kernel(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with the host paths the test kernel lacks pointed at its copies."""
    for volume in manifest["spec"].get("volumes", []):
        host = volume.get("hostPath")
        if host and host["path"] in HOST_PATHS:
            host["path"] = HOST_PATHS[host["path"]]
    return manifest


def kubelet_http_get(netns: str, probe: dict[str, Any], timeout: float = 3) -> int:
    """What the kubelet does for an ``httpGet`` probe of a hostNetwork pod: a GET from the node's
    network to host:port/path. The status code, or 0 when nothing answered."""
    get = probe["httpGet"]
    code = ("import http.client, sys\n"
            "c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=float(sys.argv[4]))\n"
            "c.request('GET', sys.argv[3]); print(c.getresponse().status)\n")
    proc = _sh("ip", "netns", "exec", netns, sys.executable, "-c", code, get.get("host", "127.0.0.1"),
               str(get["port"]), get.get("path", "/"), str(timeout), check=False)
    return int(proc.stdout.strip()) if proc.returncode == 0 and proc.stdout.strip() else 0

