"""Run a command inside a real Linux kernel that has IPVS: Debian's user-mode-linux.

The host kernel of the development and CI machines has no IPVS, no dummy interfaces and no module
loading. ``linux.uml`` (package ``user-mode-linux``) is an ordinary process that boots a 6.1 kernel
with IPVS, dummy and veth as modules and mounts the host's ``/`` read-only, so the project's
virtualenv and sources are visible at the same paths. Used by ``scripts/kernel-test`` and by
``lvscare demo``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

UML = "linux.uml"
MODULES_DIR = "/usr/lib/uml/modules"
# Kernel console lines that say nothing about the run.
_NOISE = re.compile(rb"SELinux|mmapper|ubd device|wtmp|^\s*$")
# Modules loaded before the command; schedulers and xt_ipvs load on demand through the wrapper.
PRELOAD = ("ip_vs", "ip_vs_rr", "ip_vs_wrr", "dummy", "veth", "xt_ipvs", "nf_nat",
           "iptable_nat", "ip6table_nat", "xt_MASQUERADE", "xt_comment", "xt_set", "xt_mark")

_INIT = """#!/bin/sh
export PATH={path} PYTHONDONTWRITEBYTECODE=1 TMPDIR=/var/tmp HOME=/var/tmp LVSCARE_TEST_KERNEL=1
{exports}
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs run /run
mount -t tmpfs vartmp /var/tmp
# The host has no /lib/modules; modprobe -d points at the UML modules instead, for us and for the
# kernel's own on-demand loading (ip_vs_<scheduler>, xt_ipvs, ...).
mkdir -p /run/kroot/lib/modules /run/netns
mount --bind {modules} /run/kroot/lib/modules
printf '#!/bin/sh\\nexec modprobe -d /run/kroot "$@"\\n' > /run/modprobe
chmod +x /run/modprobe
echo /run/modprobe > /proc/sys/kernel/modprobe
mount -t hostfs none {out} -o {out}
ip link set lo up
for m in {preload}; do /run/modprobe $m 2>/dev/null; done
cd {cwd}
{command}
echo $? > {out}/rc
poweroff -f
"""


class TestKernelMissing(RuntimeError):
    pass


def available() -> bool:
    return shutil.which(UML) is not None and Path(MODULES_DIR).is_dir()


def host_has_ipvs() -> bool:
    if not Path("/proc/net/ip_vs").exists() and shutil.which("modprobe"):
        subprocess.run(["modprobe", "-q", "ip_vs"], capture_output=True, check=False)
    return Path("/proc/net/ip_vs").exists()


def boot(
    command: Sequence[str],
    *,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    mem: str = "1536M",
    timeout: float = 1800,
    stdout: int | None = None,
) -> int:
    """Boot the kernel, run ``command`` as root inside it, return its exit code.

    The guest's console (the command's stdout and stderr) is copied to ``stdout`` (default ours).
    """
    uml = shutil.which(UML)
    if uml is None or not Path(MODULES_DIR).is_dir():
        raise TestKernelMissing(
            "user-mode-linux is not installed: apt-get install user-mode-linux kmod")
    out = Path(tempfile.mkdtemp(prefix="lvscare-uml-", dir="/tmp"))
    try:
        bindir = str(Path(sys.executable).parent)
        path = f"{bindir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in (env or {}).items())
        script = _INIT.format(
            path=path,
            exports=exports,
            modules=MODULES_DIR,
            out=shlex.quote(str(out)),
            preload=" ".join(PRELOAD),
            cwd=shlex.quote(cwd or os.getcwd()),
            command=" ".join(shlex.quote(c) for c in command) + " 2>&1",
        )
        init = out / "init.sh"
        init.write_text(script)
        init.chmod(0o755)
        argv = [uml, f"umid=lvscare-{os.getpid()}-{out.name[-6:]}", f"mem={mem}",
                "rootfstype=hostfs", "rootflags=/", "ro",
                f"init={init}", "con=null", "con0=null,fd:1", "quiet"]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        sink = stdout if stdout is not None else sys.stdout.fileno()

        def copy() -> None:
            assert proc.stdout is not None
            for line in iter(proc.stdout.readline, b""):
                if not _NOISE.search(line):
                    os.write(sink, line)

        reader = threading.Thread(target=copy, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=timeout)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            raise
        finally:
            # UML's helper processes may outlive the kernel and hold the pipe open.
            reader.join(2)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        rc_file = out / "rc"
        if not rc_file.exists():
            os.write(sink, b"test kernel: the command did not finish (kernel panic or killed)\n")
            return 1
        return int(rc_file.read_text().strip() or 1)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m lvscare_rig.testkernel COMMAND [ARG...]", file=sys.stderr)
        return 2
    try:
        return boot(args)
    except TestKernelMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
