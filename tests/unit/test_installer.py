"""The installer's pure parts: hosts block, join command, plan, input errors, the zipapp bundle."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from installer import hosts
from installer.bundle import build
from installer.plan import Plan, kubeadm_api_version, parse_join_command

HASH = "sha256:" + "ab" * 32
JOIN = f"kubeadm join 10.0.0.2:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash {HASH} \n"


def test_hosts_block_is_appended_once_and_other_lines_are_kept() -> None:
    text = "127.0.0.1 localhost\n# keep me\n10.0.0.9 registry.local"  # no final newline
    once = hosts.with_entry(text, "10.103.97.2")
    assert once.startswith(text + "\n")
    assert once.count("apiserver.cluster.local") == 1
    assert hosts.with_entry(once, "10.103.97.2") == once
    moved = hosts.with_entry(once, "10.103.97.9")
    assert "10.103.97.9 apiserver.cluster.local" in moved and "10.103.97.2" not in moved
    assert hosts.without_entry(once) == text + "\n"


def test_hosts_entry_already_present_outside_the_block_is_not_duplicated() -> None:
    text = "127.0.0.1 localhost\n10.103.97.2 apiserver.cluster.local\n"
    assert hosts.with_entry(text, "10.103.97.2") == text


def test_hosts_entry_pointing_elsewhere_is_an_error() -> None:
    with pytest.raises(hosts.HostsConflict, match=r"already maps to 192\.168\.0\.2"):
        hosts.with_entry("192.168.0.2 apiserver.cluster.local  # sealos master0\n", "10.103.97.2")


_line = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x0b\x0c\x1c\x1d\x1e"
                              "\x85\u2028\u2029"), max_size=40).filter(lambda s: "lvscare" not in s
                                                                       and "apiserver" not in s)


@given(st.lists(_line, max_size=8))
def test_add_then_remove_gives_back_the_file(lines: list[str]) -> None:
    text = "".join(line + "\n" for line in lines)
    added = hosts.with_entry(text, "10.103.97.2")
    assert hosts.with_entry(added, "10.103.97.2") == added
    assert hosts.without_entry(added) == text


def test_join_command_parsing() -> None:
    tok = parse_join_command("W1127 some warning\n" + JOIN)
    assert tok.token == "abcdef.0123456789abcdef" and tok.ca_hashes == (HASH,)
    assert parse_join_command(JOIN.replace("--token ", "--token=")).token == tok.token
    with pytest.raises(ValueError, match="no valid --token"):
        parse_join_command(JOIN.replace("abcdef.0123456789abcdef", "nope"))
    with pytest.raises(ValueError, match="no valid --discovery"):
        parse_join_command("kubeadm join 10.0.0.2:6443 --token abcdef.0123456789abcdef\n")
    with pytest.raises(ValueError, match="no 'kubeadm join' line"):
        parse_join_command("error: not a master\n")


def test_kubeadm_api_version() -> None:
    assert kubeadm_api_version("v1.30.4") == "kubeadm.k8s.io/v1beta3"
    assert kubeadm_api_version("v1.31.0\n") == "kubeadm.k8s.io/v1beta4"
    assert kubeadm_api_version("v2.0.0") == "kubeadm.k8s.io/v1beta4"


def test_plan_addresses() -> None:
    plan = Plan(masters=("fd00::2",), nodes=("n1",), user="root", vip="fd00::97:2", port=6443)
    assert plan.vs == "[fd00::97:2]:6443" and plan.real_servers == ["[fd00::2]:6443"]
    assert plan.care_args() == ["care", "--vs", "[fd00::97:2]:6443", "--health-path", "/healthz",
                                "--health-schem", "https", "--rs", "[fd00::2]:6443"]


class _RecordingRemote:
    def __init__(self) -> None:
        self.commands: list[str] = []

    def run(self, script: str, *, timeout: float = 300, check: bool = True) -> tuple[int, str, str]:
        self.commands.append(script)
        return 0, "", ""


@pytest.mark.parametrize("options", [(), ("--mode=link", "--interval", "2s"), ("--scheduler=wrr",)])
def test_the_rules_before_join_are_the_rules_of_the_pod_after_it(options: tuple[str, ...]) -> None:
    """The node must not get route-mode rules from --run-once and a link-mode pod after join."""
    import shlex

    import yaml

    from installer import steps
    from lvscare import staticpod

    plan = Plan(masters=("10.0.0.2", "10.0.0.3"), nodes=("n1",), user="root", options=options)
    manifest = staticpod.render(staticpod.StaticPod(vip=plan.vs, masters=tuple(plan.real_servers),
                                                    options=plan.options))
    remote = _RecordingRemote()
    inputs = steps.Inputs(plan, None, None, "kube-sealos-lvscare", manifest, None)  # type: ignore[arg-type]
    steps.step_rules(remote, inputs)  # type: ignore[arg-type]
    (command,) = remote.commands
    argv = shlex.split(command)
    assert argv[0] == plan.paths.binary
    pod = yaml.safe_load(manifest)["spec"]
    daemon_args = pod["containers"][0]["args"]
    assert argv[1:] == [*daemon_args, "--run-once", "--log-format", "console"]
    assert pod["initContainers"][0]["args"] == [*daemon_args, "--run-once"]
    for option in options:
        assert option in daemon_args


def run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "installer", *args], capture_output=True, text=True,
                          timeout=60, **kw)  # type: ignore[call-overload]


def test_dry_run_prints_the_plan_per_node_and_needs_no_credentials() -> None:
    p = run("join", "--master", "127.0.0.1", "--node", "127.0.0.1:1", "--node", "127.0.0.1:2", "--dry-run")
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("preflight:") == 2 and "127.0.0.1:2:" in p.stdout
    assert "--run-once" in p.stdout and "apiserver.cluster.local:6443" in p.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["join", "--node", "n1", "--pk", "K"], "--master: at least one apiserver address is needed"),
    (["join", "--master", "m1", "--node", "n1"], "--master: 'm1' is not an IP address"),
    (["join", "--master", "10.0.0.2", "--node", "n1", "--port", "70000"], "--port: 70000 is out of range"),
    (["join", "--master", "10.0.0.2", "--node", "n1"], "give --pk, --passwd-file"),
    (["join", "--master", "10.0.0.2", "--node", "n1", "--node", "n1", "--pk", "K"], "n1 given twice"),
    (["join", "--master", "10.0.0.2", "--node", "n1", "--pk", "/nonexistent"], "--pk: cannot read"),
    (["join", "--master", "10.0.0.2", "--node", "n1", "--passwd-file", "/nonexistent"], "--passwd-file"),
    (["join", "--master", "10.0.0.2", "--node", "n1:x", "--dry-run"], "--node: 'n1:x' has no valid port"),
    (["join", "--master", "10.0.0.2", "--node", "n1", "--dry-run", "--hosts-path", "etc/hosts"],
     "--hosts-path: must be an absolute path"),
    (["join", "--master", "10.0.0.2", "--node", "n1", "--dry-run", "--options=--mode=bogus"],
     "--mode: 'bogus' is not one of"),
    (["join", "--master", "10.0.0.2", "--node", "n1", "--dry-run", "--pkg-url", "/nonexistent.tgz"],
     "--pkg-url: /nonexistent.tgz is not a file"),
    (["clean", "--node", "n1", "--pk", "K", "--parallel", "0"], "--parallel: 0 is out of range"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    args = [str(key) if a == "K" else a for a in args]
    p = run(*args)
    assert p.returncode == 2, p.stdout + p.stderr
    assert len(p.stderr.splitlines()) == 1 and message in p.stderr, p.stderr


def test_passwd_on_the_command_line_warns_and_never_echoes(tmp_path: Path) -> None:
    p = run("join", "--master", "10.0.0.2", "--node", "n1", "--passwd", "hunter2-secret",
            "--pk", "/nonexistent")
    assert p.returncode == 2
    assert "--passwd is visible to other users" in p.stderr and "--pk: cannot read" in p.stderr
    assert "hunter2-secret" not in p.stdout + p.stderr


def test_bundle_runs_on_a_bare_python_with_pure_python_dependencies(tmp_path: Path) -> None:
    b = build(tmp_path)
    assert b.size < 5_000_000
    names = zipfile.ZipFile(b.path).namelist()
    assert not [n for n in names if n.endswith(".so")]
    assert "lvscare/cli.pyc" in names and "aiohttp/__init__.pyc" in names
    assert not [n for n in names
                if n.startswith(("pyroute2", "fabric", "paramiko", "pytest", "prometheus_client"))]
    # What runs on a node, and no test rig: no lab, no test kernel, no demo.
    rig = [n for n in names if n.startswith(("lvscare_rig", "lvscare/lab", "tests"))
           or n.split("/")[-1].split(".")[0] in ("testkernel", "demo", "topology", "sshnodes")]
    assert rig == [] and "lvscare/daemon.pyc" in names
    again = build(tmp_path / "again")
    assert again.sha256 == b.sha256 and again.path != b.path  # reproducible: reruns skip the upload
    assert build(tmp_path).path == b.path  # cached
    # -I: no site-packages, no user site, no PYTHONPATH; everything must come from the zip.
    v = subprocess.run([sys.executable, "-I", str(b.path), "version", "--short"], capture_output=True,
                       text=True, check=True)
    assert v.stdout.startswith("v")
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import aiohttp, yarl, multidict, yaml, "
             "structlog, prometheus_client; print(aiohttp.__file__, yarl.__file__)")
    out = subprocess.run([sys.executable, "-I", "-c", probe, str(b.path)], capture_output=True, text=True,
                         check=True).stdout
    assert out.count(str(b.path)) == 2
