"""Every program the test suite, the rig, the demo and the benches run, the Debian package that
provides it, and why it is needed: the one list.

``scripts/setup`` installs the packages of this table (``python3 rig/lvscare_rig/tools.py
packages``); ``scripts/test`` and ``scripts/kernel-test`` check the commands before any test kernel
boots (``python -m lvscare_rig.tools``: one line per missing command, naming its package, then exit
2); the rig asks for a command through ``need()`` where a missing one would otherwise surface as a
traceback deep in a test; and the test sessions run under ``guard()``, which fails any subprocess
whose program is not listed here, so a new tool cannot come into use without its package.

Standard library only: ``scripts/setup`` reads the package list with the system's python3, before
the virtualenv exists.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Tool:
    command: str  # a name looked up on PATH, or an absolute path for a file that is no command
    package: str
    why: str
    # "suite": the tests or the rig run it, the preflight checks it; "bench": only benches that
    # compare lvscare with it (they skip that peer when it is missing).
    use: str = "suite"


_T = Tool
TOOLS: tuple[Tool, ...] = (
    _T("linux.uml", "user-mode-linux", "the test kernel with IPVS (the demo, the kernel tests, benches)"),
    _T("/usr/lib/uml/modules", "user-mode-linux", "the test kernel's modules (IPVS, dummy, veth)"),
    _T("modprobe", "kmod", "loading the test kernel's modules"),
    _T("cc", "gcc", "the test kernel's ptrace shim on hosts with AMX (testkernel.xstate_shim)"),
    _T("/usr/include/stdio.h", "libc6-dev", "the C library headers the ptrace shim is built with"),
    _T("ip", "iproute2", "the lab's network namespaces, veths, routes and addresses"),
    _T("ss", "iproute2", "waiting for a node's sshd to listen"),
    _T("ipvsadm", "ipvsadm", "the independent check of the kernel's IPVS table"),
    _T("iptables", "iptables", "the node's firewall as lvscare and the tests see it"),
    _T("iptables-legacy", "iptables", "the test kernel's xtables (it has no nftables)"),
    _T("iptables-save", "iptables", "reading the NAT rules back"),
    _T("ip6tables-legacy", "iptables", "the IPv6 NAT rules of the link mode"),
    _T("ipset", "ipset", "the Go lvscare's leftovers that lvscare removes"),
    _T("sysctl", "procps", "the lab's sysctls (forwarding) and reading IPVS's"),
    _T("pgrep", "procps", "finding a pod's processes"),
    _T("ps", "procps", "what runs in a pod"),
    _T("mount", "mount", "cgroup2, devtmpfs and tmpfs for the pods in the test kernel"),
    _T("nsenter", "util-linux", "podman and clients in a lab's network namespace"),
    _T("unshare", "util-linux", "a private mount namespace per SSH node and per pod"),
    _T("setpriv", "util-linux", "a process with exactly a pod's capabilities"),
    _T("prlimit", "util-linux", "a client that floods with many sockets"),
    _T("chroot", "coreutils", "an SSH node on a Debian 11 or 13 root"),
    _T("curl", "curl", "HTTP/2 clients through the VIP"),
    _T("openssl", "openssl", "the lab's CAs and certificates"),
    _T("/etc/ssl/certs/ca-certificates.crt", "ca-certificates", "pip and apt over HTTPS"),
    _T("promtool", "prometheus", "the metrics' format and the alert rules"),
    _T("sshd", "openssh-server", "the SSH nodes the installer joins"),
    _T("ssh-keygen", "openssh-client", "host and user keys of the SSH nodes"),
    _T("sudo", "sudo", "the installer's non-root user on the SSH nodes"),
    _T("debootstrap", "debootstrap", "the Debian 11 and 13 node roots"),
    _T("mmdebstrap", "mmdebstrap", "the image's base and scripts/fresh-check's root"),
    _T("buildah", "buildah", "the image, from the Dockerfile, with no registry"),
    _T("podman", "podman", "the image run as pods in the test kernel"),
    _T("catatonit", "catatonit", "podman's pause process: no pod starts without it"),
    _T("skopeo", "skopeo", "loading the image's archive into the test kernel's storage"),
    _T("crun", "crun", "podman's container runtime"),
    _T("bpftool", "bpftool", "detaching podman 4.3's deny-all device program"),
    _T("apt-get", "apt", "downloading Go 1.15, etcd, kubectl and Kubernetes' source"),
    _T("dpkg-deb", "dpkg", "unpacking those packages without installing them"),
    _T("dpkg-source", "dpkg-dev", "unpacking Kubernetes' source package"),
    _T("rsync", "rsync", "Kubernetes' build scripts"),
    _T("make", "make", "building kube-apiserver (make WHAT=cmd/kube-apiserver)"),
    _T("keepalived", "keepalived", "the failover and rolling-restart benches' peer", "bench"),
    _T("haproxy", "haproxy", "the rolling-restart bench's peer", "bench"),
)

# Programs the rig and the tests run that are not on PATH lookups of this host's: the test's own
# interpreter, scripts of the checkout, built binaries (control plane, node doubles), and anything
# run inside a node's root (its own programs). Matched by path prefix in ``guard()``.
_PATH_ALLOWED = ("/run/", "/var/tmp/", "/tmp/", "/var/cache/lvscare-")
# Shell builtins and programs every Debian has (Essential: yes) need no listing.
ESSENTIAL = frozenset({"sh", "bash", "cat", "true", "false", "env", "kill", "sleep", "test",
                       "mkdir", "rm", "cp", "mv", "ln", "ls", "touch", "tar", "sed", "grep",
                       "timeout", "id", "uname", "date", "sha256sum", "find", "xargs", "head",
                       "tail", "printf", "echo", "chmod", "dd", "stat", "readlink", "poweroff"})
# Programs that run another program: what they run is checked too; and their options that take
# their value as the next argument.
_WRAPPERS = {"nsenter", "prlimit", "timeout", "setpriv", "unshare", "env"}
_VALUE_OPTIONS = {"--propagation", "--reuid", "--regid", "--ruid", "--rgid", "--euid", "--egid",
                  "--groups", "--inh-caps", "--ambient-caps", "--bounding-set", "--securebits",
                  "-t", "--target", "-S", "-G", "--setuid", "--setgid", "-s", "-k", "--signal",
                  "--kill-after", "-u", "--unset", "-C", "--chdir"}

BY_COMMAND = {t.command: t for t in TOOLS}


class ToolMissing(RuntimeError):
    """A listed program is not installed: the message is the preflight's one line."""


class ToolUnlisted(RuntimeError):
    """A program that is not in ``TOOLS`` was run."""


def packages(use: str = "suite") -> list[str]:
    """The Debian packages ``scripts/setup`` installs, in the table's order, once each."""
    return list(dict.fromkeys(t.package for t in TOOLS if t.use == use))


def find(tool: Tool) -> str | None:
    if tool.command.startswith("/"):
        return tool.command if os.path.exists(tool.command) else None
    # PATH as the rig will use it: a program found only elsewhere would fail there anyway.
    return shutil.which(tool.command)


def message(tool: Tool) -> str:
    return (f"missing: {tool.command} (Debian package {tool.package}: {tool.why}); "
            f"scripts/setup installs it")


def missing(use: str = "suite") -> list[Tool]:
    return [t for t in TOOLS if t.use == use and find(t) is None]


def need(command: str) -> str:
    """The path of ``command``, which must be listed; ``ToolMissing`` (one line) when absent."""
    tool = BY_COMMAND.get(command)
    if tool is None:
        raise ToolUnlisted(f"{command} is not listed in lvscare_rig.tools.TOOLS")
    found = find(tool)
    if found is None:
        raise ToolMissing(message(tool))
    return found


def _inner(argv: Sequence[str]) -> Sequence[str]:
    """What a wrapper runs: ``ip netns exec NS CMD…``, ``nsenter --net=… CMD…`` and the like."""
    name = os.path.basename(argv[0]) if argv else ""
    if name == "ip" and list(argv[1:3]) == ["netns", "exec"] and len(argv) > 4:
        return argv[4:]
    if name in _WRAPPERS:
        rest = list(argv[1:])
        while rest and rest[0].startswith("-"):
            option = rest.pop(0)
            if option == "--":
                break
            if option in _VALUE_OPTIONS and rest:
                rest.pop(0)
        if name == "env":
            while rest and "=" in rest[0]:
                rest.pop(0)
        return rest[1:] if name == "timeout" else rest  # timeout's duration comes first
    return ()


def unlisted(argv: Sequence[str]) -> str | None:
    """The first program in ``argv`` (a wrapper's and what it runs) that is not listed, if any."""
    while argv:
        program = str(argv[0])
        name = os.path.basename(program)
        if program.startswith("/") and (program.startswith(_PATH_ALLOWED) or _ours(program)):
            pass
        elif name not in BY_COMMAND and name not in ESSENTIAL and not name.startswith("python"):
            return name
        argv = _inner(argv)
    return None


def _ours(program: str) -> bool:
    # The checkout (its venv and scripts) and the interpreter running the tests.
    here = Path(__file__).resolve().parents[2]
    return (program.startswith(str(here)) or program == sys.executable
            or os.path.dirname(program) == os.path.dirname(sys.executable))


@contextmanager
def guard() -> Iterator[None]:
    """Within it, starting a program that ``TOOLS`` does not list raises ``ToolUnlisted``.

    ``subprocess.Popen`` is where ``subprocess.run`` and asyncio's subprocesses start theirs.
    """
    original: Callable[..., Any] = subprocess.Popen.__init__

    def checked(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        if not kwargs.get("shell") and isinstance(args, (list, tuple)) and args:
            name = unlisted([os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in args])
            if name is not None:
                raise ToolUnlisted(f"{name} is not listed in lvscare_rig.tools.TOOLS (with the "
                                   "Debian package that provides it): add it there")
        original(self, args, *rest, **kwargs)

    subprocess.Popen.__init__ = checked  # type: ignore[method-assign]
    try:
        yield
    finally:
        subprocess.Popen.__init__ = original  # type: ignore[method-assign]


def preflight(use: str = "suite") -> int:
    """One line per missing program, naming its package; 2 if any is missing, else 0."""
    absent = missing(use)
    for tool in absent:
        print(message(tool), file=sys.stderr)
    return 2 if absent else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["packages"]:
        print(" ".join(packages(args[1] if len(args) > 1 else "suite")))
        return 0
    if args:
        print("usage: python -m lvscare_rig.tools [packages [suite|bench]]", file=sys.stderr)
        return 2
    return preflight()


if __name__ == "__main__":
    raise SystemExit(main())
