"""``installer join`` and ``installer clean``: put lvscare on nodes over SSH before kubeadm join.

Exit codes: 0 every node done, 1 some node failed (the table names the step and the reason),
2 bad input (nothing was contacted).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import stat
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lvscare.careflags import Parser as _Parser  # one line, exit 2, no abbreviations
from lvscare.config import DEFAULT_VIP
from lvscare_installer.plan import Paths, Plan, describe, table

if TYPE_CHECKING:
    from lvscare_installer.remote import Auth
    from lvscare_installer.steps import Progress

PASSWORD_ENV = "LVSCARE_SSH_PASSWORD"


class UsageError(Exception):
    pass


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node", action="append", default=[], help="node to act on: host[:port]; repeatable")
    p.add_argument("--user", default="root", help="SSH user; not root means sudo (default root)")
    p.add_argument("--passwd", help=f"SSH password (visible to ps: prefer --passwd-file or ${PASSWORD_ENV})")
    p.add_argument("--passwd-file", help="file whose first line is the SSH password")
    p.add_argument("--pk", help="SSH private key file")
    p.add_argument("--known-hosts", default=str(Path("~/.ssh/known_hosts").expanduser()),
                   help="known_hosts file to verify node keys against (default ~/.ssh/known_hosts)")
    p.add_argument("--accept-new-host-keys", action="store_true",
                   help="record keys of nodes not yet in known_hosts (a changed key is still refused)")
    p.add_argument("--vip", default=DEFAULT_VIP, help="virtual IP (default %(default)s)")
    p.add_argument("--port", default="6443", help="apiserver port, also the VIP's port (default 6443)")
    p.add_argument("--parallel", default="10", help="nodes at a time (default 10)")
    p.add_argument("--name", default=None, help="static pod name (default kube-sealos-lvscare)")
    p.add_argument("--manifest-path", default=Paths.manifests, help="static pod directory on the nodes")
    p.add_argument("--hosts-path", default=Paths.hosts, help="hosts file on the nodes")
    p.add_argument("--bin-path", default=Paths.binary, help="where lvscare goes on the nodes")
    p.add_argument("--state-dir", default=Paths.state, help="installer's working directory on the nodes")
    p.add_argument("--connect-timeout", default="10", help="SSH connect timeout, seconds (default 10)")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="installer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    join = sub.add_parser("join", help="bootstrap nodes: lvscare rules, hosts, static pod, kubeadm join")
    _common(join)
    join.add_argument("--master", action="append", default=[], help="apiserver address; repeatable")
    join.add_argument("--image", default=None, help="lvscare image for the static pod")
    join.add_argument("--pkg-url", default=None, help="offline package (file or http(s) URL) with init.sh")
    join.add_argument("--pkg-sha256", default=None,
                      help="sha256sum of the package; required with --pkg-url (init.sh runs as root)")
    join.add_argument("--options", action="append", default=[],
                      help="extra lvscare care arguments for the static pod, e.g. --options=--mode=link")
    join.add_argument("--dry-run", action="store_true", help="print the plan per node, change nothing")
    join.add_argument("--force", action="store_true",
                      help="join although the cluster check refuses (VIP in the service range, "
                           "kube-proxy in ipvs mode without the VIP excluded)")
    join.add_argument("--discover", action="store_true",
                      help="the static pod follows the control plane's members (static-pod --discover)")
    clean = sub.add_parser("clean", help="undo join: kubeadm reset, manifest, hosts block, rules")
    _common(clean)
    bundle = sub.add_parser("bundle", help="write the zipapp join uploads to each node, e.g. for "
                                           "air-gapped nodes: python3 FILE care --run-once ...")
    bundle.add_argument("-o", "--output", required=True, help="where to write it")
    return parser


def _int(value: str, flag: str, low: int, high: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"{flag}: {value!r} is not a number") from None
    if not low <= n <= high:
        raise UsageError(f"{flag}: {n} is out of range {low}-{high}")
    return n


def _ip(value: str, flag: str) -> str:
    from lvscare.config import parse_ip
    from lvscare.errors import UserError

    try:
        return str(parse_ip(value, flag))
    except UserError as exc:
        raise UsageError(str(exc)) from None


# A host name as DNS has them; it cannot start with "-", so ssh could never read it as an option.
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*\.?")
_USER = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")


def _node(text: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port``, as (host, port); a user or anything that is not a
    host name or an address is refused."""
    from lvscare.config import show
    from lvscare_installer.remote import split_host

    if "@" in text:
        raise UsageError(f"--node: {show(text)}: give the user with --user, not user@host")
    try:
        host, port = split_host(text)
    except ValueError:
        raise UsageError(f"--node: {show(text)} has no valid port") from None
    if not 1 <= port <= 65535:
        raise UsageError(f"--node: {show(text)} has a port out of range 1-65535")
    if ":" in host:
        return str(_ip(host, "--node")), port
    if not _HOSTNAME.fullmatch(host) or len(host) > 253:
        raise UsageError(f"--node: {show(text)} is not host[:port]")
    return host.lower().rstrip("."), port


def _nodes(values: Sequence[str]) -> tuple[str, ...]:
    nodes = [n.strip() for v in values for n in v.split(",") if n.strip()]
    if not nodes:
        raise UsageError("--node: at least one node is needed")
    seen: dict[tuple[str, int], str] = {}
    for n in nodes:
        key = _node(n)
        if key in seen:  # 10.0.0.5 and 10.0.0.5:22 are one node: two runs would race on it
            raise UsageError(f"--node: {seen[key]} and {n} are the same node")
        seen[key] = n
    return tuple(nodes)


MAX_SECRET_FILE = 64 << 10  # a password or a private key


def _password(args: argparse.Namespace) -> str | None:
    from lvscare.config import show

    if args.passwd_file:
        try:
            # Bounded: a pipe (<(pass show …)) is fine, /dev/zero must not fill the memory.
            with open(args.passwd_file, "rb") as fh:
                data = fh.read(MAX_SECRET_FILE + 1)
            if len(data) > MAX_SECRET_FILE:
                raise UsageError(f"--passwd-file: {show(args.passwd_file)} is larger than "
                                 f"{MAX_SECRET_FILE >> 10} KiB")
            first = data.decode("utf-8").splitlines()[:1]
        except OSError as exc:
            raise UsageError(f"--passwd-file: cannot read {show(args.passwd_file)}: "
                             f"{exc.strerror}") from None
        except (UnicodeDecodeError, ValueError):
            raise UsageError(f"--passwd-file: {show(args.passwd_file)} is not UTF-8 text") from None
        if not first or not first[0]:
            raise UsageError(f"--passwd-file: the first line of {show(args.passwd_file)} is empty")
        return first[0]
    if args.passwd is not None:
        print("installer: warning: --passwd is visible to other users in the process list; "
              f"prefer --passwd-file or ${PASSWORD_ENV}", file=sys.stderr)
        return str(args.passwd)
    return os.environ.get(PASSWORD_ENV) or None


def _node_path(value: str, flag: str) -> str:
    """A path on the node: absolute, printable, and no way for it to read as an option."""
    from lvscare.config import show

    if not value.startswith("/") or not value.isprintable() or "\n" in value:
        raise UsageError(f"{flag}: {show(value)} must be an absolute path on the node")
    if not value.strip("/"):
        raise UsageError(f"{flag}: {show(value)} is the node's root directory, not a place of "
                         "lvscare's")
    return value


def _package(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """--pkg-url and the checksum it must come with: init.sh runs as root on every node."""
    from lvscare.config import show

    pkg, digest = getattr(args, "pkg_url", None), getattr(args, "pkg_sha256", None)
    if not pkg:
        if digest:
            raise UsageError("--pkg-sha256 goes with --pkg-url")
        return None, None
    if not digest:
        raise UsageError("--pkg-url needs --pkg-sha256 (sha256sum of the package): its init.sh "
                         "runs as root on every node")
    digest = digest.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise UsageError(f"--pkg-sha256: {show(digest)} is not a SHA-256 in hex")
    if pkg.startswith(("http://", "https://")):
        if not pkg.isprintable() or any(c.isspace() for c in pkg):
            raise UsageError(f"--pkg-url: {show(pkg)} is not a URL")
        return pkg, digest
    if not Path(pkg).is_file():
        raise UsageError(f"--pkg-url: {show(pkg)} is not a file or an http(s) URL")
    import hashlib

    with open(pkg, "rb") as fh:
        actual = hashlib.file_digest(fh, "sha256").hexdigest()
    if actual != digest:
        raise UsageError(f"--pkg-url: {show(pkg)} has sha256 {actual}, not the --pkg-sha256 given")
    return pkg, digest


def _key(path: str | None) -> str | None:
    if path is None:
        return None
    import paramiko

    p = Path(path).expanduser()
    try:
        info = p.stat()
    except OSError as exc:
        raise UsageError(f"--pk: cannot read {p}: {exc.strerror}") from None
    # paramiko reads the whole file: a device (/dev/zero) or a huge file must not get there.
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"--pk: {p} is not a regular file")
    if info.st_size > MAX_SECRET_FILE:
        raise UsageError(f"--pk: {p} is larger than {MAX_SECRET_FILE >> 10} KiB: not a key")
    try:
        paramiko.PKey.from_path(p)
    except OSError as exc:
        raise UsageError(f"--pk: cannot read {p}: {exc.strerror}") from None
    except (paramiko.PasswordRequiredException, TypeError):
        # TypeError: cryptography's word for an OpenSSH key with a passphrase.
        raise UsageError(f"--pk: {p} is encrypted; give a copy without a passphrase") from None
    except (paramiko.SSHException, ValueError) as exc:
        raise UsageError(f"--pk: {p} is not a usable private key ({exc})") from None
    return str(p)


def build(args: argparse.Namespace) -> tuple[Plan, Auth]:
    from lvscare_installer.remote import Auth

    nodes = _nodes(args.node)
    masters: tuple[str, ...] = ()
    if args.command == "join":
        masters = tuple(_ip(m, "--master") for v in args.master for m in v.split(",") if m.strip())
        if not masters:
            raise UsageError("--master: at least one apiserver address is needed")
    vip = _ip(args.vip, "--vip")
    port = _int(args.port, "--port", 1, 65535)
    parallel = _int(args.parallel, "--parallel", 1, 1000)
    timeout = _int(args.connect_timeout, "--connect-timeout", 1, 600)
    pkg, pkg_sha256 = _package(args)
    for flag in ("manifest_path", "hosts_path", "bin_path", "state_dir"):
        _node_path(getattr(args, flag), f"--{flag.replace('_', '-')}")
    if not _USER.fullmatch(args.user):
        from lvscare.config import show

        raise UsageError(f"--user: {show(args.user)} is not a user name")
    password = _password(args)
    key = _key(args.pk)
    if password is None and key is None and not args.__dict__.get("dry_run"):
        raise UsageError(f"give --pk, --passwd-file or ${PASSWORD_ENV} (or --passwd)")
    paths = Paths(manifests=args.manifest_path.rstrip("/"), hosts=args.hosts_path,
                  binary=args.bin_path, state=args.state_dir.rstrip("/"))
    plan = Plan(masters=masters, nodes=nodes, user=args.user, vip=vip, port=port,
                image=getattr(args, "image", None) or "", pkg=pkg, pkg_sha256=pkg_sha256,
                parallel=parallel, paths=paths,
                options=tuple(o for v in getattr(args, "options", []) for o in v.split()),
                discover=bool(getattr(args, "discover", False)))
    auth = Auth(user=args.user, password=password, key_file=key, known_hosts=args.known_hosts,
                accept_new=args.accept_new_host_keys, connect_timeout=timeout, staging=paths.state)
    return plan, auth


def _progress() -> Progress:
    lock = threading.Lock()

    def report(node: str, step: str, outcome: str) -> None:
        with lock:
            print(f"[{node}] {step}: {outcome}", file=sys.stderr, flush=True)

    return report


def cmd_join(args: argparse.Namespace) -> int:
    from lvscare import staticpod
    from lvscare.errors import UserError

    plan, auth = build(args)
    name = args.name or staticpod.DEFAULT_NAME
    try:
        manifest = staticpod.render(staticpod.StaticPod(
            vip=plan.vs, masters=tuple(plan.real_servers), image=plan.image or staticpod.DEFAULT_IMAGE,
            name=name, options=plan.options, discover=plan.discover))
    except UserError as exc:
        raise UsageError(str(exc)) from None
    if args.dry_run:
        for node in plan.nodes:
            print(f"{node}:")
            for line in describe(plan, node):
                print(f"  {line}")
        return 0
    from lvscare_installer import bundle, steps

    try:
        for note in steps.check_cluster(plan, auth, args.force):
            print(f"installer: note: {note}", file=sys.stderr)
    except steps.ClusterRefused as exc:
        raise UsageError(str(exc)) from None
    try:
        b = bundle.build()
    except bundle.CacheError as exc:
        raise UsageError(str(exc)) from None
    inp = steps.Inputs(plan=plan, auth=auth, bundle=b, manifest_name=name,
                       manifest=manifest, token=steps.TokenSource(plan, auth))
    results = steps.join(inp, _progress())
    print(table(results))
    return 0 if all(r.ok for r in results) else 1


def cmd_clean(args: argparse.Namespace) -> int:
    from lvscare import staticpod
    from lvscare_installer import steps

    plan, auth = build(args)
    results = steps.clean(plan, auth, args.name or staticpod.DEFAULT_NAME, _progress())
    print(table(results))
    return 0 if all(r.ok for r in results) else 1


def cmd_bundle(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    from lvscare_installer import bundle

    out = Path(args.output)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            b = bundle.build(Path(tmp))
            shutil.copyfile(b.path, out)
        out.chmod(0o755)
    except OSError as exc:
        raise UsageError(f"--output: cannot write {out}: {exc.strerror or exc}") from None
    print(f"wrote {out} ({b.size} bytes, sha256 {b.sha256}); on a node: "
          f"python3 {out.name} care --run-once --vs VIP:PORT --rs MASTER:PORT ...")
    return 0


def _needs_ssh(command: str) -> None:
    """join and clean need fabric (the ``installer`` extra); say so in one line, not a traceback."""
    try:
        import fabric  # noqa: F401
        import paramiko  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"{command} needs the installer extra ({exc.name} is not installed): "
                         "pip install 'lvscare[installer]'") from None


def main(argv: Sequence[str] | None = None) -> int:
    # paramiko logs a node that does not speak SSH as a traceback on stderr; the result table
    # says it in one line.
    logging.getLogger("paramiko").setLevel(logging.CRITICAL + 1)
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        if args.command == "bundle":
            return cmd_bundle(args)
        _needs_ssh(args.command)
        return cmd_join(args) if args.command == "join" else cmd_clean(args)
    except UsageError as exc:
        from lvscare.config import one_line

        print(f"installer: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
