from __future__ import annotations

import ipaddress

import pytest

from lvscare.cli import main
from lvscare.config import (
    Endpoint,
    build_config,
    parse_duration,
    parse_endpoint,
    parse_headers,
    parse_positive_int,
    parse_status_codes,
)
from lvscare.errors import UserError

VS = "10.103.97.2:6443"


def cfg(cli=None, env=None, yaml_text=None):  # type: ignore[no-untyped-def]
    return build_config(cli or {}, env or {}, yaml_text, "care.yaml")


@pytest.mark.parametrize("text,seconds", [
    ("5", 5.0), ("5s", 5.0), ("500ms", 0.5), ("1m30s", 90.0), ("1.5s", 1.5), ("250us", 0.00025),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5x", "s", "", "-1s", "5 s", "1s2"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(UserError, match=r"duration|negative"):
        parse_duration(text, "--interval")


def test_endpoints() -> None:
    assert parse_endpoint("10.0.0.1:6443") == Endpoint(ipaddress.ip_address("10.0.0.1"), 6443)
    v6 = parse_endpoint("[fd00::10]:6443")
    assert str(v6) == "[fd00::10]:6443" and v6.ip.version == 6


@pytest.mark.parametrize("text,msg", [
    ("10.0.0.1", "no port"), ("10.0.0.1:0", "out of range"), ("10.0.0.1:65536", "out of range"),
    ("fd00::1:6443", "without brackets"), ("host.example:6443", "not an IP"),
    ("[fd00::1]6443", r"\[IPv6\]:port"), ("0.0.0.0:1", "unicast"), ("10.0.0.1:x", "no valid port"),
])
def test_bad_endpoints(text: str, msg: str) -> None:
    with pytest.raises(UserError, match=msg) as err:
        parse_endpoint(text, "--rs")
    assert text in str(err.value) or "--rs" in str(err.value)


def test_flags_and_defaults() -> None:
    c = cfg({"vs": VS, "rs": ["10.0.0.1:6443,10.0.0.2:6443", "10.0.0.3:6443"]})
    (vs,) = c.virtual_servers
    assert [str(r.endpoint) for r in vs.real_servers] == [
        "10.0.0.1:6443", "10.0.0.2:6443", "10.0.0.3:6443"]
    assert vs.scheduler == "rr" and vs.mode == "route"
    assert vs.health.path is None and vs.health.scheme == "https"
    assert vs.health.path_for(h2=True) == "/readyz" and vs.health.path_for(h2=False) == "/healthz"
    assert vs.health.protocol == "auto" and vs.health.readiness_interval == 5.0
    assert vs.health.insecure_skip_verify is True
    assert c.iface == "lvscare" and not c.run_once and not c.clean


def test_env_fills_unset_flags_and_flags_win() -> None:
    env = {"CARE_VS": VS, "CARE_RS": "10.0.0.1:6443,10.0.0.2:6443", "CARE_SCHEDULER": "wrr",
           "CARE_HEALTH_PATH": "readyz", "CARE_RUN_ONCE": "true", "CARE_INTERVAL": "2"}
    c = cfg({"scheduler": "lc"}, env)
    (vs,) = c.virtual_servers
    assert vs.scheduler == "lc"
    assert vs.health.path == "/readyz"
    assert c.run_once and c.interval == 2.0
    assert len(vs.real_servers) == 2


def test_go_flag_spellings() -> None:
    c = cfg({"vs": VS, "rs": ["10.0.0.1:6443"], "health-scheme": "http", "mode": "",
             "logger": "DEBG", "health-status": ["401,403"],
             "health-req-headers": "Authorization=Bearer x,Accept=a,b"})
    (vs,) = c.virtual_servers
    assert vs.health.scheme == "http"
    assert vs.mode == "none"
    assert c.log_level == "debug"
    assert vs.health.status == {401, 403}
    assert vs.health.headers == (("Authorization", "Bearer x"), ("Accept", "a,b"))


def test_headers_parse() -> None:
    assert parse_headers("a=1", "h") == (("a", "1"),)
    with pytest.raises(UserError, match="key=value"):
        parse_headers("novalue", "--health-req-headers")


@pytest.mark.parametrize("cli,msg", [
    ({"vs": VS, "rs": ["10.0.0.1:6443", "10.0.0.1:6443"]}, "listed twice"),
    ({"vs": VS, "rs": ["[fd00::1]:6443"]}, "IPv6 but virtual server"),
    ({"vs": VS, "rs": ["10.0.0.1:6443"], "scheduler": "fancy"}, "'fancy' is not one of"),
    ({"vs": VS, "rs": ["10.0.0.1:6443"], "mode": "tunnel"}, "'tunnel' is not one of"),
    ({"vs": VS}, "no real servers"),
    ({"rs": ["10.0.0.1:6443"]}, "--rs needs --vs"),
    ({}, "no virtual server"),
    ({"vs": VS, "rs": ["10.0.0.1:6443"], "run-once": "true", "clean": "true"}, "together"),
    ({"vs": VS, "rs": ["10.0.0.1:6443"], "health-cert": "/c"}, "go together"),
    ({"vs": VS, "rs": ["10.0.0.1:6443"], "health-timeout": "0"}, "out of range 10ms-60s"),
    ({"vs": VS, "rs": ["10.0.0.1:6443"], "health-status": ["99"]}, "not an HTTP status"),
    ({"vs": VS, "rs": ["10.0.0.1:6443"], "iface": "a/b"}, "interface name"),
    # IFNAMSIZ: refused here, exit 2, before IPVS is written (the kernel would refuse it after).
    ({"vs": VS, "rs": ["10.0.0.1:6443"], "iface": "a" * 16}, "interface name"),
    ({"vs": "224.0.0.5:6443", "rs": ["10.0.0.1:6443"]}, "not a usable unicast address"),
    ({"vs": VS, "rs": ["239.1.1.1:6443"]}, "not a usable unicast address"),
    ({"vs": VS, "rs": ["10.0.0.1:6443"], "ip": "fd00::1"}, "--ip fd00::1 is IPv6"),
])
def test_bad_flags(cli: dict[str, object], msg: str) -> None:
    with pytest.raises(UserError, match=msg):
        cfg(cli)


def test_clean_needs_no_real_servers() -> None:
    c = cfg({"vs": VS, "clean": "true"})
    assert c.clean and c.virtual_servers[0].real_servers == ()


YAML = """
interval: 2s
mode: link
health:
  path: /readyz
  timeout: 500ms
virtualServers:
  - vs: 10.103.97.2:6443
    realServers:
      - 192.168.0.2:6443
      - {address: 192.168.0.3:6443, weight: 3}
  - vs: "[fd00::10]:6443"
    scheduler: wrr
    mode: none
    health: {path: /livez, status: [401]}
    realServers: ["[fd00::2]:6443"]
"""


def test_yaml_many_virtual_servers() -> None:
    c = cfg(yaml_text=YAML)
    assert c.interval == 2.0 and c.config_file == "care.yaml"
    v4, v6 = c.virtual_servers
    assert v4.mode == "link" and v4.health.path == "/readyz" and v4.health.timeout == 0.5
    assert [(str(r.endpoint), r.weight) for r in v4.real_servers] == [
        ("192.168.0.2:6443", 1), ("192.168.0.3:6443", 3)]
    assert v6.mode == "none" and v6.scheduler == "wrr"
    assert v6.health.path == "/livez" and v6.health.status == {401}
    assert v6.health.timeout == 0.5  # inherited from the file's health block


def test_flags_override_yaml_for_every_virtual_server() -> None:
    c = cfg({"health-path": "/healthz", "interval": "3"}, yaml_text=YAML)
    assert c.interval == 3.0
    assert all(vs.health.path == "/healthz" for vs in c.virtual_servers)


def test_vs_flags_need_a_single_vs_file() -> None:
    with pytest.raises(UserError, match="cannot be combined"):
        cfg({"rs": ["10.0.0.1:6443"]}, yaml_text=YAML)
    one = "virtualServers: [{vs: '10.103.97.2:6443', realServers: ['1.1.1.1:6443']}]"
    c = cfg({"rs": ["10.0.0.9:6443"]}, yaml_text=one)
    assert [str(r.endpoint) for r in c.virtual_servers[0].real_servers] == ["10.0.0.9:6443"]


@pytest.mark.parametrize("text,msg", [
    ("virtualServers: [{vs: '10.0.0.1:1', realServers: ['1.1.1.1:1'], colour: red}]",
     "unknown key 'colour'"),
    ("intervl: 5s", "unknown key 'intervl'"),
    ("virtualServers: {}", "non-empty list"),
    ("virtualServers: [{realServers: []}]", "'vs' is required"),
    ("virtualServers: [{vs: '10.0.0.1:1', realServers: [{address: '1.1.1.1:1', weight: -1}]}]",
     "at least 0"),
    ("virtualServers: [{vs: '10.0.0.1:1', realServers: '1.1.1.1:1'}]", "must be a list"),
    ("virtualServers: [{vs: '10.0.0.1:1', realServers: [{address: '1.1.1.1:1', weight: 65536}]}]",
     "65535"),
    ("drainPeriod: -1s", "duration|negative"),
    ("health: {timeout: -5}", "duration|negative|out of range"),
    ("health: {timeout: fast}", "not a duration"),
    ("interval: null", "None is not a duration"),
    ("drainPeriod: [1, 2]", "is not a duration"),
    ("[1, 2]", "top level must be a mapping"),
    ("a: [", "line"),
    ("virtualServers: [{vs: '10.0.0.1:1', realServers: ['1.1.1.1:1']},"
     " {vs: '10.0.0.1:1', realServers: ['1.1.1.1:1']}]", "listed twice"),
])
def test_bad_yaml(text: str, msg: str) -> None:
    with pytest.raises(UserError, match=msg) as err:
        cfg(yaml_text=text)
    assert "care.yaml" in str(err.value)


def test_cli_bad_input_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["care", "--vs", VS, "--rs", "1.2.3.4:0", "--run-once"],
                 ["care", "--vs", VS, "--rs", "1.2.3.4:1", "--bogus"],
                 ["care", "--config", "/nonexistent/care.yaml", "--run-once"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("lvscare: error:")


def test_cli_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version", "--short"]) == 0
    assert capsys.readouterr().out.strip().startswith("v")


@pytest.mark.parametrize(("address", "ok"), [
    ("127.0.0.1:10262", True), ("0.0.0.0:10262", True), ("[::]:10262", True), (":10262", True),
    ("[fd00::1]:10262", True), ("off", True), ("0.0.0.0:99999", False), ("localhost:10262", False),
])
def test_metrics_address_may_listen_on_every_address(address: str, ok: bool) -> None:
    values = {"vs": VS, "rs": ["10.0.0.1:6443"], "metrics-address": address}
    if ok:
        cfg(values)
    else:
        with pytest.raises(UserError, match="--metrics-address"):
            cfg(values)


def test_go_semantics_that_are_kept_and_those_refused_with_a_reason(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from lvscare.careflags import load_config, node_ip_from_hosts, parse_care_args

    base = ["care", "--vs", VS, "--rs", "10.0.0.1:6443"]
    # Repeated --health-req-headers add up, as Go's stringToString does.
    values = parse_care_args([*base, "--health-req-headers", "a=1", "--health-req-headers", "b=2,3"])
    assert load_config(values, {}, hosts=None).virtual_servers[0].health.headers == (("a", "1"), ("b", "2,3"))
    # An empty CARE_* variable is "not set".
    empty = {"CARE_INTERVAL": "", "CARE_MODE": ""}
    assert load_config(parse_care_args(base), empty, hosts=None).interval == 1.0
    with pytest.raises(UserError, match="Go lvscare took it for its default 5s"):
        load_config(parse_care_args([*base, "--interval", "0"]), {}, hosts=None)
    with pytest.raises(UserError, match=r"listed twice \(Go lvscare accepted a repeat"):
        load_config(parse_care_args([*base, "--rs", "10.0.0.1:6443"]), {}, hosts=None)
    # Route mode's node address: --ip, else LVSCARE_NODE_IP, else lvscare.node.ip in /etc/hosts.
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n# 10.9.9.9 lvscare.node.ip\n10.0.0.7  lvscare.node.ip  # sealos\n")
    assert node_ip_from_hosts(hosts.read_text()) == "10.0.0.7"
    assert str(load_config(parse_care_args(base), {}, str(hosts)).ip) == "10.0.0.7"
    env = {"LVSCARE_NODE_IP": "10.0.0.8"}
    assert str(load_config(parse_care_args(base), env, str(hosts)).ip) == "10.0.0.8"
    assert str(load_config(parse_care_args([*base, "--ip", "10.0.0.9"]), {}, str(hosts)).ip) == "10.0.0.9"
    assert load_config(parse_care_args([*base, "--mode", "link"]), {}, str(hosts)).ip is None
    hosts.write_text("fd00::7 lvscare.node.ip\n")  # another family: the route chooses
    assert load_config(parse_care_args(base), {}, str(hosts)).ip is None
    hosts.write_text("not-an-ip lvscare.node.ip\n")
    with pytest.raises(UserError, match=r"lvscare\.node\.ip: 'not-an-ip' is not an IP address"):
        load_config(parse_care_args(base), {}, str(hosts))


def test_yaml_depth_limit_and_aliases_in_the_message() -> None:
    """A configuration is four levels deep: 32 levels are read (and then refused as not a
    setting), 33 are refused by the reader itself, before anything is built; an alias too."""
    from lvscare.config import load_yaml

    def nested(levels: int) -> str:
        return "a: " + "[" * (levels - 1) + "]" * (levels - 1) + "\n"

    with pytest.raises(UserError) as shallow:
        load_yaml(nested(32), "care.yaml")
    assert str(shallow.value).startswith("care.yaml: unknown key 'a'")
    with pytest.raises(UserError) as deep:
        load_yaml(nested(33), "care.yaml")
    assert str(deep.value) == "care.yaml line 1: nested more than 32 levels deep"
    with pytest.raises(UserError) as alias:
        load_yaml("interval: &x 1s\ndrainPeriod: *x\n", "care.yaml")
    assert str(alias.value) == "care.yaml line 2: aliases (*name) are not allowed"
    with pytest.raises(UserError) as broken:
        load_yaml("a: [\n", "care.yaml")
    assert str(broken.value).startswith("care.yaml line 2: ")
    with pytest.raises(UserError, match=r"^care.yaml: the top level must be a mapping$"):
        load_yaml("- 1\n", "care.yaml")
    assert load_yaml("", "care.yaml") == {} and load_yaml("# nothing\n", "care.yaml") == {}
    assert load_yaml("interval: 2s\n", "care.yaml") == {"interval": "2s"}


def test_unknown_keys_are_named_only_when_they_look_like_keys() -> None:
    from lvscare.config import _check_keys

    with pytest.raises(UserError) as named:
        _check_keys({"colour": 1, "vs": 2}, {"vs", "mode"}, "where")
    assert str(named.value) == "where: unknown key 'colour' (allowed: mode, vs)"
    with pytest.raises(UserError) as hidden:
        _check_keys({"root:x:0:0:root:/root:/bin/bash": 1}, {"vs"}, "where")
    assert str(hidden.value) == "where: unknown key that is not a setting name (allowed: vs)"
    _check_keys({"vs": 1}, {"vs"}, "where")  # nothing to say


@pytest.mark.parametrize(("seconds", "text"), [
    (0.0, "0s"), (0.5, "500ms"), (0.01, "10ms"), (1.0, "1s"), (90.0, "90s"), (3600.0, "1h"),
    (7200.0, "2h"), (5400.0, "5400s"),
])
def test_durations_are_shown_as_written(seconds: float, text: str) -> None:
    from lvscare.config import _seconds

    assert _seconds(seconds) == text


@pytest.mark.parametrize(("value", "ok"), [
    ("lvscare", True), ("a", True), ("a" * 15, True), ("kube-ipvs0", True), ("eth0.100", True),
    ("a_b", True), ("", False), ("a" * 16, False), (".", False), ("..", False), ("a b", False),
    ("a/b", False), ("é", False), (5, False),
])
def test_interface_names(value: object, ok: bool) -> None:
    from lvscare.config import _iface

    if ok:
        assert _iface(value, "--iface") == value
    else:
        with pytest.raises(UserError, match=r"^--iface: .* (is not a valid interface name|is not)"):
            _iface(value, "--iface")


def test_real_server_entries() -> None:
    from lvscare.config import RealServer, parse_real_server

    ep = Endpoint(ipaddress.ip_address("10.0.0.1"), 6443)
    assert parse_real_server("10.0.0.1:6443", "rs") == RealServer(ep, 1)
    assert parse_real_server({"address": "10.0.0.1:6443"}, "rs") == RealServer(ep, 1)
    assert parse_real_server({"address": "10.0.0.1:6443", "weight": 0}, "rs") == RealServer(ep, 0)
    assert parse_real_server({"address": "10.0.0.1:6443", "weight": 65535}, "rs").weight == 65535
    with pytest.raises(UserError, match=r"^rs: a real server needs 'address'$"):
        parse_real_server({"weight": 1}, "rs")
    with pytest.raises(UserError, match=r"^rs: unknown key 'port'"):
        parse_real_server({"address": "10.0.0.1:6443", "port": 1}, "rs")
    with pytest.raises(UserError, match=r"^rs\.weight: "):
        parse_real_server({"address": "10.0.0.1:6443", "weight": 65536}, "rs")


@pytest.mark.parametrize(("value", "method"), [("get", "GET"), (" HEAD ", "HEAD"), ("PATCH", "PATCH")])
def test_methods(value: str, method: str) -> None:
    from lvscare.config import _method

    assert _method(value, "--health-req-method") == method


@pytest.mark.parametrize("value", ["G T", "GET\r\n", "", "GÉT", 1])
def test_bad_methods(value: object) -> None:
    from lvscare.config import _body, _method

    bad = r"^--health-req-method: .* (is not (an HTTP method|text)|has control)"
    with pytest.raises(UserError, match=bad):
        _method(value, "--health-req-method")
    with pytest.raises(UserError, match=r"^body: 1 is not text$"):
        _body(1, "body")
    assert _body(" {} ", "body") == " {} "


@pytest.mark.parametrize(("call", "message"), [
    # the one-line errors, whole: the setting, the value as given, and what is wrong with it
    (lambda: parse_headers(5, "--h"), "--h: 5 is not key=value pairs"),
    (lambda: parse_headers([5], "--h"), "--h: 5 is not key=value"),
    (lambda: parse_headers(["novalue"], "--h"), "--h: 'novalue' is not key=value"),
    (lambda: parse_headers(["=v"], "--h"), "--h: '=v' is not key=value"),
    (lambda: parse_headers({"bad key": "v"}, "--h"), "--h: 'bad key' is not a header name"),
    (lambda: parse_headers({5: "v"}, "--h"), "--h: 5 is not a header name"),
    (lambda: parse_headers({"k": True}, "--h"), "--h: header k: True is not text"),
    (lambda: parse_headers({"k": ["v"]}, "--h"), "--h: header k: ['v'] is not text"),
    (lambda: parse_headers({"k": "a\nb"}, "--h"), "--h: header k: 'a\\nb' has control characters"),
    (lambda: parse_status_codes(["4o1"], "--s"), "--s: '4o1' is not an HTTP status code"),
    (lambda: parse_status_codes(["99"], "--s"), "--s: 99 is not an HTTP status code (100-599)"),
    (lambda: parse_status_codes(["600"], "--s"), "--s: 600 is not an HTTP status code (100-599)"),
    (lambda: parse_positive_int("x", "--n"), "--n: 'x' is not a whole number"),
    (lambda: parse_positive_int(True, "--n"), "--n: True is not a whole number"),
    (lambda: parse_positive_int(0, "--n"), "--n: 0 must be at least 1"),
    (lambda: parse_positive_int(1001, "--n"), "--n: 1001 is above 1000"),
])
def test_error_messages_whole(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UserError) as err:
        call()
    assert str(err.value) == message


def test_edges_that_are_accepted() -> None:
    assert parse_headers(["a=b=c,d=e,f"], "--h") == (("a", "b=c"), ("d", "e,f"))
    assert parse_headers({"k": 5}, "--h") == (("k", "5"),)
    assert parse_headers("a=1", "--h") == (("a", "1"),)
    assert parse_status_codes(["100", "599"], "--s") == frozenset({100, 599})
    assert parse_status_codes("401,403", "--s") == frozenset({401, 403})
    assert parse_status_codes(401, "--s") == frozenset({401})
    assert parse_positive_int(1, "--n") == 1 and parse_positive_int(" 1000 ", "--n") == 1000
    assert parse_positive_int(0, "--n", minimum=0) == 0


def _err(call) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(UserError) as err:
        call()
    return str(err.value)


def test_address_and_duration_messages_whole() -> None:
    from lvscare.config import _interval, _listen, _path, parse_ip

    assert [_err(lambda v=v: parse_endpoint(v, "--vs")) for v in (
        5, "[fd00::1]6443", "fd00::1:6443", "10.0.0.1", ":6443", "10.0.0.1:x")] == [
        "--vs: 5 is not an address:port",
        "--vs: '[fd00::1]6443' is not [IPv6]:port",
        "--vs: 'fd00::1:6443' is an IPv6 address without brackets; write [addr]:port",
        "--vs: '10.0.0.1' has no port (expected address:port)",
        "--vs: ':6443' has no address",
        "--vs: '10.0.0.1:x' has no valid port"]
    assert parse_endpoint(" [fd00::1]:6443 ", "--vs") == Endpoint(ipaddress.ip_address("fd00::1"), 6443)
    assert [_err(lambda v=v: parse_ip(v, "--ip")) for v in (5, "fd00::1%eth0", "x")] == [
        "--ip: 5 is not an IP address",
        "--ip: 'fd00::1%eth0' has a zone id (%…), which IPVS cannot use",
        "--ip: 'x' is not an IP address"]
    assert parse_ip("[fd00::1]", "--ip") == ipaddress.ip_address("fd00::1")
    assert parse_ip(" 10.0.0.1 ", "--ip") == ipaddress.ip_address("10.0.0.1")
    assert [_err(lambda v=v: parse_duration(v, "--d", 0, 86400)) for v in (
        "5x", "1" * 41, "1" * 40, -5, [1])] == [
        "--d: '5x' is not a duration (use 5, 5s or 500ms)",
        "--d: '11111111111111111111111111111111111111111' is not a duration (use 5, 5s or 500ms)",
        "--d: '1111111111111111111111111111111111111111' is out of range 0s-24h",
        "--d: -5 must not be negative",
        "--d: [1] is not a duration (use 5, 5s or 500ms)"]
    assert parse_duration("86400", "--d", 0, 86400) == 86400 and parse_duration(0, "--d") == 0
    assert parse_duration("1m30s", "--d") == 90 and parse_duration(" 250ms ", "--d") == 0.25
    assert [_err(lambda v=v: _interval(v, "--i")) for v in ("2h", "50ms")] == [
        "--i: '2h' is out of range 100ms-1h", "--i: '50ms' is out of range 100ms-1h"]
    assert _interval("1h", "--i") == 3600 and _interval("100ms", "--i") == 0.1
    assert [_listen(v, "--m") for v in ("", " off ", "none", ":10262", "[::]:10262")] == [
        "", "", "", ":10262", "[::]:10262"]
    assert [_err(lambda v=v: _listen(v, "--m")) for v in ("OFF", "127.0.0.1:0", ":0", 5)] == [
        "--m: 'OFF' has no port (expected address:port)",
        "--m: port 0 in '127.0.0.1:0' is out of range 1-65535",
        "--m: port 0 in ':0' is out of range 1-65535",
        "--m: 5 is not an address:port"]
    assert _path("healthz", "--p") == "/healthz" and _path(" /readyz ", "--p") == "/readyz"
    assert [_err(lambda v=v: _path(v, "--p")) for v in ("/a b", "/é", 5, "")] == [
        "--p: '/a b' is not a request path (ASCII, no spaces)",
        "--p: '/é' is not a request path (ASCII, no spaces)",
        "--p: 5 is not a path",
        "--p: '' is not a request path (ASCII, no spaces)"]


@pytest.mark.parametrize(("text", "value"), [
    *[(t, True) for t in ("1", "t", "T", "true", "TRUE", "True", "yes", "Yes", "y", "Y", "on", "ON",
                          " on ")],
    *[(t, False) for t in ("0", "f", "F", "false", "FALSE", "no", "NO", "n", "N", "off", "Off")],
])
def test_every_boolean_spelling(text: str, value: bool) -> None:
    from lvscare.config import parse_bool

    assert parse_bool(text, "--b") is value


def test_not_a_boolean() -> None:
    from lvscare.config import parse_bool

    assert _err(lambda: parse_bool("maybe", "--b")) == "--b: 'maybe' is not a boolean (use true or false)"
    assert _err(lambda: parse_bool(1, "--b")) == "--b: 1 is not a boolean (use true or false)"
    assert parse_bool(False, "--b") is False


def test_lists_modes_and_how_values_are_shown() -> None:
    from lvscare.config import one_line, parse_mode, show, split_list

    assert split_list(["a, b", 3, ""], "--l") == ["a", "b", "3"] and split_list("x,y", "--l") == ["x", "y"]
    assert _err(lambda: split_list(5, "--l")) == "--l: 5 is not a list"
    assert _err(lambda: split_list([True], "--l")) == "--l: True is not text"
    modes = [parse_mode(m, "--mode") for m in ("", "route", "link", "none")]
    assert modes == ["none", "route", "link", "none"]
    assert _err(lambda: parse_mode("LINK", "--mode")) == "--mode: 'LINK' is not one of route, link, none"
    assert show("a\nb") == "'a\\nb'" and show(5) == "5"
    assert show("x" * 300) == "'" + "x" * 55 + "..." + "'"
    assert one_line("a\nb\r\nc") == "a\\nb\\r\\nc"


def test_more_messages_whole() -> None:
    from lvscare.config import (
        _check_keys,
        _file,
        _iface,
        _interval,
        _listen,
        _method,
        load_yaml,
        one_line,
        parse_ip,
        parse_mode,
        parse_real_server,
        show,
        unicast,
    )

    assert [_err(lambda f=f: f(5, "--x")) for f in (_iface, _file, parse_mode, _method)] == [
        "--x: 5 is not an interface name", "--x: 5 is not a file path", "--x: 5 is not a mode",
        "--x: 5 is not an HTTP method"]
    assert _err(lambda: _file("", "--x")) == "--x: empty path"
    assert _err(lambda: _iface("a b", "--x")) == (
        "--x: 'a b' is not a valid interface name (1-15 of A-Z a-z 0-9 _ . -)")
    assert _iface("Lvs0", "--x") == "Lvs0"
    assert _err(lambda: parse_real_server("bad", "rs")) == "rs: 'bad' has no port (expected address:port)"
    assert _err(lambda: parse_real_server({"address": "bad"}, "rs")) == (
        "rs: 'bad' has no port (expected address:port)")
    assert _err(lambda: parse_endpoint("0.0.0.0:1", "--vs")) == (
        "--vs: '0.0.0.0:1' is not a usable unicast address")
    assert _err(lambda: unicast(ipaddress.ip_address("224.0.0.1"), "--ip", "224.0.0.1")) == (
        "--ip: '224.0.0.1' is not a usable unicast address")
    assert _err(lambda: parse_endpoint("fd00::1", "--vs")) == (
        "--vs: 'fd00::1' is an IPv6 address without brackets; write [addr]:port")
    assert parse_endpoint("10.0.0.1:65535", "--vs").port == 65535
    a = parse_endpoint("10.0.0.1:1", "--vs")
    assert not a < a and a < parse_endpoint("10.0.0.1:2", "--vs")
    assert _err(lambda: parse_ip("fd00::1]", "--ip")) == "--ip: 'fd00::1]' is not an IP address"
    assert show("x" * 58) == "'" + "x" * 58 + "'" and show("x" * 59).endswith("...'")
    assert one_line("é\n") == "é\\n"
    assert _err(lambda: _interval("25h", "--i")) == "--i: '25h' is out of range 100ms-1h"
    assert _err(lambda: _interval("3601", "--i")) == "--i: '3601' is out of range 100ms-1h"
    assert _err(lambda: _interval("0", "--i")) == (
        "--i: 0 is not an interval (Go lvscare took it for its default 5s; leave the setting out "
        "for lvscare's 1s)")
    assert _err(lambda: parse_duration("86401", "--d")) == "--d: '86401' is out of range 0s-24h"
    assert _err(lambda: parse_duration(float("inf"), "--d")) == (
        "--d: inf is not a duration (use 5, 5s or 500ms)")
    assert _err(lambda: _listen("0.0.0.0:99999", "--m")) == (
        "--m: port 99999 in '0.0.0.0:99999' is out of range 1-65535")
    assert _err(lambda: _check_keys({"Colour": 1}, {"vs"}, "w")) == "w: unknown key 'Colour' (allowed: vs)"
    assert _err(lambda: load_yaml("\x07", "care.yaml")) == "care.yaml: not valid YAML"
    # 33 levels after a sibling scalar: the depth count must come back to its level, not to 1
    deep = "a: [x, " + "[" * 31 + "]" * 31 + "]\n"
    assert _err(lambda: load_yaml(deep, "care.yaml")) == "care.yaml line 1: nested more than 32 levels deep"


def test_every_care_variable_and_where_errors_point() -> None:
    """Each CARE_* name reaches its setting (the alias too), and every error names where the
    value came from: the variable, the flag, the file and the path inside it."""
    base = {"vs": VS, "rs": ["10.0.0.1:6443"]}
    c = build_config(base, {"CARE_LOGGER": "DEBG", "CARE_LOG_FORMAT": "json",
                            "CARE_HEALTH_SCHEME": "http"})
    assert (c.log_level, c.log_format, c.virtual_servers[0].health.scheme) == ("debug", "json", "http")
    assert build_config(base, {"CARE_LOG_LEVEL": "warning"}).log_level == "warning"
    assert build_config({"vs": VS}, {"CARE_CLEAN": "true"}).clean
    assert build_config(base, {}).config_file is None
    assert _err(lambda: build_config(base, {"CARE_RUN_ONCE": "maybe"})) == (
        "CARE_RUN_ONCE: 'maybe' is not a boolean (use true or false)")
    assert _err(lambda: build_config({"vs": VS}, {"CARE_CLEAN": "maybe"})) == (
        "CARE_CLEAN: 'maybe' is not a boolean (use true or false)")
    assert _err(lambda: build_config({"vs": VS, "rs": ["bad"]}, {})) == (
        "--rs: 'bad' has no port (expected address:port)")
    assert _err(lambda: build_config({}, {}, "mode: x\n")) == (
        "config: mode: 'x' is not one of route, link, none")  # the default name of the file
    for text, message in (
            ("virtualServers: [5]\n", "care.yaml: virtualServers[0]: must be a mapping"),
            ("virtualServers: [{vs: bad}]\n",
             "care.yaml: virtualServers[0].vs: 'bad' has no port (expected address:port)"),
            ("virtualServers: [{vs: '10.0.0.1:1'}]\n",
             "care.yaml: virtualServers[0]: virtual server 10.0.0.1:1 has no real servers (give --rs)"),
            ("virtualServers: [{vs: '10.0.0.1:1', realServers: ['10.0.0.2:1'], health: {path: 'a b'}}]\n",
             "care.yaml: virtualServers[0].health.path: 'a b' is not a request path (ASCII, no spaces)"),
            ("virtualServers: []\n", "care.yaml: virtualServers must be a non-empty list"),
            ("virtualServers: 5\n", "care.yaml: virtualServers must be a non-empty list")):
        assert _err(lambda t=text: cfg(yaml_text=t)) == message
    assert cfg(yaml_text="virtualServers: [{vs: '10.0.0.1:1', realServers: ['10.0.0.2:1']}]\n"
               ).config_file == "care.yaml"
