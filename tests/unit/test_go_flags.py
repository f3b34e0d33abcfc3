"""Every flag of the Go ``lvscare care`` and of ``sealctl static-pod lvscare``, row by row: its name,
its pflag type (how a value is written, repeated, negated), its default and its meaning, against this
project's own parsers. A default that differs on purpose must be named in docs/migrating.md.

Sources (sealos): ``lifecycle/staging/src/github.com/labring/lvscare/care/options.go`` and
``prober.go`` (care), ``lifecycle/cmd/sealctl/cmd/static_pod.go`` and ``root.go`` (sealctl)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from lvscare.careflags import care_values, load_config
from lvscare.cli import main, make_parser
from lvscare.config import Config, VirtualServer
from lvscare.errors import UserError

MIGRATING = (Path(__file__).parents[2] / "docs" / "migrating.md").read_text()
VS, RS = "10.103.97.2:6443", "10.0.0.1:6443"


def care(*args: str) -> Config:
    ns = make_parser(raise_errors=True).parse_args(["care", *args])
    return load_config(care_values(ns), {}, hosts=None)


def vs(c: Config) -> VirtualServer:
    return c.virtual_servers[0]


@dataclass(frozen=True)
class Flag:
    name: str  # as written on a Go command line
    pflag: str  # its pflag type in Go
    go_default: Any  # Go's default, in this project's units (seconds, lower-case level, ...)
    read: Callable[[Config], Any]  # where the flag's meaning lands here
    uses: tuple[tuple[tuple[str, ...], Any], ...]  # Go command-line uses and what ``read`` gives
    default: Any = None  # this project's default when it differs on purpose...
    documented: str = ""  # ...and the docs/migrating.md text that says so


CARE: list[Flag] = [
    Flag("--vs", "string (required)", None, lambda c: str(vs(c).endpoint),
         ((("--vs", "10.103.97.9:443"), "10.103.97.9:443"), (("--vs=10.103.97.9:443",), "10.103.97.9:443"))),
    Flag("--rs", "stringSlice", None, lambda c: [str(r.endpoint) for r in vs(c).real_servers],
         ((("--rs", "10.0.0.1:6443,10.0.0.2:6443", "--rs", "10.0.0.3:6443"),
           ["10.0.0.1:6443", "10.0.0.2:6443", "10.0.0.3:6443"]),)),
    Flag("--scheduler", "string", "rr", lambda c: vs(c).scheduler,
         ((("--scheduler", "wlc"), "wlc"), (("--scheduler=sh",), "sh"))),
    Flag("--iface", "string", "lvscare", lambda c: c.iface, ((("--iface", "lvs0"), "lvs0"),)),
    Flag("-i", "string (short of --iface)", "lvscare", lambda c: c.iface, ((("-i", "lvs0"), "lvs0"),)),
    Flag("--logger", "string", "info", lambda c: c.log_level,
         ((("--logger", "DEBG"), "debug"), (("--logger", "INFO"), "info"))),
    Flag("--mode", "string", "route", lambda c: vs(c).mode,
         ((("--mode", "link"), "link"), (("--mode", "route"), "route"), (("--mode", ""), "none"))),
    Flag("--run-once", "bool", False, lambda c: c.run_once,
         ((("--run-once",), True), (("--run-once=true",), True), (("--run-once=false",), False))),
    Flag("--clean", "bool", False, lambda c: c.clean,
         ((("--clean",), True), (("--clean=false",), False))),
    Flag("-C", "bool (short of --clean)", False, lambda c: c.clean, ((("-C",), True),)),
    Flag("--interval", "durationOrSecond", 5.0, lambda c: c.interval,
         ((("--interval", "7"), 7.0), (("--interval", "1500ms"), 1.5), (("--interval=2m",), 120.0)),
         default=1.0, documented="interval 5 s, probe timeout 10 s | 1 s and 800 ms"),
    Flag("--ip", "IP", None, lambda c: c.ip,
         ((("--ip", "10.0.0.9"), ipaddress.ip_address("10.0.0.9")),)),
    Flag("--masqueradebit", "int", None, lambda c: None,  # accepted, nothing to mark here
         ((("--masqueradebit", "3"), None),)),
    Flag("--health-path", "string", "/healthz", lambda c: vs(c).health.path_for(h2=True),
         ((("--health-path", "/livez"), "/livez"), (("--health-path", "/healthz"), "/healthz")),
         default="/readyz", documented="default path `/readyz` on HTTP/2, `/healthz` on HTTP/1.1"),
    Flag("--health-schem", "string", "https", lambda c: vs(c).health.scheme,
         ((("--health-schem", "http"), "http"),)),
    Flag("--health-req-method", "string", "GET", lambda c: vs(c).health.method,
         ((("--health-req-method", "HEAD"), "HEAD"),)),
    Flag("--health-req-body", "string", "", lambda c: vs(c).health.body,
         ((("--health-req-method", "POST", "--health-req-body", "{}"), "{}"),)),
    Flag("--health-req-headers", "stringToString", {}, lambda c: dict(vs(c).health.headers),
         ((("--health-req-headers", "a=1,b=2", "--health-req-headers", "c=3"),
           {"a": "1", "b": "2", "c": "3"}),)),
    Flag("--health-status", "intSlice", set(), lambda c: set(vs(c).health.status),
         ((("--health-status", "401,403", "--health-status", "409"), {401, 403, 409}),)),
    Flag("--health-insecure-skip-verify", "bool", True, lambda c: vs(c).health.insecure_skip_verify,
         ((("--health-insecure-skip-verify=false",), False), (("--health-insecure-skip-verify",), True))),
    Flag("--health-timeout", "duration", 10.0, lambda c: vs(c).health.timeout,
         ((("--health-timeout", "2s"), 2.0), (("--health-timeout=1500ms",), 1.5)),
         default=0.8, documented="interval 5 s, probe timeout 10 s | 1 s and 800 ms"),
]
# Every flag Go's care registers (options.go RegisterFlags, prober.go RegisterFlags), shorthands
# included: the table above must cover exactly these.
GO_CARE_FLAGS = {
    "--vs", "--rs", "--scheduler", "--iface", "-i", "--logger", "--mode", "--run-once", "--clean", "-C",
    "--interval", "--ip", "--masqueradebit", "--health-path", "--health-schem", "--health-req-method",
    "--health-req-body", "--health-req-headers", "--health-status", "--health-insecure-skip-verify",
    "--health-timeout",
}


def test_the_table_covers_every_go_care_flag() -> None:
    assert {f.name for f in CARE} == GO_CARE_FLAGS


def _base(flag: Flag) -> list[str]:
    base = [] if flag.name == "--vs" else ["--vs", VS]
    return base + ([] if flag.name == "--rs" else ["--rs", RS])


@pytest.mark.parametrize("flag", CARE, ids=lambda f: f.name)
def test_care_flag_default(flag: Flag) -> None:
    if flag.go_default is None and flag.name in ("--vs", "--rs"):
        with pytest.raises(UserError):  # required in Go too (--rs unless -C)
            care(*_base(flag))
        return
    ours = flag.default if flag.default is not None else flag.go_default
    assert flag.read(care(*_base(flag))) == ours
    if flag.default is not None:
        assert flag.default != flag.go_default and flag.documented in MIGRATING


@pytest.mark.parametrize("flag", CARE, ids=lambda f: f.name)
def test_care_flag_type_and_meaning(flag: Flag) -> None:
    for use, expected in flag.uses:
        assert flag.read(care(*_base(flag), *use)) == expected, use


# -- sealctl static-pod lvscare ------------------------------------------------------------------


def _manifest(tmp_path: Path, *args: str) -> dict[str, Any]:
    assert main(["static-pod", "lvscare", "--path", str(tmp_path), *args]) == 0
    (written,) = tmp_path.glob("*.yaml")
    data = yaml.safe_load(written.read_text())
    data["_file"] = written.name
    return data


def _daemon(m: dict[str, Any]) -> dict[str, Any]:
    (c,) = m["spec"]["containers"]
    return dict(c)


SEALCTL = {  # flag: (pflag type, Go default)
    "--path": ("string (persistent)", "/etc/kubernetes/manifests"),
    "--vip": ("string", "10.103.97.2:6443"),
    "--name": ("string", "kube-sealos-lvscare"),
    "--image": ("string", "sealos.hub:5000/sealos/lvscare:latest"),
    "--set-img": ("bool", False),
    "--masters": ("stringSlice", []),
    "--options": ("stringSlice", []),
    "--print": ("bool", False),
    "--debug": ("bool (root, persistent)", False),
}


def test_static_pod_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lvscare import staticpod

    assert SEALCTL["--path"][1] == staticpod.DEFAULT_PATH
    m = _manifest(tmp_path, "--masters", "10.0.0.1")
    assert m["_file"] == f"{SEALCTL['--name'][1]}.yaml" and m["metadata"]["name"] == SEALCTL["--name"][1]
    args = _daemon(m)["args"]
    assert args[args.index("--vs") + 1] == SEALCTL["--vip"][1]
    # The image differs on purpose: ours is not sealos's registry.
    assert _daemon(m)["image"] == staticpod.DEFAULT_IMAGE != SEALCTL["--image"][1]
    assert "`sealos.hub:5000/sealos/lvscare:latest` | the same, except the image" in MIGRATING
    capsys.readouterr()


def test_static_pod_flags_types_and_meaning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = _manifest(tmp_path, "--vip", "10.103.97.9:443", "--name", "lvs", "--image", "reg.local/lvscare:v1",
                  "--masters", "10.0.0.1:6443,10.0.0.2", "--masters", "10.0.0.3",
                  "--options", "--mode=link,--interval=3s", "--options", "--health-status",
                  "--options", "401", "--debug")
    assert m["_file"] == "lvs.yaml" and m["metadata"]["name"] == "lvs"
    d = _daemon(m)
    assert d["image"] == "reg.local/lvscare:v1"
    assert all(c["image"] == "reg.local/lvscare:v1" for c in m["spec"]["initContainers"])
    args = d["args"]
    assert args[args.index("--vs") + 1] == "10.103.97.9:443"
    assert [args[i + 1] for i, a in enumerate(args) if a == "--rs"] == [
        "10.0.0.1:6443", "10.0.0.2:443", "10.0.0.3:443"]
    assert args[-4:] == ["--mode=link", "--interval=3s", "--health-status", "401"]
    assert "--debug" not in args  # sealctl's own flag, not lvscare's
    # --print (also as --print=true) writes to stdout and no file; --print=false writes the file.
    out = tmp_path / "print"
    out.mkdir()
    capsys.readouterr()
    assert main(["static-pod", "lvscare", "--path", str(out), "--masters", "10.0.0.1", "--print=true"]) == 0
    assert "kind: Pod" in capsys.readouterr().out and not list(out.iterdir())
    assert main(["static-pod", "lvscare", "--path", str(out), "--masters", "10.0.0.1", "--print=false"]) == 0
    assert [p.name for p in out.iterdir()] == ["kube-sealos-lvscare.yaml"]
    # --set-img: only the images change; --set-img=false renders as usual.
    before = (out / "kube-sealos-lvscare.yaml").read_text()
    assert main(["static-pod", "lvscare", "--path", str(out), "--set-img", "--image", "reg.local/x:v2"]) == 0
    after = (out / "kube-sealos-lvscare.yaml").read_text()
    assert after.replace("reg.local/x:v2", "IMAGE") == before.replace(
        yaml.safe_load(before)["spec"]["containers"][0]["image"], "IMAGE")
    assert main(["static-pod", "lvscare", "--path", str(out), "--set-img=false",
                 "--masters", "10.0.0.5"]) == 0
    assert "10.0.0.5:6443" in (out / "kube-sealos-lvscare.yaml").read_text()
