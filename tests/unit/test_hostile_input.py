"""Every input surface against generated hostile values: ``lvscare care`` flags, ``CARE_*``
variables, the YAML file, ``lvscare static-pod`` and ``installer join --dry-run``.

For each case: exit 0 (or 1, a runtime failure) only for input that is valid, and then the
configuration holds only sane values; otherwise exit 2 with one line that names the setting; never
a traceback (any exception but the program's own exits fails the test), never a hang (5 s per
case), never more than 64 MB to say no. Nothing reaches a kernel: the actions behind ``care`` are
replaced by a recorder once the input has been accepted.

``pytest -s tests/unit/test_hostile_input.py`` prints the cases run per surface and their outcomes.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import signal
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvscare import care, cli, daemon
from lvscare.config import SETTINGS, Config

OUTCOMES: dict[str, Counter[str]] = {}
NASTY = [
    "", " ", "\x00", "\n", "a\r\nb", "\x1b[2J", "NaN", "nan", "inf", "-inf", "1e15h", "1ns", "0",
    "-1", "99999999999", "1" * 400, "\uff16\uff14\uff14\uff13", "\u0666\u0664\u0664\u0663", "1.5",
    "true", "null", "~", "$(id)", "`id`", "../x", "a b", "%x", "fe80::1%eth0", "0.0.0.0", "224.0.0.1",
    "255.255.255.255", "10.103.97.2", "10.103.97.2:6443", "[::]:0", "/dev/zero", "/nonexistent",
    "-oProxyCommand=x", "x" * 5000, "é", "lvscare", "kube-ipvs0", ".", "..", "GET /x HTTP/1.1",
]
hostile = st.one_of(st.sampled_from(NASTY), st.text(max_size=40))
FLAGS = [s.flag for s in SETTINGS] + ["vs", "rs"]
PER_SURFACE = settings(max_examples=150, deadline=None, derandomize=True,
                       suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True, scope="module")
def report() -> Iterator[None]:
    """Cases and outcomes per surface, printed after the module (shown with -s)."""
    yield
    for surface, counts in sorted(OUTCOMES.items()):
        print(f"\n{surface}: {sum(counts.values())} cases, " +
              ", ".join(f"{n} {k}" for k, n in sorted(counts.items())), end="")


@contextlib.contextmanager
def bounded(seconds: int = 5, megabytes: int = 64) -> Iterator[None]:
    def expired(*_: object) -> None:
        raise TimeoutError(f"a case ran longer than {seconds}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
        assert peak < megabytes << 20, f"a case took {peak >> 20} MB"
    finally:
        tracemalloc.stop()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def invoke(main: Callable[[list[str]], int], argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with bounded(), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


@pytest.fixture
def accepted(monkeypatch: pytest.MonkeyPatch) -> list[Config]:
    """Configurations that ``lvscare care`` accepted: recorded instead of acted on."""
    seen: list[Config] = []

    async def record(cfg: Config) -> list[object]:
        seen.append(cfg)
        return []

    monkeypatch.setattr(care, "run_once", record)
    monkeypatch.setattr(care, "clean", record)
    monkeypatch.setattr(daemon, "run", lambda cfg, reload=None: seen.append(cfg) or 0)
    monkeypatch.setattr("lvscare.log.configure", lambda *a, **k: None)
    return seen


def sane(cfg: Config) -> None:
    """What an accepted configuration may hold."""
    assert 0.1 <= cfg.interval <= 3600 and 0 <= cfg.drain_period <= 86400
    assert cfg.iface.isascii() and cfg.iface.isprintable() and cfg.iface not in (".", "..")
    for vs in cfg.virtual_servers:
        for ep in (vs.endpoint, *(rs.endpoint for rs in vs.real_servers)):
            assert 1 <= ep.port <= 65535 and not ep.ip.is_unspecified and not ep.ip.is_multicast
            assert "%" not in str(ep.ip)
        hc = vs.health
        assert math.isfinite(hc.timeout) and 0.01 <= hc.timeout <= 60
        for path in (hc.path_for(h2=True), hc.path_for(h2=False)):
            assert path.startswith("/") and path.isprintable() and " " not in path
        assert hc.protocol in ("auto", "http1") and 0.1 <= hc.readiness_interval <= 3600
        assert re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Z-]{1,64}", hc.method), hc.method
        for k, v in hc.headers:
            assert k.isprintable() and v.isprintable() and "\n" not in k + v
        assert all(100 <= s <= 599 for s in hc.status)
        assert 1 <= hc.rise <= 100 and 1 <= hc.fall <= 100


def judge(surface: str, code: int, err: str, names: list[str], accepted: list[Config]) -> None:
    outcome = {0: "accepted", 1: "runtime failure", 2: "refused"}.get(code, f"exit {code}")
    OUTCOMES.setdefault(surface, Counter())[outcome] += 1
    assert code in (0, 1, 2), err
    assert "Traceback" not in err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert any(n in lines[0] for n in names), (names, err)
        assert "\x1b" not in lines[0] and "\x00" not in lines[0]
    if code == 0:
        for cfg in accepted:
            sane(cfg)
    accepted.clear()


BASE = ["care", "--run-once", "--vs", "10.103.97.2:6443", "--rs", "10.0.0.2:6443"]


@PER_SURFACE
@given(flag=st.sampled_from(FLAGS), value=hostile)
def test_care_flags(flag: str, value: str, accepted: list[Config]) -> None:
    argv = [*BASE, f"--{flag}={value}"]
    code, err = invoke(cli.main, argv)
    judge("lvscare care flags", code, err, [f"--{flag}", "lvscare care: error", "lvscare: error"],
          accepted)


@PER_SURFACE
@given(flag=st.sampled_from([*FLAGS, "config"]), value=hostile)
def test_care_environment(flag: str, value: str, accepted: list[Config]) -> None:
    name = "CARE_" + flag.upper().replace("-", "_")
    if "\x00" in value:
        return  # an environment variable cannot hold NUL
    with pytest.MonkeyPatch.context() as env:  # this example's variable only
        env.setenv(name, value)
        code, err = invoke(cli.main, list(BASE))
    judge("CARE_* variables", code, err, [name, f"--{flag}", "config"], accepted)


YAML_KEYS = ["interval", "iface", "ip", "cleanOnExit", "allDown", "drainPeriod", "metricsAddress",
             "scheduler", "mode", "health", "virtualServers", "vs", "realServers", "address",
             "weight", "path", "scheme", "method", "headers", "body", "status", "timeout", "ca",
             "rise", "fall", "insecureSkipVerify"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**20), st.floats(allow_nan=True),
                    hostile)
documents = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(YAML_KEYS), st.text(max_size=10)), inner, max_size=5)),
    max_leaves=12)


@PER_SURFACE
@given(doc=documents)
def test_care_yaml(doc: Any, accepted: list[Config], tmp_path: Path) -> None:
    path = tmp_path / "care.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    code, err = invoke(cli.main, ["care", "--run-once", "--config", str(path)])
    judge("YAML file", code, err, [str(path), "--config"], accepted)


HOLES = {  # where one setting sits in an otherwise valid file, and whether a boolean fits there
    "interval": ((), False), "iface": ((), False), "ip": ((), False), "cleanOnExit": ((), True),
    "allDown": ((), False), "drainPeriod": ((), False), "metricsAddress": ((), False),
    "scheduler": (("vs",), False), "mode": (("vs",), False),
    "path": (("health",), False), "scheme": (("health",), False), "method": (("health",), False),
    "headers": (("health",), False), "body": (("health",), False), "status": (("health",), False),
    "timeout": (("health",), False), "ca": (("health",), False), "rise": (("health",), False),
    "fall": (("health",), False), "insecureSkipVerify": (("health",), True),
    "protocol": (("health",), False), "readinessInterval": (("health",), False),
    "weight": (("rs",), False), "address": (("rs",), False),
}


@PER_SURFACE
@given(key=st.sampled_from(sorted(HOLES)), value=scalars)
def test_care_yaml_one_setting_at_a_time(key: str, value: Any, accepted: list[Config],
                                         tmp_path: Path) -> None:
    """A valid file with one setting replaced: null, a boolean where none belongs, a number
    where text belongs are refused, never turned into "None", 1 or "1.5"."""
    rs: dict[str, Any] = {"address": "10.0.0.2:6443"}
    vs: dict[str, Any] = {"vs": "10.103.97.2:6443", "realServers": [rs]}
    doc: dict[str, Any] = {"virtualServers": [vs]}
    where, boolean = HOLES[key]
    target = {(): doc, ("vs",): vs, ("rs",): rs}.get(where) or vs.setdefault("health", {})
    target[key] = value
    path = tmp_path / "care.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    code, err = invoke(cli.main, ["care", "--run-once", "--config", str(path)])
    judge("YAML file, one setting", code, err, [key, str(path)], accepted)
    if value is None or (isinstance(value, bool) and not boolean) or \
            (isinstance(value, float) and key not in ("interval", "drainPeriod", "timeout")):
        assert code == 2, (key, value)


@pytest.mark.parametrize("content", [
    b"\xff\xfe\x00not utf-8", b"[" * 5000 + b"]" * 5000, b"a: &a [1,2]\nb: [*a, *a]\n",
    b"a: &a ['x','x','x','x','x','x','x','x','x']\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
    b"c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
    b"e: [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n",
    b"root:$6$salt$hash:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n",
], ids=["not-utf8", "deep-nesting", "alias", "alias-bomb", "a-shadow-file"])
def test_care_yaml_files_that_are_not_configs(content: bytes, accepted: list[Config],
                                              tmp_path: Path) -> None:
    path = tmp_path / "care.yaml"
    path.write_bytes(content)
    code, err = invoke(cli.main, ["care", "--run-once", "--config", str(path)])
    judge("YAML file", code, err, [str(path)], accepted)
    assert code == 2 and "$6$" not in err and "99999" not in err


@pytest.mark.parametrize("path", ["/dev/zero", "FIFO", "", "/nonexistent", "a\x00b", "DIR"])
def test_care_config_paths_that_are_not_files(path: str, accepted: list[Config],
                                              tmp_path: Path) -> None:
    import os

    if path == "FIFO":
        path = str(tmp_path / "fifo")
        os.mkfifo(path)
    if path == "DIR":
        path = str(tmp_path)
    code, err = invoke(cli.main, ["care", "--run-once", "--config", path])
    judge("YAML file", code, err, ["--config"], accepted)
    assert code == 2


SP_FLAGS = ["--vip", "--masters", "--name", "--image", "--options"]


@PER_SURFACE
@given(flag=st.sampled_from(SP_FLAGS), value=hostile)
def test_static_pod(flag: str, value: str, accepted: list[Config], tmp_path: Path) -> None:
    argv = ["static-pod", "--masters", "10.0.0.2", "--path", str(tmp_path), "--print", f"{flag}={value}"]
    code, err = invoke(cli.main, argv)
    judge("lvscare static-pod", code, err, [flag, "lvscare static-pod: error", "lvscare: error",
                                           "--options", "--masters"], accepted)
    assert list(tmp_path.iterdir()) == []  # --print writes nothing, whatever the input


INSTALLER_FLAGS = ["--node", "--master", "--vip", "--port", "--user", "--parallel", "--connect-timeout",
                   "--manifest-path", "--hosts-path", "--bin-path", "--state-dir", "--options",
                   "--pkg-url", "--pkg-sha256", "--name", "--image"]


@PER_SURFACE
@given(flag=st.sampled_from(INSTALLER_FLAGS), value=hostile)
def test_installer_join(flag: str, value: str) -> None:
    from lvscare_installer import cli as installer_cli

    argv = ["join", "--master", "10.0.0.2", "--node", "10.0.0.5", "--dry-run", f"{flag}={value}"]
    code, err = invoke(installer_cli.main, argv)
    outcome = {0: "accepted", 2: "refused"}.get(code, f"exit {code}")
    OUTCOMES.setdefault("installer join --dry-run", Counter())[outcome] += 1
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "\x1b" not in lines[0], err
        assert flag in lines[0] or "installer join: error" in lines[0] or "--" in lines[0], err


# Inputs that once escaped the sweep (issue 24): each is one line, exit 2, nothing done.
ESCAPED = [
    (cli.main, ["care", "--run-once", "--vs", "10.0.0.1:" + "1" * 5000, "--rs", "10.0.0.2:6443"],
     "--vs: the port in"),
    (cli.main, ["care", "--run-once", "--vs", "[[fd00::10]]:6443", "--rs", "[fd00::1]:6443"],
     "--vs: '[[fd00::10]]:6443' is not [IPv6]:port"),
]
INSTALLER_ESCAPED = [
    (["--passwd-file", "/dev/zero"], "--passwd-file: '/dev/zero' is larger than 64 KiB"),
    (["--pk", "/dev/zero"], "--pk: /dev/zero is not a regular file"),
    (["--node", "[::1]x"], "--node: '[::1]x' has no valid port"),
    (["--manifest-path", "/"], "--manifest-path: '/' is the node's root directory"),
    (["--state-dir", "//"], "--state-dir: '//' is the node's root directory"),
]


@pytest.mark.parametrize(("argv", "message"), [(a, m) for _, a, m in ESCAPED])
def test_inputs_that_escaped_before_are_one_line(argv: list[str], message: str,
                                                 accepted: list[Config]) -> None:
    code, err = invoke(cli.main, argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert accepted == []


@pytest.mark.parametrize(("extra", "message"), INSTALLER_ESCAPED)
def test_installer_inputs_that_escaped_before_are_one_line(extra: list[str], message: str) -> None:
    from lvscare_installer import cli as installer_cli

    argv = ["join", "--master", "10.0.0.2", "--node", "10.0.0.5", "--dry-run", *extra]
    code, err = invoke(installer_cli.main, argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("content", [b"apiVersion: v1\nkind: Pod\nspec: []\n",
                                     b"spec:\n  containers: [7]\n", b"\xff\xfe\x00not text"])
def test_set_img_on_a_manifest_that_is_not_a_pod(content: bytes, tmp_path: Path,
                                                 accepted: list[Config]) -> None:
    manifest = tmp_path / "kube-sealos-lvscare.yaml"
    manifest.write_bytes(content)
    code, err = invoke(cli.main, ["static-pod", "--set-img", "--path", str(tmp_path)])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--set-img" in err, err
    assert manifest.read_bytes() == content
