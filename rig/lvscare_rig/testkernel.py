"""Run a command inside a real Linux kernel that has IPVS: Debian's user-mode-linux.

The host kernel of the development and CI machines has no IPVS, no dummy interfaces and no module
loading. ``linux.uml`` (package ``user-mode-linux``) is an ordinary process that boots a 6.1 kernel
with IPVS, dummy and veth as modules and mounts the host's ``/`` read-only, so the project's
virtualenv and sources are visible at the same paths. Used by ``scripts/kernel-test`` and by
``lvscare demo``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
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
from typing import IO

UML = "linux.uml"
MODULES_DIR = "/usr/lib/uml/modules"
# The init script prints this just before the command: what comes before is the boot's.
_MARKER = b"lvscare-test-kernel: up"
# printk lines, with printk.time=1.
_KERNEL_LINE = re.compile(rb"^\[\s*\d+\.\d+\] ?")
# The line that says why a boot failed, for the one-line report; and what every boot says.
_ERROR = re.compile(rb"failed|panic|error|Killed", re.IGNORECASE)
_HARMLESS = re.compile(rb"mmapper_init|ubd device|SELinux")
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
{mounts}
ip link set lo up
for m in {preload}; do /run/modprobe $m 2>/dev/null; done
echo {marker}
cd {cwd}
{command}
echo $? > {out}/rc
poweroff -f >/dev/null 2>&1
"""


# What the init script mounts over the host's tree (tmpfs, or the kernel's own file systems).
_SHADOWED = ("/run", "/var/tmp")
_UNUSABLE = ("/proc", "/sys", "/dev")
_CHECKOUT = Path(__file__).resolve().parents[2]


class TestKernelMissing(RuntimeError):
    pass


def _under(path: str, tops: Sequence[str]) -> bool:
    return any(path == t or path.startswith(t + "/") for t in tops)


def kept_paths(paths: Sequence[str]) -> list[str]:
    """The host directories among ``paths`` that the guest's tmpfs on /run or /var/tmp would hide,
    outermost only: each is mounted again at its own path, so that a checkout (its virtualenv, the
    current directory) works from anywhere. A path the guest cannot show at all is refused."""
    kept: list[str] = []
    for path in sorted({os.path.normpath(p) for p in paths}):
        if _under(path, _UNUSABLE):
            raise TestKernelMissing(f"{path}: the test kernel mounts its own /proc, /sys and /dev "
                                    "over the host's, which hides it: use a checkout elsewhere")
        if _under(path, _SHADOWED) and not any(_under(path, [k]) for k in kept):
            kept.append(path)
    return kept


def available() -> bool:
    return shutil.which(UML) is not None and Path(MODULES_DIR).is_dir()


def host_has_ipvs() -> bool:
    if not Path("/proc/net/ip_vs").exists() and shutil.which("modprobe"):
        subprocess.run(["modprobe", "-q", "ip_vs"], capture_output=True, check=False)
    return Path("/proc/net/ip_vs").exists()


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lvscare-rig"


def xstate_shim() -> Path | None:
    """The LD_PRELOAD library that lets linux.uml boot where the host's XSAVE area outgrew it.

    Built from ``uml_xstate.c`` (the why is there) once per source version with the host's C
    compiler, cached; a pass-through on hosts whose XSAVE size user-mode-linux already matches.
    """
    if platform.machine() != "x86_64":
        return None
    source = Path(__file__).with_name("uml_xstate.c")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    lib = cache_dir() / f"uml_xstate-{digest}.so"
    if lib.exists():
        return lib
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise TestKernelMissing("no C compiler to build the test kernel's ptrace shim: "
                                "apt-get install gcc libc6-dev (scripts/setup does)")
    lib.parent.mkdir(parents=True, exist_ok=True)
    # Several kernels may start at once: build aside, then rename into place.
    tmp = lib.with_name(f".{lib.name}.{os.getpid()}.{threading.get_ident()}")
    built = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(tmp),
                            str(source), "-ldl"], capture_output=True, text=True, check=False)
    if built.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise TestKernelMissing(f"building the test kernel's ptrace shim failed: "
                                f"{built.stderr.strip().splitlines()[-1:]}")
    os.replace(tmp, lib)
    return lib


def uml_environment() -> dict[str, str]:
    env = dict(os.environ)
    shim = xstate_shim()
    if shim is not None:
        env["LD_PRELOAD"] = " ".join(filter(None, [str(shim), env.get("LD_PRELOAD", "")]))
    return env


def boot(
    command: Sequence[str],
    *,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    mem: str = "1536M",
    timeout: float = 1800,
    stdout: int | None = None,
    shared: Sequence[Path] = (),
) -> int:
    """Boot the kernel, run ``command`` as root inside it, return its exit code.

    The command's stdout and stderr are copied to ``stdout`` (default ours); the kernel's own
    messages go to a console log only, named in the one line that reports a failed boot or an
    unfinished command. ``shared`` host directories are writable inside the guest at the same
    paths (the root is read-only).
    """
    uml = shutil.which(UML)
    if uml is None or not Path(MODULES_DIR).is_dir():
        raise TestKernelMissing(
            "user-mode-linux is not installed: apt-get install user-mode-linux kmod")
    uml_env = uml_environment()
    out = Path(tempfile.mkdtemp(prefix="lvscare-uml-", dir="/tmp"))
    console_log = out.with_name(out.name + ".console.log")
    keep_log = True
    try:
        bindir = str(Path(sys.executable).parent)
        path = f"{bindir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in (env or {}).items())
        here = cwd or os.getcwd()
        keep = kept_paths([here, str(_CHECKOUT), sys.prefix, bindir])
        mounts = "\n".join(
            [f"mkdir -p {shlex.quote(d)} && mount -r -t hostfs none {shlex.quote(d)} -o {shlex.quote(d)}"
             for d in keep]
            + [f"mkdir -p {shlex.quote(str(d))}; mount -t hostfs none {shlex.quote(str(d))} "
               f"-o {shlex.quote(str(d))}" for d in [out, *shared]])
        script = _INIT.format(
            path=path,
            exports=exports,
            modules=MODULES_DIR,
            mounts=mounts,
            out=shlex.quote(str(out)),
            preload=" ".join(PRELOAD),
            marker=_MARKER.decode(),
            cwd=shlex.quote(here),
            command=" ".join(shlex.quote(c) for c in command) + " 2>&1",
        )
        init = out / "init.sh"
        init.write_text(script)
        init.chmod(0o755)
        argv = [uml, f"umid=lvscare-{os.getpid()}-{out.name[-8:]}", f"mem={mem}",
                "rootfstype=hostfs", "rootflags=/", "ro",
                f"init={init}", "con=null", "con0=null,fd:1", "quiet", "printk.time=1"]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True, env=uml_env)
        sink = stdout if stdout is not None else sys.stdout.fileno()
        console = Console(sink, console_log)
        reader = threading.Thread(target=console.copy, args=(proc.stdout,), daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # UML's helper processes may outlive the kernel and hold the pipe open; what the
            # kernel wrote is still in the pipe for the reader.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            reader.join(10)
            console.close()
        rc_file = out / "rc"
        if not rc_file.exists():
            os.write(sink, (console.failure(timed_out, timeout) + "\n").encode())
            return 1
        keep_log = False
        return int(rc_file.read_text().strip() or 1)
    finally:
        shutil.rmtree(out, ignore_errors=True)
        if not keep_log:
            console_log.unlink(missing_ok=True)


class Console:
    """Splits the kernel's console: the command's lines to the user, everything to a log.

    Before the init script's marker every line is the kernel's or the boot's; after it, the
    kernel's printk lines carry a ``[seconds]`` stamp (``printk.time=1``) and stay in the log.
    """

    def __init__(self, sink: int, log: Path) -> None:
        self.sink = sink
        self.log_path = log
        self.log = log.open("wb")
        self.up = False
        self.first_error: str | None = None

    def copy(self, stream: IO[bytes] | None) -> None:
        assert stream is not None
        for line in iter(stream.readline, b""):
            self.log.write(line)
            if not self.up:
                self.up = line.rstrip(b"\r\n") == _MARKER
            elif not _KERNEL_LINE.match(line):
                os.write(self.sink, line)
                continue
            if self.first_error is None and _ERROR.search(line) and not _HARMLESS.search(line):
                self.first_error = _KERNEL_LINE.sub(b"", line).decode(errors="replace").strip()
        self.log.flush()

    def close(self) -> None:
        self.log.close()

    def failure(self, timed_out: bool, timeout: float) -> str:
        if not self.up:
            what = "the kernel did not come up"
        elif timed_out:
            what = f"the command did not finish within {timeout:g} s"
        else:
            what = "the command did not finish (kernel panic or killed)"
        reason = f": {self.first_error}" if self.first_error else ""
        return f"test kernel: {what}{reason} (full console log: {self.log_path})"


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
