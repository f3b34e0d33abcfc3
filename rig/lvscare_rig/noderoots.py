"""Root file systems of real distributions for simulated nodes: Debian 11 "bullseye" (python3.9,
the oldest python3 the installer supports) and Debian 13 "trixie" (python3.13, the newest), built
from Debian's archive with debootstrap once and cached outside the checkout.

Built on the host, before the test kernel boots (user-mode-linux has no route to the archive):
``python -m lvscare_rig.noderoots`` (scripts/kernel-test runs it). Each root holds what a minimal
node has plus OpenSSH: its own libc, python3 and sshd. The tests never write into a root: a node
runs chrooted into it with its own files bind-mounted over (lvscare_rig.sshnodes).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lvscare_rig import tools

RELEASES = {"bullseye": "3.9", "trixie": "3.13"}  # release: its python3
MIRROR = os.environ.get("LVSCARE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = "python3,openssh-server"


def cache() -> Path:
    return Path(os.environ.get("LVSCARE_NODE_ROOTS", "/var/cache/lvscare-test-roots"))


def root(release: str) -> Path:
    """The root of ``release``; fails (never skips) when it was not built."""
    path = cache() / release
    if not (path / ".lvscare-complete").exists():
        raise RuntimeError(f"no {release} root in {cache()}: run `python -m lvscare_rig.noderoots` "
                           "on the host (scripts/kernel-test does)")
    return path


def build(release: str) -> tuple[Path, float]:
    """Build ``release`` unless cached; its path and the seconds it took (0 when cached)."""
    base = cache()
    base.mkdir(parents=True, exist_ok=True)
    path = base / release
    with open(base / f".{release}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs at once build it once
        if (path / ".lvscare-complete").exists():
            return path, 0.0
        tools.need("debootstrap")
        tmp = base / f"{release}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(path, ignore_errors=True)  # without its marker: half-built before a crash
        start = time.monotonic()
        proc = subprocess.run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", release,
                               str(tmp), MIRROR], capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"debootstrap {release} failed: {proc.stdout[-1500:]}{proc.stderr[-1500:]}")
        version = subprocess.run(["chroot", str(tmp), "python3", "-c",
                                  "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        if version != RELEASES[release]:
            raise RuntimeError(f"{release}: python3 is {version}, expected {RELEASES[release]}")
        (tmp / ".lvscare-complete").write_text(f"{release} python3 {version}\n")
        os.rename(tmp, path)
        return path, time.monotonic() - start


def main() -> int:
    for release in RELEASES:
        path, took = build(release)
        how = f"built in {took:.0f} s" if took else "cached"
        print(f"node root {release}: {path} ({how})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
