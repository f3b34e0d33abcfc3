"""lvscare as one self-contained zipapp for a node that cannot reach a package index.

Built from the distributions installed next to the installer, without their compiled extensions:
aiohttp, yarl, multidict, frozenlist, propcache and PyYAML all fall back to pure Python when their
extension is missing, so the same file runs on any CPU with the node's ``python3`` (>= 3.11).
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import importlib.util
import marshal
import os
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = "lvscare"
# Extensions, caches and type stubs: not needed to run, or not portable.
_SKIP = re.compile(r"\.(so|pyd|pyc|pyi|c|h|pyx|pxd)$|__pycache__/|\.dist-info/(RECORD|INSTALLER)$")
_FORMAT = 2  # bump when the layout of the zip changes
_MAIN = b"import sys\nfrom lvscare.cli import main\nsys.exit(main())\n"


@dataclass(frozen=True)
class Bundle:
    path: Path
    sha256: str
    size: int


def _closure(root: str) -> list[md.Distribution]:
    seen: dict[str, md.Distribution] = {}
    todo = [root]
    while todo:
        name = re.split(r"[ ;<>=!~\[(]", todo.pop(), maxsplit=1)[0].lower().replace("_", "-")
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # an optional or platform-only requirement that is not installed
        seen[name] = dist
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            todo.append(req)
    return list(seen.values())


def _add(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def _bytecode(source: bytes, name: str) -> bytes:
    """A legacy ``.pyc`` beside each module, which zipimport prefers: without it, every run of
    ``--run-once`` compiles aiohttp and friends again (seconds on a small node). Unchecked-hash,
    so the zip's fixed timestamps do not matter; another Python version ignores it (magic number)
    and compiles the source as before."""
    code = compile(source, name, "exec", dont_inherit=True)
    flags = 0b01  # hash-based, unchecked
    return (importlib.util.MAGIC_NUMBER + flags.to_bytes(4, "little")
            + importlib.util.source_hash(source) + marshal.dumps(code))


def _entries() -> dict[str, Path]:
    entries: dict[str, Path] = {}
    # lvscare itself from its package directory: an editable install lists no files of its own.
    import lvscare

    pkg = Path(lvscare.__file__).parent
    for src in pkg.rglob("*"):
        rel = src.relative_to(pkg.parent).as_posix()
        if src.is_file() and not _SKIP.search(rel):
            entries[rel] = src
    for dist in _closure(ROOT):
        if dist.metadata["Name"].lower() == ROOT:
            continue
        for f in dist.files or []:
            name = str(f).replace("\\", "/")
            if name.startswith("..") or _SKIP.search(name):
                continue
            src = Path(str(dist.locate_file(f)))
            if src.is_file():
                entries[name] = src
    return entries


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
