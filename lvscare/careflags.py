"""The flags of ``lvscare care`` and the step from them to a validated ``Config``.

Its own module because two commands need it: ``lvscare care`` itself, and ``lvscare static-pod``,
which checks with this very parser that the arguments it writes into a manifest would start.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, NoReturn

from lvscare.config import ALIASES, SETTINGS, Config, build_config, one_line, parse_ip, show, unicast
from lvscare.errors import UserError
from lvscare.files import read_text_file

HELP = {
    "interval": "time between health checks and reconciles: 5, 5s, 500ms (default 1s)",
    "iface": "dummy interface that holds the VIP in link mode (default lvscare)",
    "ip": "node address used as the VIP route's source in route mode "
          "(default: source of the node's route to the first real server)",
    "clean-on-exit": "remove the rules when the daemon stops (default false: keep serving)",
    "all-down": "when every real server fails: keep the last healthy ones (default) or empty",
    "drain-period": "weight 0 for this long before deleting a real server that answers badly",
    "metrics-address": "address:port for /metrics, /healthz and /status; 'off' disables",
    "discover-from": "kubeconfig (e.g. /etc/kubernetes/kubelet.conf): follow the kubernetes "
                     "Endpoints for the real servers (default off)",
    "discover-interval": "time between reads of the Endpoints, jittered +-20%% (default 30s)",
    "state-dir": "where the last discovered members are kept (default /var/lib/lvscare)",
    "scheduler": "IPVS scheduler: rr (default), wrr, lc, wlc, sh, dh, ...",
    "mode": "how node-local clients reach the VIP: route (default), link, none",
    "health-type": "http (default) or tcp (connect only)",
    "health-path": "probe path (default /readyz on HTTP/2, /healthz on HTTP/1.1)",
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
    "health-protocol": "auto (default: PING + readiness on HTTP/2 when the server speaks it, "
                       "else HTTP/1.1) or http1 (one HTTP/1.1 request every interval)",
    "readiness-interval": "time between readiness requests on HTTP/2 (default 5s)",
    "rise": "successes before a real server is put back (default 2)",
    "fall": "failures before a real server is taken out (default 2)",
}
BOOL_FLAGS = {"clean-on-exit", "health-insecure-skip-verify"}


class Parser(argparse.ArgumentParser):
    """Go's flag parser knows no abbreviations: ``--v=4`` must not be taken for ``--vs=4``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        # One line, exit 2, like every other input error.
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


class RaisingParser(Parser):
    def error(self, message: str) -> NoReturn:
        raise UserError(one_line(message))


def add_care_flags(p: argparse.ArgumentParser) -> None:
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
        names += ["--" + alias for alias, flag in ALIASES.items() if flag == setting.flag]
        if setting.flag in ("health-status", "health-req-headers"):  # repeated flags add up, as in Go
            kwargs["action"] = "append"
        p.add_argument(*names, dest=setting.flag, **kwargs)
    # Accepted so that Go lvscare command lines keep working; link mode here marks nothing.
    p.add_argument("--masqueradebit", default=s, help=argparse.SUPPRESS)


def load_config(values: dict[str, Any], env: Mapping[str, str],
                hosts: str | None = "/etc/hosts") -> Config:
    """``hosts``: where to look for ``lvscare.node.ip``; None where no node is involved (the
    static pod's arguments are checked on an admin machine)."""
    values = dict(values)
    values.pop("masqueradebit", None)
    path, name = values.pop("config", None), "--config"
    if path is None and env.get("CARE_CONFIG"):  # empty means unset, as in Go
        path, name = env["CARE_CONFIG"], "CARE_CONFIG"
    if path == "":
        raise UserError("--config: empty path")
    text = read_text_file(path, name) if path is not None else None
    source = "config" if path is None else path if path.isprintable() else show(path)
    cfg = build_config(values, env, text, source)
    return with_node_ip(cfg, env, hosts)


def node_ip_from_hosts(text: str) -> str | None:
    """The address sealos writes into /etc/hosts as ``lvscare.node.ip`` on multi-homed nodes."""
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and "lvscare.node.ip" in fields[1:]:
            return fields[0]
    return None


def with_node_ip(cfg: Config, env: Mapping[str, str], hosts: str | None = "/etc/hosts") -> Config:
    """Route mode's node address as Go lvscare finds it when --ip is not given: the
    ``LVSCARE_NODE_IP`` variable of sealos's manifest, else ``lvscare.node.ip`` in /etc/hosts (a
    hostNetwork pod sees the node's). One of the wrong family is left for the route's own choice."""
    if cfg.ip is not None or not any(vs.mode == "route" for vs in cfg.virtual_servers):
        return cfg
    found, where = env.get("LVSCARE_NODE_IP") or None, "LVSCARE_NODE_IP"
    if found is None and hosts is not None:
        try:
            found, where = node_ip_from_hosts(read_text_file(hosts, hosts)), f"{hosts} lvscare.node.ip"
        except UserError:
            return cfg  # no hosts file to read: nothing given
    if found is None:
        return cfg
    ip = unicast(parse_ip(found, where), where, found)
    if any(vs.mode == "route" and vs.endpoint.ip.version != ip.version for vs in cfg.virtual_servers):
        return cfg
    return replace(cfg, ip=ip)


def care_values(ns: argparse.Namespace) -> dict[str, Any]:
    """The flags given (only those), keyed by flag name, as ``build_config`` takes them."""
    return {k: v for k, v in vars(ns).items() if k != "command"}


def parse_care_args(args: list[str]) -> dict[str, Any]:
    """``care ARGS...`` as ``lvscare care`` would parse it; a usage error raises UserError."""
    if args[:1] != ["care"]:
        raise UserError(f"not an lvscare care command line: {args[:1]}")
    parser = RaisingParser(prog="lvscare care")
    add_care_flags(parser)
    return care_values(parser.parse_args(args[1:]))
