"""What runs on a node before it joins, as one zipapp: ``care --run-once`` and ``care -C``.

Only the modules of that path (``NODE_MODULES``), and nothing but the standard library beside them:
the node's own ``python3`` (>= 3.9: Debian 11, RHEL 9 and Amazon Linux 2023 ship 3.9) runs it on
any CPU, with no package index. The daemon itself runs from the image. ``ruff``'s per-file target
version (pyproject.toml) and ``vermin`` (tests/unit/test_installer.py) keep these modules at 3.9;
the kernel tests run the bundle on Debian 11's and Debian 13's own python3.
"""

from __future__ import annotations

import hashlib
import importlib.util
import marshal
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

# The import closure of `lvscare care --run-once` and `-C` (test_installer checks it is closed and
# that the pyproject's ruff per-file target version names the same modules).
NODE_MODULES = ("__init__", "__main__", "care", "careflags", "cli", "config", "effects", "errors",
                "files", "goleftovers", "health", "ipvs", "log", "netlink", "plan", "rtnl", "tls",
                "vip")
_FORMAT = 3  # bump when the layout of the zip changes
_MAIN = b"import sys\nfrom lvscare.cli import main\nsys.exit(main())\n"


@dataclass(frozen=True)
class Bundle:
    path: Path
    sha256: str
    size: int


def _add(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def _bytecode(source: bytes, name: str) -> bytes:
    """A legacy ``.pyc`` beside each module, which zipimport prefers when the node's Python is
    the installer's version. Unchecked-hash, so the zip's fixed timestamps do not matter; another
    Python version ignores it (magic number) and compiles the source in memory."""
    code = compile(source, name, "exec", dont_inherit=True)
    flags = 0b01  # hash-based, unchecked
    return (importlib.util.MAGIC_NUMBER + flags.to_bytes(4, "little")
            + importlib.util.source_hash(source) + marshal.dumps(code))


def _entries() -> dict[str, Path]:
    # From the package directory: an editable install lists no files of its own.
    import lvscare

    pkg = Path(lvscare.__file__).parent
    return {f"lvscare/{name}.py": pkg / f"{name}.py" for name in NODE_MODULES}


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lvscare-installer"


def build(dest: Path | None = None) -> Bundle:
    """``lvscare.pyz`` from what is installed; the same inputs give the same bytes.

    Compiling takes seconds, so the result is kept in ``dest`` (default: the user's cache) under
    a fingerprint of the inputs (paths, sizes, mtimes, Python version) and reused while it holds.
    It goes to every node and runs there as root, so a cached file is used only from a directory
    nobody else can write, and only when its content still has the digest in its name.
    """
    entries = _entries()
    h = hashlib.sha256(f"{_FORMAT} {sys.version}".encode())
    for name in sorted(entries):
        st = entries[name].stat()
        h.update(f"{name} {st.st_size} {st.st_mtime_ns}\n".encode())
    fingerprint = h.hexdigest()[:16]
    dest = dest or cache_dir()
    _private(dest)
    for cached in dest.glob(f"lvscare-{fingerprint}-*.pyz"):
        data = cached.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if cached.name == f"lvscare-{fingerprint}-{digest[:16]}.pyz":
            return Bundle(cached, digest, len(data))
        cached.unlink()  # changed since it was written: build it again
    tmp = dest / f".lvscare-{fingerprint}.{os.getpid()}"
    _write(tmp, entries)
    data = tmp.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    out = dest / f"lvscare-{fingerprint}-{digest[:16]}.pyz"
    os.replace(tmp, out)
    return Bundle(out, digest, len(data))


class CacheError(Exception):
    """The bundle cache cannot be trusted."""


def _private(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = directory.stat()
    if st.st_uid != os.geteuid():
        raise CacheError(f"bundle cache {directory} belongs to another user; set XDG_CACHE_HOME")
    if st.st_mode & 0o022:
        directory.chmod(0o700)  # ours: make it private before anything in it is used


def _write(out: Path, entries: dict[str, Path]) -> None:
    with open(out, "wb") as fh:
        fh.write(b"#!/usr/bin/env python3\n")
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name in sorted(entries):
                source = entries[name].read_bytes()
                _add(zf, name, source)
                if name.endswith(".py"):
                    _add(zf, name + "c", _bytecode(source, name))
            info = zipfile.ZipInfo("__main__.py", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, _MAIN)
    out.chmod(0o755)
