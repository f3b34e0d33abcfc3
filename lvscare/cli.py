"""Command line: ``lvscare care``, ``lvscare version`` and friends. Exit codes: 0 ok, 2 bad input,
1 kernel or runtime failure."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
from collections.abc import Callable, Sequence

from lvscare import __version__, log
from lvscare.careflags import Parser, RaisingParser, add_care_flags, care_values, load_config
from lvscare.config import DEFAULT_METRICS_ADDRESS, DEFAULT_VS, one_line, parse_bool, split_list
from lvscare.errors import KernelError, RuntimeFailure, UserError


def make_parser(raise_errors: bool = False) -> argparse.ArgumentParser:
    """``raise_errors``: a usage error raises UserError instead of printing and exiting."""
    cls = RaisingParser if raise_errors else Parser
    parser = cls(prog="lvscare", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=cls)
    care = sub.add_parser("care", help="program and health-check an IPVS virtual server")
    add_care_flags(care)
    demo = sub.add_parser("demo", help="show a failover end to end (boots a test kernel if needed)")
    demo.add_argument("--mode", choices=("route", "link"), default="route")
    st = sub.add_parser("status", help="show what a running daemon sees")
    st.add_argument("--address", default=os.environ.get("CARE_METRICS_ADDRESS", DEFAULT_METRICS_ADDRESS),
                    help="the daemon's --metrics-address (default %(default)s)")
    st.add_argument("--output", "-o", choices=("table", "json"), default="table")
    sp = sub.add_parser("static-pod", help="write the static pod manifest that runs lvscare care")
    sp.add_argument("--vip", default=DEFAULT_VS, help="virtual server address:port (--vs)")
    sp.add_argument("--masters", action="append", default=[],
                    help="apiserver address[:port]; repeat or comma-separate (become --rs)")
    sp.add_argument("--image", default=None, help="lvscare image (default %(default)s)")
    sp.add_argument("--name", default=None, help="pod name and file name <name>.yaml")
    sp.add_argument("--path", default=None, help="manifest directory (default /etc/kubernetes/manifests)")
    sp.add_argument("--options", action="append", default=[],
                    help="extra arguments for lvscare care, e.g. --options=--mode=link; repeatable")
    # pflag booleans, as sealctl's: --print, --print=true, --print=false.
    sp.add_argument("--print", nargs="?", const="true", default="false",
                    help="print the manifest instead of writing it")
    sp.add_argument("--set-img", dest="set_img", nargs="?", const="true", default="false",
                    help="only change the image of the existing manifest")
    sp.add_argument("--discover", nargs="?", const="true", default="false",
                    help="follow the control plane's members with the kubelet's kubeconfig "
                         "(mounts /etc/kubernetes/kubelet.conf, /var/lib/kubelet/pki, /var/lib/lvscare)")
    # sealctl's root flag; accepted so its command lines work, nothing more to log here.
    sp.add_argument("--debug", nargs="?", const="true", default="false", help=argparse.SUPPRESS)
    version = sub.add_parser("version", help="print the version")
    version.add_argument("--short", action="store_true")
    return parser


def version_info() -> dict[str, str]:
    return {
        "gitVersion": f"v{__version__}",
        "pythonVersion": platform.python_version(),
        "platform": f"{sys.platform}/{platform.machine()}",
    }


def cmd_version(args: argparse.Namespace) -> int:
    if args.short:
        print(f"v{__version__}")
    else:
        print(json.dumps(version_info(), indent=2))
    return 0


def cmd_care(args: argparse.Namespace) -> int:
    values = care_values(args)
    cfg = load_config(values, dict(os.environ))
    log.configure(cfg.log_level, cfg.log_format)
    from lvscare import care

    if cfg.clean:
        asyncio.run(care.clean(cfg))
        return 0
    if cfg.run_once:
        asyncio.run(care.run_once(cfg))
        return 0
    from lvscare import daemon

    env = dict(os.environ)
    return daemon.run(cfg, reload=lambda: load_config(values, env))


def cmd_static_pod(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lvscare import staticpod

    to_stdout = parse_bool(args.print, "--print")
    set_img = parse_bool(args.set_img, "--set-img")
    parse_bool(args.debug, "--debug")
    image = staticpod.check_image(args.image or staticpod.DEFAULT_IMAGE)
    name = staticpod.check_name(args.name or staticpod.DEFAULT_NAME)
    path = Path(args.path or staticpod.DEFAULT_PATH) / f"{name}.yaml"
    if set_img:
        if not path.exists():
            # As sealctl: sealos calls --set-img on every node, with or without lvscare.
            print(f"lvscare static-pod: {path} does not exist; nothing to update", file=sys.stderr)
            return 0
        text = staticpod.set_image(path, image)
    else:
        options = split_list(args.options, "--options")  # a pflag string slice: commas
        pod = staticpod.StaticPod(vip=args.vip, masters=tuple(args.masters), image=image, name=name,
                                  options=tuple(options),
                                  discover=parse_bool(args.discover, "--discover"))
        text = staticpod.render(pod)
        if not to_stdout:
            # Written here, so read here: the probes' certificates must be what the daemon accepts,
            # or the pod would exit 2 at every start. (--print may run on another machine.)
            staticpod.check_certificate_files(staticpod.care_args(pod.vip, pod.masters, pod.options))
    if to_stdout:
        sys.stdout.write(text)
        return 0
    try:
        staticpod.write_atomic(path, text)
    except OSError as exc:
        raise UserError(f"--path: cannot write {path}: {exc.strerror}") from None
    print(f"wrote {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    # The demo is built on the test rig, which does not ship (rig/, installed by scripts/setup).
    import importlib

    try:
        demo = importlib.import_module("lvscare_rig.demo")
    except ImportError:
        raise UserError("the demo runs from a source checkout: scripts/setup && "
                        ".venv/bin/lvscare demo") from None
    code: int = demo.main(args.mode)
    return code


def cmd_status(args: argparse.Namespace) -> int:
    from lvscare import status

    return status.main(args.address, args.output)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "status": cmd_status,
    "care": cmd_care,
    "demo": cmd_demo,
    "static-pod": cmd_static_pod,
    "version": cmd_version,
}


def sealctl_argv(argv: list[str]) -> list[str]:
    """``static-pod`` as sealctl takes it: the word ``lvscare`` after it (``sealctl static-pod
    lvscare``), and ``--options``/``--masters`` as pflag string slices, whose value may begin
    with ``-`` (sealos writes ``--options --health-status --options 401``)."""
    if argv[:1] != ["static-pod"]:
        return argv
    rest = argv[2:] if argv[1:2] == ["lvscare"] else argv[1:]
    out = ["static-pod"]
    i = 0
    while i < len(rest):
        if rest[i] in ("--options", "--masters") and i + 1 < len(rest):
            out.append(f"{rest[i]}={rest[i + 1]}")
            i += 2
            continue
        out.append(rest[i])
        i += 1
    return out


def _in_bundle() -> bool:
    return ".pyz" in (__file__ or "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    argv = sealctl_argv(list(sys.argv[1:] if argv is None else argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return int(exc.code or 0)
    try:
        return COMMANDS[args.command](args)
    except ImportError:
        if not _in_bundle():
            raise
        # The node bundle (installer bundle) carries what runs before a node joins, no more.
        print(f"lvscare {args.command}: not in this node bundle, which runs `care --run-once` and "
              "`care -C` only; use the image or `pip install lvscare`", file=sys.stderr)
        return 2
    except UserError as exc:
        print(f"lvscare: error: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KernelError as exc:
        log.get_logger().error("failed", error=str(exc))
        return exc.exit_code
    except RuntimeFailure as exc:
        print(f"lvscare: error: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
