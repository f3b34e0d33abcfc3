"""The configuration model and everything that turns user input into it.

One model serves flags, ``CARE_*`` environment variables and a YAML file. Precedence, highest first:
command-line flag, environment variable, YAML file, built-in default. Every check that can fail on
user input runs here, so that a bad value stops the program before anything in the kernel changes.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
import reprlib
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Union

from lvscare.errors import UserError

# typing.Union: a runtime alias, evaluated by the nodes' python3 >= 3.9 too.
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh")
MODES = ("route", "link", "none")
HEALTH_TYPES = ("http", "tcp")
HEALTH_PROTOCOLS = ("auto", "http1")
ALL_DOWN = ("keep", "empty")
DEFAULT_VIP = "10.103.97.2"
DEFAULT_PORT = 6443
DEFAULT_VS = f"{DEFAULT_VIP}:{DEFAULT_PORT}"
METRICS_PORT = 10262
DEFAULT_IFACE = "lvscare"  # the dummy interface of link mode
# The node label of nodes that run lvscare as a static pod: the Helm chart's DaemonSet skips them.
STATIC_POD_LABEL = "lvscare.io/static-pod"
DEFAULT_METRICS_ADDRESS = f"127.0.0.1:{METRICS_PORT}"
DEFAULT_STATE_DIR = "/var/lib/lvscare"


@dataclass(frozen=True)
class Endpoint:
    """An IP address and a TCP port, written ``1.2.3.4:6443`` or ``[fd00::1]:6443``."""

    ip: IPAddress
    port: int

    def __lt__(self, other: Endpoint) -> bool:
        # ipaddress refuses to order IPv4 against IPv6; plans sort mixed tables.
        return (self.ip.version, int(self.ip), self.port) < (
            other.ip.version, int(other.ip), other.port)

    @property
    def family(self) -> int:
        return socket.AF_INET if self.ip.version == 4 else socket.AF_INET6

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if self.ip.version == 6 else f"{self.ip}:{self.port}"


RsKey = tuple[Endpoint, Endpoint]  # a real server of a virtual server: (VIP:port, address:port)


@dataclass(frozen=True)
class RealServer:
    endpoint: Endpoint
    weight: int = 1


@dataclass(frozen=True)
class HealthCheck:
    type: Literal["http", "tcp"] = "http"
    path: str | None = None  # None: the protocol's own (path_for)
    scheme: Literal["http", "https"] = "https"
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""
    status: frozenset[int] = frozenset()
    insecure_skip_verify: bool = True
    timeout: float = 0.8
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    rise: int = 2
    fall: int = 2
    # auto: HTTP/2 when the server negotiates it (liveness by PING every interval, readiness by a
    # request every readiness_interval), else HTTP/1.1 as http1: one request every interval.
    protocol: Literal["auto", "http1"] = "auto"
    readiness_interval: float = 5.0

    def path_for(self, h2: bool) -> str:
        """The request's path when none is set: readiness (/readyz) beside HTTP/2's PING, Go
        lvscare's /healthz for the HTTP/1.1 probe that is both liveness and readiness."""
        if self.path is not None:
            return self.path
        return "/readyz" if h2 else "/healthz"


@dataclass(frozen=True)
class VirtualServer:
    endpoint: Endpoint
    real_servers: tuple[RealServer, ...]
    scheduler: str = "rr"
    mode: Literal["route", "link", "none"] = "route"
    health: HealthCheck = field(default_factory=HealthCheck)


@dataclass(frozen=True)
class Config:
    virtual_servers: tuple[VirtualServer, ...]
    interval: float = 1.0
    iface: str = DEFAULT_IFACE
    ip: IPAddress | None = None
    run_once: bool = False
    clean: bool = False
    clean_on_exit: bool = False
    all_down: Literal["keep", "empty"] = "keep"
    drain_period: float = 10.0
    log_level: str = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    metrics_address: str = DEFAULT_METRICS_ADDRESS
    config_file: str | None = None
    # Control-plane discovery (discovery.py): off without a kubeconfig.
    discover_from: str | None = None
    discover_interval: float = 30.0
    state_dir: str = DEFAULT_STATE_DIR


# ---------------------------------------------------------------------------------------------
# Scalar parsers. Each raises UserError naming the bad value.
#
# Values reach these from flags and CARE_* variables (always text) and from YAML (text, numbers,
# booleans, null, lists, mappings). A value of the wrong type is refused, never converted: YAML's
# null must not become the text "None", nor 1.5 the count 1.

_SHOW = reprlib.Repr()
_SHOW.maxstring, _SHOW.maxother, _SHOW.maxlevel, _SHOW.maxlist, _SHOW.maxdict = 60, 60, 2, 4, 4


def show(value: object, width: int = 60) -> str:
    """A value as an error message may echo it: quoted, escaped (no control characters reach a
    terminal or a log) and short (an alias bomb must not be expanded to print it)."""
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= width else text[:width - 4] + "..." + text[-1]
    return _SHOW.repr(value)


def one_line(text: str) -> str:
    """``text`` with every character that is not printable escaped: an error message stays one
    line and carries no terminal escape, whatever value it quotes (argparse quotes raw)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _text(value: object, name: str, what: str = "text") -> str:
    if not isinstance(value, str):
        raise UserError(f"{name}: {show(value)} is not {what}")
    if not value.isprintable():
        raise UserError(f"{name}: {show(value)} has control characters")
    return value


def _digits(text: str) -> bool:
    # str.isdigit() is true for fullwidth and Arabic-Indic digits too, which int() accepts.
    return text.isascii() and text.isdigit()


_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_HINT = "is not a duration (use 5, 5s or 500ms)"


def parse_duration(value: object, name: str = "duration", low: float = 0.0,
                   high: float = 86400.0) -> float:
    """Seconds from ``5``, ``5s``, ``500ms``, ``1m30s`` (a bare number means seconds, as in Go
    lvscare), within ``low``..``high``."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UserError(f"{name}: {show(value)} {_DURATION_HINT}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip()
        if len(text) > 40:
            raise UserError(f"{name}: {show(value)} {_DURATION_HINT}")
        if re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", text):
            seconds = float(text)
        else:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise UserError(f"{name}: {show(value)} {_DURATION_HINT}")
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if not math.isfinite(seconds):
        raise UserError(f"{name}: {show(value)} {_DURATION_HINT}")
    if seconds < 0:
        raise UserError(f"{name}: {show(value)} must not be negative")
    if not low <= seconds <= high:
        raise UserError(f"{name}: {show(value)} is out of range {_seconds(low)}-{_seconds(high)}")
    return seconds


def _seconds(s: float) -> str:
    if s and s < 1:
        return f"{s * 1000:g}ms"
    return f"{s / 3600:g}h" if s >= 3600 and s % 3600 == 0 else f"{s:g}s"


def parse_bool(value: object, name: str = "flag") -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "t", "true", "yes", "y", "on"):
            return True
        if text in ("0", "f", "false", "no", "n", "off"):
            return False
    raise UserError(f"{name}: {show(value)} is not a boolean (use true or false)")


def parse_ip(value: object, name: str = "address") -> IPAddress:
    text = _text(value, name, "an IP address").strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if "%" in text:
        # IPVS, routes and /etc/hosts have no zones; a zone id is also free text.
        raise UserError(f"{name}: {show(value)} has a zone id (%…), which IPVS cannot use")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise UserError(f"{name}: {show(value)} is not an IP address") from None


def unicast(ip: IPAddress, name: str, value: object) -> IPAddress:
    """Refuse what can never be a real server, a VIP or a node's own source address."""
    if ip.is_unspecified or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        raise UserError(f"{name}: {show(value)} is not a usable unicast address")
    return ip


def parse_port(value: object, name: str, whole: object) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or
                                       (isinstance(value, str) and _digits(value.strip()))):
        raise UserError(f"{name}: {show(whole)} has no valid port")
    if isinstance(value, str) and len(value.strip().lstrip("0")) > 5:
        # Before int(): thousands of digits are a ValueError of Python's conversion limit.
        raise UserError(f"{name}: the port in {show(whole)} is out of range 1-65535")
    port = int(value)
    if not 1 <= port <= 65535:
        raise UserError(f"{name}: port {port} in {show(whole)} is out of range 1-65535")
    return port


def parse_endpoint(value: object, name: str = "address") -> Endpoint:
    """``1.2.3.4:6443`` or ``[fd00::1]:6443``. Host names are refused: IPVS works on addresses."""
    text = _text(value, name, "an address:port").strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise UserError(f"{name}: {show(value)} is not [IPv6]:port")
    else:
        if text.count(":") > 1:
            raise UserError(f"{name}: {show(value)} is an IPv6 address without brackets; "
                            "write [addr]:port")
        host, sep, port = text.rpartition(":")
        if not sep:
            raise UserError(f"{name}: {show(value)} has no port (expected address:port)")
    if not host:
        raise UserError(f"{name}: {show(value)} has no address")
    if "[" in host or "]" in host:
        raise UserError(f"{name}: {show(value)} is not [IPv6]:port")
    ip = unicast(parse_ip(host, name), name, value)
    return Endpoint(ip, parse_port(port, name, value))


def split_list(values: object, name: str = "list") -> list[str]:
    """Repeatable flags also take comma-separated values, as Go's string slices do."""
    items = [values] if isinstance(values, str) else values
    if not isinstance(items, (list, tuple)):
        raise UserError(f"{name}: {show(values)} is not a list")
    out = []
    for item in items:
        if not isinstance(item, (str, int)) or isinstance(item, bool):
            raise UserError(f"{name}: {show(item)} is not text")
        out += [part.strip() for part in str(item).split(",") if part.strip()]
    return out


# RFC 9110 token characters: a method and a header name are made of these only.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")


def parse_headers(values: object, name: str) -> tuple[tuple[str, str], ...]:
    """``k=v`` pairs (comma-separated, as Go's stringToString); a value ``v1,v2`` stays one header."""
    pairs: list[tuple[str, str]] = []
    if isinstance(values, Mapping):
        pairs = [(k, v) for k, v in values.items()]
    else:
        items = [values] if isinstance(values, str) else values
        if not isinstance(items, (list, tuple)):
            raise UserError(f"{name}: {show(values)} is not key=value pairs")
        for item in items:
            for part in re.split(r",(?=[^,=]+=)", _text(item, name, "key=value")):
                key, sep, val = part.partition("=")
                if not sep or not key.strip():
                    raise UserError(f"{name}: {show(part)} is not key=value")
                pairs.append((key.strip(), val.strip()))
    for key, val in pairs:
        if not isinstance(key, str) or not _TOKEN.fullmatch(key):
            raise UserError(f"{name}: {show(key)} is not a header name")
        if not isinstance(val, (str, int)) or isinstance(val, bool):
            raise UserError(f"{name}: header {key}: {show(val)} is not text")
        _text(str(val), f"{name}: header {key}")
    return tuple((k, str(v)) for k, v in pairs)


def parse_status_codes(values: object, name: str) -> frozenset[int]:
    codes: set[int] = set()
    for raw in split_list(values if isinstance(values, (list, tuple)) else [values], name):
        if not _digits(raw):
            raise UserError(f"{name}: {show(raw)} is not an HTTP status code")
        code = int(raw)
        if not 100 <= code <= 599:
            raise UserError(f"{name}: {code} is not an HTTP status code (100-599)")
        codes.add(code)
    return frozenset(codes)


def parse_positive_int(value: object, name: str, minimum: int = 1, maximum: int = 1000) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or
                                       (isinstance(value, str) and _digits(value.strip()))):
        raise UserError(f"{name}: {show(value)} is not a whole number")
    number = int(value)
    if number < minimum:
        raise UserError(f"{name}: {number} must be at least {minimum}")
    if number > maximum:
        raise UserError(f"{name}: {number} is above {maximum}")
    return number


def parse_choice(value: object, name: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise UserError(f"{name}: {show(value)} is not one of {', '.join(choices)}")
    return value


def parse_mode(value: object, name: str = "--mode") -> str:
    # Go lvscare spells "IPVS only" as an empty --mode.
    text = _text(value, name, "a mode")
    return parse_choice(text.strip() or "none", name, MODES)


def parse_real_server(value: str | Mapping[str, Any], name: str) -> RealServer:
    if isinstance(value, Mapping):
        _check_keys(value, {"address", "weight"}, name)
        if "address" not in value:
            raise UserError(f"{name}: a real server needs 'address'")
        weight = parse_positive_int(value.get("weight", 1), f"{name}.weight", minimum=0,
                                    maximum=65535)
        return RealServer(parse_endpoint(value["address"], name), weight)
    return RealServer(parse_endpoint(value, name))


# ---------------------------------------------------------------------------------------------
# Settings: one table maps every flag to its YAML key and parser.

Parser = Any  # (raw value, display name) -> parsed value


@dataclass(frozen=True)
class Setting:
    flag: str  # long flag without dashes, e.g. "health-path"; env is CARE_HEALTH_PATH
    key: str  # attribute of Config, VirtualServer or HealthCheck
    scope: Literal["config", "vs", "health"]
    parse: Parser
    yaml_key: str | None = None  # camelCase key in the YAML file, None if flag-only


def _duration(low: float, high: float) -> Parser:
    return lambda v, n: parse_duration(v, n, low, high)


def _interval(value: Any, name: str) -> float:
    seconds = parse_duration(value, name, 0, math.inf)
    if seconds == 0:
        # Go lvscare read 0 as "its default, 5s"; saying so beats a silent change of meaning.
        raise UserError(f"{name}: 0 is not an interval (Go lvscare took it for its default 5s; "
                        "leave the setting out for lvscare's 1s)")
    if not 0.1 <= seconds <= 3600:
        raise UserError(f"{name}: {show(value)} is out of range 100ms-1h")
    return seconds


def _path(value: Any, name: str) -> str:
    text = _text(value, name, "a path").strip()
    if not text or " " in text or not text.isascii():
        raise UserError(f"{name}: {show(value)} is not a request path (ASCII, no spaces)")
    return text if text.startswith("/") else "/" + text


def _method(value: Any, name: str) -> str:
    text = _text(value, name, "an HTTP method").strip().upper()
    if not _TOKEN.fullmatch(text):
        raise UserError(f"{name}: {show(value)} is not an HTTP method")
    return text


def _body(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{name}: {show(value)} is not text")
    return value


def _file(value: Any, name: str) -> str:
    text = _text(value, name, "a file path")
    if not text:
        raise UserError(f"{name}: empty path")
    return text


SETTINGS: tuple[Setting, ...] = (
    # A probe loop faster than 100 ms is a load test of the apiservers, not health checking.
    Setting("interval", "interval", "config", lambda v, n: _interval(v, n), "interval"),
    Setting("iface", "iface", "config", lambda v, n: _iface(v, n), "iface"),
    Setting("ip", "ip", "config", lambda v, n: unicast(parse_ip(v, n), n, v), "ip"),
    Setting("clean-on-exit", "clean_on_exit", "config", parse_bool, "cleanOnExit"),
    Setting("all-down", "all_down", "config", lambda v, n: parse_choice(v, n, ALL_DOWN), "allDown"),
    Setting("drain-period", "drain_period", "config", _duration(0, 86400), "drainPeriod"),
    Setting("metrics-address", "metrics_address", "config", lambda v, n: _listen(v, n),
            "metricsAddress"),
    Setting("discover-from", "discover_from", "config", _file, "discoverFrom"),
    Setting("discover-interval", "discover_interval", "config", _duration(1, 3600), "discoverInterval"),
    Setting("state-dir", "state_dir", "config", _file, "stateDir"),
    Setting("scheduler", "scheduler", "vs", lambda v, n: parse_choice(v, n, SCHEDULERS), "scheduler"),
    Setting("mode", "mode", "vs", parse_mode, "mode"),
    Setting("health-type", "type", "health", lambda v, n: parse_choice(v, n, HEALTH_TYPES), "type"),
    Setting("health-path", "path", "health", _path, "path"),
    Setting("health-schem", "scheme", "health", lambda v, n: parse_choice(v, n, ("http", "https")),
            "scheme"),
    Setting("health-req-method", "method", "health", _method, "method"),
    Setting("health-req-headers", "headers", "health", parse_headers, "headers"),
    Setting("health-req-body", "body", "health", _body, "body"),
    Setting("health-status", "status", "health", parse_status_codes, "status"),
    Setting("health-insecure-skip-verify", "insecure_skip_verify", "health", parse_bool,
            "insecureSkipVerify"),
    Setting("health-timeout", "timeout", "health", _duration(0.01, 60), "timeout"),
    Setting("health-ca", "ca", "health", _file, "ca"),
    Setting("health-cert", "cert", "health", _file, "cert"),
    Setting("health-key", "key", "health", _file, "key"),
    Setting("health-protocol", "protocol", "health",
            lambda v, n: parse_choice(v, n, HEALTH_PROTOCOLS), "protocol"),
    Setting("readiness-interval", "readiness_interval", "health", _duration(0.1, 3600),
            "readinessInterval"),
    Setting("rise", "rise", "health", lambda v, n: parse_positive_int(v, n, 1, 100), "rise"),
    Setting("fall", "fall", "health", lambda v, n: parse_positive_int(v, n, 1, 100), "fall"),
)
SETTINGS_BY_FLAG = {s.flag: s for s in SETTINGS}
# Other spellings of a flag, accepted as flags and as CARE_* variables: the original spells it
# --health-schem; the natural spelling works too.
ALIASES = {"health-scheme": "health-schem"}


def _iface(value: Any, name: str) -> str:
    text = _text(value, name, "an interface name")
    # The kernel's dev_valid_name(), narrowed to characters that need no quoting anywhere.
    if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,15}", text) or text in (".", ".."):
        raise UserError(f"{name}: {show(value)} is not a valid interface name "
                        "(1-15 of A-Z a-z 0-9 _ . -)")
    return text


def _listen(value: Any, name: str) -> str:
    text = _text(value, name, "an address:port").strip()
    if text in ("", "off", "none"):
        return ""
    if text.startswith(":"):
        parse_port(text[1:], name, text)
        return text
    # A listen address may be unspecified (0.0.0.0 or [::]: every address, for a scraper
    # that reaches the node from outside), which a real server may not.
    host, _, port = text.rpartition(":")
    if host.strip("[]") in ("0.0.0.0", "::"):
        parse_port(port, name, text)
        return text
    parse_endpoint(text, name)
    return text


# ---------------------------------------------------------------------------------------------
# YAML file


def _check_keys(data: Mapping[Any, Any], allowed: set[str], where: str) -> None:
    unknown = [k for k in data if k not in allowed]
    if unknown:
        key = unknown[0]
        # Name the key only when it looks like one: a file that is not ours (--config
        # /etc/shadow) must not have its lines printed as "unknown keys".
        shown = show(key) if isinstance(key, str) and re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,39}", key) \
            else "that is not a setting name"
        raise UserError(f"{where}: unknown key {shown} (allowed: {', '.join(sorted(allowed))})")


_VS_KEYS = {"vs", "realServers", "scheduler", "mode", "health"}
_HEALTH_KEYS = {s.yaml_key for s in SETTINGS if s.scope == "health" and s.yaml_key}
_TOP_KEYS = (
    {s.yaml_key for s in SETTINGS if s.scope == "config" and s.yaml_key}
    | {"virtualServers", "scheduler", "mode", "health"}
)


@functools.cache
def _loader() -> type:
    """Safe YAML without aliases: a configuration needs none, and an alias bomb is the only way
    for a small file to expand into gigabytes. Built at the first file: PyYAML is needed only
    with ``--config`` (the node bundle carries the standard library only)."""
    import yaml

    class Loader(yaml.SafeLoader):
        MAX_DEPTH = 32  # a configuration is four levels deep; the composer recurses per level
        _depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent) or self._depth >= self.MAX_DEPTH:
                event = self.peek_event()  # type: ignore[no-untyped-call]
                problem = ("aliases (*name) are not allowed" if self.check_event(yaml.AliasEvent)
                           else f"nested more than {self.MAX_DEPTH} levels deep")
                raise yaml.composer.ComposerError(None, None, problem, event.start_mark)
            self._depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    return Loader


def load_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        import yaml
    except ImportError:
        raise UserError(f"{source}: reading a YAML file needs PyYAML (apt-get install python3-yaml); "
                        "flags and CARE_* variables do not") from None
    try:
        data = yaml.load(text, Loader=_loader())  # a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise UserError(f"{source}{where}: {problem}") from None
    except RecursionError:
        raise UserError(f"{source}: nested too deeply") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{source}: the top level must be a mapping")
    _check_keys(data, _TOP_KEYS, source)
    return data


def _parse_health_block(
    block: Any, where: str, base: dict[str, Any]
) -> dict[str, Any]:
    if block is None:
        return dict(base)
    if not isinstance(block, dict):
        raise UserError(f"{where}: must be a mapping")
    _check_keys(block, _HEALTH_KEYS, where)
    out = dict(base)
    for s in SETTINGS:
        if s.scope == "health" and s.yaml_key in block:
            out[s.key] = s.parse(block[s.yaml_key], f"{where}.{s.yaml_key}")
    return out


# ---------------------------------------------------------------------------------------------
# Putting it together


def build_config(
    cli: Mapping[str, Any],
    env: Mapping[str, str],
    yaml_text: str | None = None,
    yaml_source: str = "config",
) -> Config:
    """Merge flags (``cli``: only those given), ``CARE_*`` env and the YAML file into a Config.

    ``cli`` keys are flag names without dashes (``"health-path"``), plus ``vs``, ``rs``,
    ``run-once``, ``clean``, ``logger``, ``log-level``, ``log-format`` and ``config``.
    """
    given: dict[str, tuple[Any, str]] = {}
    for flag, raw in cli.items():
        given[flag] = (raw, f"--{flag}")
    for flag in (*SETTINGS_BY_FLAG, "vs", "rs", "run-once", "clean", "logger", "log-level",
                 "log-format", "config"):
        if flag in given:
            continue
        for name in (flag, *(a for a, f in ALIASES.items() if f == flag)):
            env_name = "CARE_" + name.upper().replace("-", "_")
            if env.get(env_name):  # empty means not set, as in Go
                given[flag] = (env[env_name], env_name)
                break
    for alias, flag in ALIASES.items():
        if alias in given:
            raw = given.pop(alias)
            given.setdefault(flag, raw)

    parsed: dict[str, Any] = {}
    for flag, (raw, name) in given.items():
        setting = SETTINGS_BY_FLAG.get(flag)
        if setting is not None:
            parsed[flag] = setting.parse(raw, name)

    data: dict[str, Any] = {}
    config_file = None
    if yaml_text is not None:
        data = load_yaml(yaml_text, yaml_source)
        config_file = yaml_source

    top: dict[str, Any] = {}
    for s in SETTINGS:
        if s.scope == "config" and s.yaml_key in data:
            top[s.key] = s.parse(data[s.yaml_key], f"{yaml_source}: {s.yaml_key}")
    vs_defaults: dict[str, Any] = {}
    for s in SETTINGS:
        if s.scope == "vs" and s.yaml_key in data:
            vs_defaults[s.key] = s.parse(data[s.yaml_key], f"{yaml_source}: {s.yaml_key}")
    health_defaults = _parse_health_block(data.get("health"), f"{yaml_source}: health", {})

    flag_config = {SETTINGS_BY_FLAG[f].key: v for f, v in parsed.items()
                   if SETTINGS_BY_FLAG[f].scope == "config"}
    flag_vs = {SETTINGS_BY_FLAG[f].key: v for f, v in parsed.items()
               if SETTINGS_BY_FLAG[f].scope == "vs"}
    flag_health = {SETTINGS_BY_FLAG[f].key: v for f, v in parsed.items()
                   if SETTINGS_BY_FLAG[f].scope == "health"}

    clean = parse_bool(given["clean"][0], given["clean"][1]) if "clean" in given else False
    run_once = parse_bool(given["run-once"][0], given["run-once"][1]) if "run-once" in given else False

    raw_vss = data.get("virtualServers")
    vs_specs: list[tuple[Endpoint, tuple[RealServer, ...], dict[str, Any], dict[str, Any], str]] = []
    if raw_vss is not None:
        if not isinstance(raw_vss, list) or not raw_vss:
            raise UserError(f"{yaml_source}: virtualServers must be a non-empty list")
        for i, item in enumerate(raw_vss):
            where = f"{yaml_source}: virtualServers[{i}]"
            if not isinstance(item, dict):
                raise UserError(f"{where}: must be a mapping")
            _check_keys(item, _VS_KEYS, where)
            if "vs" not in item:
                raise UserError(f"{where}: 'vs' is required")
            endpoint = parse_endpoint(item["vs"], f"{where}.vs")
            rss_raw = item.get("realServers", [])
            if not isinstance(rss_raw, list):
                raise UserError(f"{where}.realServers: must be a list")
            rss = tuple(parse_real_server(r, f"{where}.realServers[{j}]")
                        for j, r in enumerate(rss_raw))
            settings = dict(vs_defaults)
            for s in SETTINGS:
                if s.scope == "vs" and s.yaml_key in item:
                    settings[s.key] = s.parse(item[s.yaml_key], f"{where}.{s.yaml_key}")
            health = _parse_health_block(item.get("health"), f"{where}.health", health_defaults)
            vs_specs.append((endpoint, rss, settings, health, where))

    flag_rs: tuple[RealServer, ...] | None = None
    if "rs" in given:
        raw, name = given["rs"]
        flag_rs = tuple(RealServer(parse_endpoint(r, name)) for r in split_list(raw, name))
    flag_endpoint = parse_endpoint(given["vs"][0], given["vs"][1]) if "vs" in given else None

    if flag_endpoint is not None or flag_rs is not None:
        if len(vs_specs) > 1:
            raise UserError(f"--vs/--rs cannot be combined with {yaml_source}, which has "
                            f"{len(vs_specs)} virtual servers")
        if vs_specs:
            endpoint, rss, settings, health, where = vs_specs[0]
            vs_specs[0] = (flag_endpoint or endpoint, flag_rs if flag_rs is not None else rss,
                           settings, health, where)
        else:
            if flag_endpoint is None:
                raise UserError("--rs needs --vs (the virtual server address:port)")
            vs_specs.append((flag_endpoint, flag_rs or (), dict(vs_defaults),
                             dict(health_defaults), "--vs"))

    if not vs_specs:
        raise UserError("no virtual server: give --vs address:port (and --rs) or --config FILE")

    virtual_servers = []
    seen_vs: set[Endpoint] = set()
    for endpoint, rss, settings, health, where in vs_specs:
        settings = {**settings, **flag_vs}
        health = {**health, **flag_health}
        if endpoint in seen_vs:
            raise UserError(f"{where}: virtual server {endpoint} is listed twice")
        seen_vs.add(endpoint)
        if not rss and not clean:
            raise UserError(f"{where}: virtual server {endpoint} has no real servers (give --rs)")
        seen_rs: set[Endpoint] = set()
        for rs in rss:
            if rs.endpoint in seen_rs:
                raise UserError(f"{where}: real server {rs.endpoint} is listed twice "
                                "(Go lvscare accepted a repeat; remove it)")
            seen_rs.add(rs.endpoint)
            if rs.endpoint.ip == endpoint.ip:
                raise UserError(f"{where}: real server {rs.endpoint} is the VIP itself")
            if rs.endpoint.ip.version != endpoint.ip.version:
                raise UserError(f"{where}: real server {rs.endpoint} is IPv{rs.endpoint.ip.version} "
                                f"but virtual server {endpoint} is IPv{endpoint.ip.version}")
        hc = HealthCheck(**health)
        if (hc.cert is None) != (hc.key is None):
            raise UserError(f"{where}: --health-cert and --health-key go together")
        virtual_servers.append(VirtualServer(endpoint, tuple(rss), health=hc, **settings))

    cfg = Config(virtual_servers=tuple(virtual_servers), **{**top, **flag_config},
                 run_once=run_once, clean=clean, config_file=config_file)
    if cfg.ip is not None:
        for vs in cfg.virtual_servers:
            if vs.mode == "route" and vs.endpoint.ip.version != cfg.ip.version:
                raise UserError(f"--ip {cfg.ip} is IPv{cfg.ip.version} but virtual server "
                                f"{vs.endpoint} is IPv{vs.endpoint.ip.version}")
    if run_once and clean:
        raise UserError("--run-once and -C/--clean cannot be used together")

    level = "info"
    if "logger" in given:
        level = "debug" if str(given["logger"][0]).strip().upper() in ("DEBG", "DEBUG") else "info"
    if "log-level" in given:
        level = parse_choice(str(given["log-level"][0]).lower(), given["log-level"][1],
                             ("debug", "info", "warning", "error"))
    fmt = "auto"
    if "log-format" in given:
        fmt = parse_choice(str(given["log-format"][0]), given["log-format"][1],
                           ("auto", "json", "console"))
    return replace(cfg, log_level=level, log_format=fmt)  # type: ignore[arg-type]
