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
from typing import Any, NoReturn

import structlog

from lvscare import __version__, log
from lvscare.config import SETTINGS, Config, build_config
from lvscare.errors import KernelError, UserError

HELP = {
    "interval": "time between health checks and reconciles: 5, 5s, 500ms (default 1s)",
    "iface": "dummy interface that holds the VIP in link mode (default lvscare)",
    "ip": "node address used as the VIP route's source in route mode "
          "(default: source of the node's route to the first real server)",
    "clean-on-exit": "remove the rules when the daemon stops (default false: keep serving)",
    "all-down": "when every real server fails: keep the last healthy ones (default) or empty",
    "drain-period": "weight 0 for this long before deleting a real server that answers badly",
    "metrics-address": "address:port for /metrics, /healthz and /status; 'off' disables",
    "scheduler": "IPVS scheduler: rr (default), wrr, lc, wlc, sh, dh, ...",
    "mode": "how node-local clients reach the VIP: route (default), link, none",
    "health-type": "http (default) or tcp (connect only)",
    "health-path": "probe path (default /healthz)",
    "health-schem": "probe scheme: https (default) or http",
    "health-req-method": "probe method (default GET)",
    "health-req-headers": "probe headers, k=v[,k=v]",
    "health-req-body": "probe body",
    "health-status": "extra HTTP status codes (>= 400) that count as healthy, e.g. 401",
    "health-insecure-skip-verify": "do not verify the apiserver certificate (default true)",
    "health-timeout": "hard timeout of one probe (default 800ms)",
    "health-ca": "CA bundle to verify apiserver certificates",
    "health-cert": "client certificate for probes",
    "health-key": "client key for probes",
    "rise": "successes before a real server is put back (default 2)",
    "fall": "failures before a real server is taken out (default 2)",
}
BOOL_FLAGS = {"clean-on-exit", "health-insecure-skip-verify"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, exit 2, like every other input error.
        self.exit(2, f"{self.prog}: error: {message}\n")


class _RaisingParser(_Parser):
    def error(self, message: str) -> NoReturn:
        raise UserError(message)


def _add_care_flags(p: argparse.ArgumentParser) -> None:
    s = argparse.SUPPRESS
    p.add_argument("--vs", default=s, help="virtual server address:port, e.g. 10.103.97.2:6443")
    p.add_argument("--rs", action="append", default=s,
                   help="real server address:port; repeat or comma-separate")
    p.add_argument("--config", default=s, help="YAML file of virtual servers (docs/config.md)")
    p.add_argument("--run-once", dest="run-once", nargs="?", const="true", default=s,
                   help="create the rules and exit, no health checks")
    p.add_argument("-C", "--clean", nargs="?", const="true", default=s,
                   help="remove the virtual server and what its mode created, then exit")
    p.add_argument("--logger", default=s, help="INFO (default) or DEBG, as Go lvscare")
    p.add_argument("--log-level", dest="log-level", default=s, help="debug, info (default), warning, error")
    p.add_argument("--log-format", dest="log-format", default=s, help="auto (default), json or console")
    for setting in SETTINGS:
        kwargs: dict[str, Any] = {"default": s, "help": HELP.get(setting.flag)}
        if setting.flag in BOOL_FLAGS:
            kwargs.update(nargs="?", const="true")
        names = ["--" + setting.flag]
        if setting.flag == "iface":
            names.insert(0, "-i")
        if setting.flag == "health-schem":
            names.append("--health-scheme")
        if setting.flag == "health-status":
            kwargs["action"] = "append"
        p.add_argument(*names, dest=setting.flag, **kwargs)
    # Accepted so that Go lvscare command lines keep working; link mode here marks nothing.
    p.add_argument("--masqueradebit", default=s, help=argparse.SUPPRESS)


def make_parser(raise_errors: bool = False) -> argparse.ArgumentParser:
    """``raise_errors``: a usage error raises UserError instead of printing and exiting."""
    cls = _RaisingParser if raise_errors else _Parser
    parser = cls(prog="lvscare", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=cls)
    care = sub.add_parser("care", help="program and health-check an IPVS virtual server")
    _add_care_flags(care)
    demo = sub.add_parser("demo", help="show a failover end to end (boots a test kernel if needed)")
    demo.add_argument("--mode", choices=("route", "link"), default="route")
    st = sub.add_parser("status", help="show what a running daemon sees")
    st.add_argument("--address", default=os.environ.get("CARE_METRICS_ADDRESS", "127.0.0.1:10262"),
                    help="the daemon's --metrics-address (default 127.0.0.1:10262)")
    st.add_argument("--output", "-o", choices=("table", "json"), default="table")
    sp = sub.add_parser("static-pod", help="write the static pod manifest that runs lvscare care")
    sp.add_argument("--vip", default="10.103.97.2:6443", help="virtual server address:port (--vs)")
    sp.add_argument("--masters", action="append", default=[],
                    help="apiserver address[:port]; repeat or comma-separate (become --rs)")
    sp.add_argument("--image", default=None, help="lvscare image (default %(default)s)")
    sp.add_argument("--name", default=None, help="pod name and file name <name>.yaml")
    sp.add_argument("--path", default=None, help="manifest directory (default /etc/kubernetes/manifests)")
    sp.add_argument("--options", action="append", default=[],
                    help="extra arguments for lvscare care, e.g. --options=--mode=link; repeatable")
    sp.add_argument("--print", action="store_true", help="print the manifest instead of writing it")
    sp.add_argument("--set-img", action="store_true",
                    help="only change the image of the existing manifest")
    version = sub.add_parser("version", help="print the version")
    version.add_argument("--short", action="store_true")
    return parser


def load_config(values: dict[str, Any], env: dict[str, str]) -> Config:
    values = dict(values)
    values.pop("masqueradebit", None)
    path = values.pop("config", None) or env.get("CARE_CONFIG")
    text = None
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise UserError(f"--config {path}: {exc.strerror}") from None
    return build_config(values, env, text, path or "config")


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
    values = {k: v for k, v in vars(args).items() if k != "command"}
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

    image = args.image or staticpod.DEFAULT_IMAGE
    name = args.name or staticpod.DEFAULT_NAME
    path = Path(args.path or staticpod.DEFAULT_PATH) / f"{name}.yaml"
    if args.set_img:
        text = staticpod.set_image(path, image)
    else:
        options = [o for opt in args.options for o in opt.split()]
        text = staticpod.render(staticpod.StaticPod(
            vip=args.vip, masters=tuple(args.masters), image=image, name=name, options=tuple(options)))
    if args.print:
        sys.stdout.write(text)
        return 0
    try:
        staticpod.write_atomic(path, text)
    except OSError as exc:
        raise UserError(f"--path: cannot write {path}: {exc.strerror}") from None
    print(f"wrote {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from lvscare import demo

    return demo.main(args.mode)


def cmd_status(args: argparse.Namespace) -> int:
    from lvscare import status

    try:
        return status.main(args.address, args.output)
    except KernelError as exc:
        print(f"lvscare: error: {exc}", file=sys.stderr)
        return 1


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "status": cmd_status,
    "care": cmd_care,
    "demo": cmd_demo,
    "static-pod": cmd_static_pod,
    "version": cmd_version,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return int(exc.code or 0)
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"lvscare: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KernelError as exc:
        structlog.get_logger("lvscare").error("failed", error=str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
