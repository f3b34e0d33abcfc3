"""A real Kubernetes control plane for the lab, every part from Debian's archive, built once on the
host and cached outside the checkout (as the node roots are): ``python -m lvscare_rig.controlplane``
(scripts/control-plane; scripts/kernel-test runs it). It prints the directory that holds
``kube-apiserver``, ``etcd`` and ``kubectl``.

The pins, and why each:

- ``KUBERNETES``: Debian 12's source package ``kubernetes``. Its orig tarball carries the whole tree
  with ``vendor/``, so the build needs no module proxy. It is 1.20 (docs/testing.md lists what 1.20
  differs in from current releases, for what the tests rely on).
- ``GO``: Go 1.15 from Debian 11. Go >= 1.18 compiles 1.20 but the binary dies with "unexpected fault
  address" while serving (the old ``modern-go/reflect2`` that 1.20 vendors reads runtime internals
  that moved). 1.15 is the Go 1.20 was released with.
- ``ETCD``: Debian 12's ``etcd-server`` (3.4), the etcd minor 1.20 was tested against.
- ``KUBECTL``: Debian 12's ``kubernetes-client``, the same 1.20 tree: a real client-go client.

The packages are unpacked with ``dpkg-deb -x``, never installed: nothing on the host changes but
the cache, and a ``kubectl`` from elsewhere on the host is left alone.
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

MIRROR = os.environ.get("LVSCARE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
KUBERNETES = ("bookworm", "kubernetes", "1.20.5+really1.20.2-1.1+deb12u1")
KUBERNETES_VERSION = "v1.20.2"  # what the tree is, for `kube-apiserver --version`
GO = ("bullseye", ("golang-1.15-go", "golang-1.15-src"), "1.15")
ETCD = ("bookworm", "etcd-server")
KUBECTL = ("bookworm", "kubernetes-client")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
BINARIES = ("kube-apiserver", "etcd", "kubectl")


def cache() -> Path:
    return Path(os.environ.get("LVSCARE_CONTROL_PLANE", "/var/cache/lvscare-control-plane"))


def bindir() -> Path:
    """Where the binaries are; fails (never skips) when they were not built."""
    path = cache() / "bin"
    if not (path / ".lvscare-complete").exists():
        raise RuntimeError(f"no control plane in {cache()}: run `python -m lvscare_rig.controlplane` "
                           "on the host (scripts/kernel-test does)")
    return path


def _run(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
         timeout: float = 1800) -> str:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} … failed ({proc.returncode}): "
                           f"{proc.stdout[-1500:]}{proc.stderr[-1500:]}")
    return proc.stdout


class Apt:
    """apt with a private sources list and state in the cache: the host's lists are not touched."""

    def __init__(self, base: Path) -> None:
        self.base = base
        (base / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (base / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        (base / "sources.list").write_text(
            "".join(f"{kind} [signed-by={KEYRING}] {MIRROR} {suite} main\n"
                    for kind, suite in (("deb", "bullseye"), ("deb", "bookworm"), ("deb-src", "bookworm"))))
        self.options = ["-o", f"Dir::Etc::SourceList={base / 'sources.list'}",
                        "-o", "Dir::Etc::SourceParts=/nonexistent",
                        "-o", f"Dir::State::Lists={base / 'lists'}",
                        "-o", f"Dir::Cache={base / 'cache'}",
                        "-o", "APT::Get::AllowUnauthenticated=false", "-q"]

    def update(self) -> None:
        _run(["apt-get", *self.options, "update"])

    def get(self, verb: str, what: list[str], cwd: Path) -> None:
        cwd.mkdir(parents=True, exist_ok=True)
        _run(["apt-get", *self.options, verb, *what], cwd=cwd)


def _unpack_debs(where: Path, into: Path) -> None:
    for deb in sorted(where.glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(into)])


def build() -> tuple[Path, float]:
    """Build unless cached; the bin directory and the seconds it took (0 when cached)."""
    base = cache()
    base.mkdir(parents=True, exist_ok=True)
    out = base / "bin"
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs at once build it once
        if (out / ".lvscare-complete").exists():
            return out, 0.0
        for tool in ("apt-get", "dpkg-source", "dpkg-deb", "rsync", "make"):
            tools.need(tool)
        start = time.monotonic()
        work = base / "work"
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        apt = Apt(base / "apt")
        apt.update()
        # Go 1.15, unpacked: its GOROOT is usr/lib/go-1.15 under the unpacked tree.
        apt.get("download", [f"{p}/{GO[0]}" for p in GO[1]], work / "go-debs")
        _unpack_debs(work / "go-debs", work / "go")
        goroot = work / "go" / "usr" / "lib" / f"go-{GO[2]}"
        apt.get("download", [f"{ETCD[1]}/{ETCD[0]}", f"{KUBECTL[1]}/{KUBECTL[0]}"], work / "debs")
        _unpack_debs(work / "debs", work / "pkgs")
        _suite, package, version = KUBERNETES
        apt.get("source", ["--only-source", f"{package}={version}"], work / "src")
        tree = next(p for p in (work / "src").iterdir()
                    if p.is_dir() and p.name.startswith(f"{package}-"))
        env = {**os.environ, "GOROOT": str(goroot), "PATH": f"{goroot / 'bin'}:{os.environ['PATH']}",
               "GOFLAGS": "-mod=vendor", "GO111MODULE": "on", "GOPROXY": "off",
               "GOCACHE": str(work / "gocache"), "GOPATH": str(work / "gopath"),
               "KUBE_GIT_VERSION": KUBERNETES_VERSION, "KUBE_GIT_TREE_STATE": "archive",
               "KUBE_GIT_COMMIT": "debian-" + version}
        _run(["make", "WHAT=cmd/kube-apiserver"], cwd=tree, env=env, timeout=3600)
        built = next((tree / "_output").rglob("kube-apiserver"))
        tmp = base / "bin.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        shutil.copy2(built, tmp / "kube-apiserver")
        shutil.copy2(work / "pkgs" / "usr" / "bin" / "etcd", tmp / "etcd")
        shutil.copy2(work / "pkgs" / "usr" / "bin" / "kubectl", tmp / "kubectl")
        versions = {b: _run([str(tmp / b), "version" if b == "kubectl" else "--version",
                             *(["--client", "--short"] if b == "kubectl" else [])]).strip().splitlines()[0]
                    for b in BINARIES}
        took = time.monotonic() - start
        (tmp / ".lvscare-complete").write_text(
            "".join(f"{b}: {v}\n" for b, v in versions.items()) + f"built in {took:.0f} s\n")
        os.rename(tmp, out)
        shutil.rmtree(work, ignore_errors=True)
        return out, took


def main(quiet: bool = False) -> int:
    path, took = build()
    how = f"built in {took:.0f} s" if took else "cached"
    print(f"control plane: {path} ({how})", file=sys.stderr)
    if not quiet:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
