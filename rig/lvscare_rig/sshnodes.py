"""Simulated nodes for the installer: OpenSSH servers in network namespaces, inside the test kernel.

Node i (1-based) is netns ``<tag>n<i>`` joined to the root namespace by a veth pair:
root side 10.210.<i>.1/24, node side 10.210.<i>.2/24 (the node's address, sshd on port 22), default
route back through the root side. Each sshd runs in a private mount namespace in which

- ``/etc/shadow``, ``/etc/passwd``, ``/etc/group`` and ``/etc/sudoers`` are copies that give root
  the test password and ``/bin/sh`` as login shell, and add a user ``ops`` (same password) that
  may sudo (the machine's own files are untouched),
- the node's directory (``<workdir>/n<i>``) is mounted on ``/mnt``, so every file the installer
  writes (``--hosts-path /mnt/hosts``, ``--manifest-path /mnt/kubernetes/manifests``, ...) lands in
  the test's directory,
- ``PATH`` starts with ``/mnt/bin``, which holds the ``kubeadm`` and ``kubectl`` test doubles
  (tests/support).

The installer runs in the root namespace and reaches the nodes only at these addresses.

With ``root`` (a Debian root from lvscare_rig.noderoots), the node is that distribution instead of
this machine: sshd, python3 and libc are the root's own (chroot), with the same bind mounts made
inside it and /proc, /dev, /run and /tmp of its own. The root itself is never written.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from lvscare_rig.topology import sh

PASSWORD = "lab-password-not-secret"
SUDO_USER, SUDO_UID = "ops", 4242
KUBEADM_DOUBLE = Path(__file__).resolve().parents[2] / "tests" / "support" / "kubeadm-double"
KUBECTL_DOUBLE = KUBEADM_DOUBLE.with_name("kubectl-double")
_counter = itertools.count(1)

# Paths the installer is told to use: all under the node's own /mnt.
NODE_FLAGS = ["--hosts-path", "/mnt/hosts", "--manifest-path", "/mnt/kubernetes/manifests",
              "--bin-path", "/mnt/bin/lvscare", "--state-dir", "/mnt/state"]
HOSTS = "127.0.0.1 localhost\n# a comment the installer must keep\n10.0.0.9 registry.local\n"


@dataclass
class Node:
    index: int
    netns: str
    dir: Path
    address: str
    sshd: subprocess.Popen[bytes] | None = None

    def file(self, rel: str) -> Path:
        return self.dir / rel

    def kubeadm_calls(self) -> list[str]:
        log = self.dir / "kubeadm.log"
        return log.read_text().splitlines() if log.exists() else []

    def ipvsadm(self) -> str:
        return sh("ip", "netns", "exec", self.netns, "ipvsadm", "-Ln").stdout


@dataclass
class SshLab:
    workdir: Path
    tag: str
    nodes: list[Node] = field(default_factory=list)
    user_key: Path | None = None
    known_hosts: Path | None = None

    def flags(self, *, key: bool = True) -> list[str]:
        out = [*NODE_FLAGS, "--known-hosts", str(self.known_hosts), "--connect-timeout", "5"]
        if key:
            out += ["--pk", str(self.user_key)]
        return out

    def stop_sshd(self, node: Node) -> None:
        if node.sshd and node.sshd.poll() is None:
            node.sshd.terminate()
            node.sshd.wait(10)

    def close(self) -> None:
        for node in self.nodes:
            self.stop_sshd(node)
            for pid in sh("ip", "netns", "pids", node.netns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)
            sh("ip", "netns", "del", node.netns, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)


# Paths as sshd sees them: the machine's own for a node on this root, /mnt/… inside a chroot.
_SSHD_CONFIG = """ListenAddress {address}
Port 22
HostKey {host_key}
AuthorizedKeysFile {authorized_keys}
PidFile none
UsePAM no
StrictModes no
PermitRootLogin yes
PasswordAuthentication yes
KbdInteractiveAuthentication no
MaxStartups 100:30:200
LogLevel VERBOSE
SetEnv PATH=/mnt/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
Subsystem sftp internal-sftp
"""

# The same, for a node whose root is a distribution's (chroot).
_WRAPPER_CHROOT = """set -e
R={root}
mount -t proc proc "$R/proc"
mount --rbind /dev "$R/dev"
mount -t tmpfs tmpfs "$R/run"
mount -t tmpfs tmpfs "$R/tmp"
mount --bind {dir}/shadow "$R/etc/shadow"
mount --bind {dir}/passwd "$R/etc/passwd"
mount --bind {dir} "$R/mnt"
mkdir -p "$R/run/sshd"
exec chroot "$R" /usr/sbin/sshd -D -e -f /mnt/sshd_config
"""

# Run by the node's sshd wrapper inside its own mount namespace.
_WRAPPER = """set -e
mount --bind {dir}/shadow /etc/shadow
mount --bind {dir}/passwd /etc/passwd
mount --bind {dir}/group /etc/group
[ ! -e /etc/sudoers ] || mount --bind {dir}/sudoers /etc/sudoers
mount --bind {dir} /mnt
mkdir -p /run/sshd
exec /usr/sbin/sshd -D -e -f {dir}/sshd_config
"""


def _shadow(password: str, etc: Path = Path("/etc")) -> str:
    hashed = sh("openssl", "passwd", "-6", password).stdout.strip()
    out = [f"{SUDO_USER}:{hashed}:19000:0:99999:7:::"]
    for line in (etc / "shadow").read_text().splitlines():
        name, _, rest = line.partition(":")
        out.append(f"{name}:{hashed}:{rest.split(':', 1)[1]}" if name == "root" else line)
    return "\n".join(out) + "\n"


def _passwd(etc: Path = Path("/etc")) -> str:
    # root's login shell becomes /bin/sh: the machine's own ~/.bashrc (pyenv and the like) would
    # otherwise run before every remote command and dominate the timings. The sudo user's home is
    # the node's /mnt/home.
    out = [f"{SUDO_USER}:x:{SUDO_UID}:{SUDO_UID}::/mnt/home:/bin/sh"]
    for line in (etc / "passwd").read_text().splitlines():
        f = line.split(":")
        if f[0] == "root":
            f[-1] = "/bin/sh"
        out.append(":".join(f))
    return "\n".join(out) + "\n"


def build(nodes: int, *, down: frozenset[int] = frozenset(), root: Path | None = None) -> SshLab:
    """``nodes`` nodes; those in ``down`` exist on the network but run no sshd (refused);
    ``root``: a distribution's root file system the nodes run in (noderoots)."""
    tag = f"s{os.getpid() % 1000}{next(_counter)}"
    lab = SshLab(Path(tempfile.mkdtemp(prefix="sshlab-")), tag)
    try:
        key = lab.workdir / "id_ed25519"
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
        (lab.workdir / "authorized_keys").write_text((lab.workdir / "id_ed25519.pub").read_text())
        lab.user_key = key
        lab.known_hosts = lab.workdir / "known_hosts"
        shadow = _shadow(PASSWORD, (root or Path("/")) / "etc")
        known = []
        for i in range(1, nodes + 1):
            node = _add_node(lab, i, shadow, i not in down, root)
            lab.nodes.append(node)
            pub = (node.dir / "ssh_host_ed25519_key.pub").read_text().split()
            known.append(f"{node.address} {pub[0]} {pub[1]}\n")
        lab.known_hosts.write_text("".join(known))
        for node in lab.nodes:
            if node.sshd:
                _wait_listening(node)
    except BaseException:
        lab.close()
        raise
    return lab


def _add_node(lab: SshLab, i: int, shadow: str, start: bool, root: Path | None = None) -> Node:
    ns = f"{lab.tag}n{i}"
    d = lab.workdir / f"n{i}"
    (d / "bin").mkdir(parents=True)
    (d / "kubernetes" / "manifests").mkdir(parents=True)
    (d / "hosts").write_text(HOSTS)
    shutil.copy(KUBEADM_DOUBLE, d / "bin" / "kubeadm")
    shutil.copy(KUBECTL_DOUBLE, d / "bin" / "kubectl")
    (d / "shadow").write_text(shadow)
    (d / "shadow").chmod(0o600)
    (d / "passwd").write_text(_passwd((root or Path("/")) / "etc"))
    (d / "group").write_text(Path("/etc/group").read_text() + f"{SUDO_USER}:x:{SUDO_UID}:\n")
    # A non-root login that becomes root through sudo, asked for its password.
    (d / "sudoers").write_text(f"Defaults !lecture\n{SUDO_USER} ALL=(ALL:ALL) ALL\n")
    (d / "sudoers").chmod(0o440)
    home = d / "home"
    home.mkdir()
    os.chown(home, SUDO_UID, SUDO_UID)
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "ssh_host_ed25519_key"))
    address = f"10.210.{i}.2"
    if root is None:
        config = _SSHD_CONFIG.format(address=address, host_key=d / "ssh_host_ed25519_key",
                                     authorized_keys=lab.workdir / "authorized_keys")
    else:
        config = _SSHD_CONFIG.format(address=address, host_key="/mnt/ssh_host_ed25519_key",
                                     authorized_keys="/mnt/authorized_keys")
        shutil.copy(lab.workdir / "authorized_keys", d / "authorized_keys")
    (d / "sshd_config").write_text(config)
    sh("ip", "netns", "add", ns)
    host_if = f"{lab.tag}h{i}"
    sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
    sh("ip", "addr", "add", f"10.210.{i}.1/24", "dev", host_if)
    sh("ip", "link", "set", host_if, "up")
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", ns, "link", "set", "eth0", "up")
    sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
    sh("ip", "-n", ns, "route", "add", "default", "via", f"10.210.{i}.1")
    node = Node(i, ns, d, address)
    if start:
        wrapper = _WRAPPER.format(dir=d) if root is None else _WRAPPER_CHROOT.format(dir=d, root=root)
        (d / "sshd.sh").write_text(wrapper)
        with open(d / "sshd.log", "wb") as log:
            node.sshd = subprocess.Popen(
                ["ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private",
                 "sh", str(d / "sshd.sh")], stdout=log, stderr=subprocess.STDOUT)
    return node


def _wait_listening(node: Node, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = sh("ip", "netns", "exec", node.netns, "ss", "-Htln", "sport = :22", check=False).stdout
        if out.strip():
            return
        if node.sshd and node.sshd.poll() is not None:
            break
        time.sleep(0.1)
    log = (node.dir / "sshd.log").read_text() if (node.dir / "sshd.log").exists() else ""
    raise RuntimeError(f"sshd of {node.netns} did not start: {log[-500:]}")
