"""The one list of programs the suite runs (lvscare_rig.tools): the preflight that names a missing
one's package before any test kernel boots, the guard that keeps the list whole, and
scripts/setup and the README installing and naming exactly its packages."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from lvscare_rig import tools

ROOT = Path(__file__).resolve().parents[2]
HIDDEN = "catatonit"


def _path_without(hidden: str, tmp_path: Path) -> str:
    """A PATH with every listed program this machine has, but ``hidden``."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in tools.TOOLS:
        found = tools.find(tool)
        if tool.command.startswith("/") or tool.command == hidden or found is None:
            continue
        (bindir / tool.command).symlink_to(found)
    return str(bindir)


@pytest.mark.parametrize("entry", [["-m", "lvscare_rig.tools"],
                                   ["-m", "lvscare_rig.kernelsuite", "-k", "anything"]],
                         ids=["preflight", "kernel-test"])
def test_a_program_hidden_from_path_is_one_line_naming_its_package(entry: list[str],
                                                                     tmp_path: Path) -> None:
    assert tools.find(tools.BY_COMMAND[HIDDEN]) is not None, "scripts/setup installs it"
    env = {**os.environ, "PATH": _path_without(HIDDEN, tmp_path)}
    proc = subprocess.run([sys.executable, *entry], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [
        "missing: catatonit (Debian package catatonit: podman's pause process: no pod starts "
        "without it); scripts/setup installs it"]
    assert "kernel tests in" not in proc.stdout  # no test kernel booted


def test_with_every_program_there_the_preflight_passes_silently() -> None:
    proc = subprocess.run([sys.executable, "-m", "lvscare_rig.tools"], capture_output=True,
                          text=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_a_program_that_is_not_listed_cannot_be_run_by_the_tests() -> None:
    # The session runs under tools.guard() (tests/unit/conftest.py), as the kernel tests do.
    with pytest.raises(tools.ToolUnlisted, match="frobnicate is not listed"):
        subprocess.run(["frobnicate", "--version"], check=False)
    with pytest.raises(tools.ToolUnlisted, match="frobnicate is not listed"):
        subprocess.run(["ip", "netns", "exec", "nowhere", "frobnicate"], check=False)
    assert subprocess.run(["true"], check=False).returncode == 0


@pytest.mark.parametrize(("argv", "unlisted"), [
    (["ip", "netns", "exec", "n1", "ipvsadm", "-Ln"], None),
    (["ip", "netns", "exec", "n1", "haproxy2", "-f", "x"], "haproxy2"),
    (["unshare", "--mount", "--propagation", "private", "sh", "x.sh"], None),
    (["unshare", "-m", "--", "kubelet", "-v"], "kubelet"),
    (["nsenter", "--net=/run/netns/n1", "podman", "ps"], None),
    (["nsenter", "--net=/run/netns/n1", "docker", "ps"], "docker"),
    (["setpriv", "--reuid", "65534", "--inh-caps=-all", sys.executable, "-c", "1"], None),
    (["prlimit", "--nofile=512:1024", "conntrack", "-L"], "conntrack"),
    (["timeout", "-s", "KILL", "5", "ss", "-t"], None),
    (["env", "A=1", "keepalived", "-n"], None),
    (["/usr/sbin/sshd", "-D"], None),
    (["/var/cache/lvscare-control-plane/bin/kube-apiserver"], None),
    (["/opt/elsewhere/bin/kubeadm"], "kubeadm"),
    ([str(ROOT / "tests" / "support" / "kubeadm-double")], None),
])
def test_wrappers_are_looked_through(argv: list[str], unlisted: str | None) -> None:
    assert tools.unlisted(argv) == unlisted


def test_need_names_the_package_of_a_missing_program(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(tools.ToolMissing, match=r"^missing: skopeo \(Debian package skopeo: "):
        tools.need("skopeo")
    with pytest.raises(tools.ToolUnlisted):
        tools.need("frobnicate")


def test_setup_installs_the_tables_packages_and_the_readme_names_them() -> None:
    # scripts/setup reads the list with the system's python3, before the virtualenv exists.
    proc = subprocess.run(["/usr/bin/python3", "-I", str(ROOT / "rig" / "lvscare_rig" / "tools.py"),
                           "packages"], capture_output=True, text=True, check=True)
    listed = proc.stdout.split()
    assert listed == tools.packages() and len(set(listed)) == len(listed)
    setup = (ROOT / "scripts" / "setup").read_text()
    assert "rig/lvscare_rig/tools.py packages" in setup
    readme = (ROOT / "README.md").read_text()
    named = re.search(r"installs the system packages \(`([^`]+)`", readme)
    assert named is not None, "README names the packages scripts/setup installs"
    assert named.group(1).split() == ["python3", "python3-venv", *listed]
    # Each listed tool's package is named once in the table with its reason.
    assert all(t.why and t.package for t in tools.TOOLS)
