"""The docs, read as an operator who follows them literally would: every command example that can
run on this host runs (with safe values) and does what the docs say; every metric, log line,
flag and chart value they name exists in the code. Commands that need a kernel with IPVS or a
node (``lvscare care``, ``installer clean``) are checked by the parsers and validators they would
meet first; what they then do is the kernel tests' subject."""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lvscare.careflags import care_values, load_config
from lvscare.cli import make_parser
from lvscare_installer.cli import make_parser as installer_parser

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TEXT = {p.relative_to(REPO).as_posix(): p.read_text() for p in DOCS}
CODE = [*sorted((REPO / "lvscare").glob("*.py")),
        *sorted((REPO / "installer" / "lvscare_installer").glob("*.py"))]


def _commands() -> Iterator[tuple[str, str]]:
    """(doc, command line) for every `lvscare …`/`installer …` line of a shell block."""
    for doc, text in TEXT.items():
        for block in re.findall(r"```sh\n(.*?)```", text, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("  #")[0].strip()
                if re.match(r"(lvscare|installer) ", line):
                    yield doc, line


def _mentions() -> Iterator[tuple[str, str]]:
    """(doc, span) for every inline `lvscare …`/`installer …`: a command named in prose."""
    for doc, text in TEXT.items():
        for span in re.findall(r"`((?:lvscare|installer) [^`]+)`", text):
            if not span.split()[1].startswith("…"):  # "`lvscare …`": the tool, not a command
                yield doc, span


COMMANDS = sorted(set(_commands()))
MENTIONS = sorted(set(_mentions()))


def _subparser(tool: str, command: str) -> argparse.ArgumentParser:
    parser = make_parser() if tool == "lvscare" else installer_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            assert command in action.choices, f"no command {tool} {command}"
            return action.choices[command]
    raise AssertionError(tool)


@pytest.mark.parametrize(("doc", "span"), MENTIONS, ids=[f"{d}: {c[:60]}" for d, c in MENTIONS])
def test_every_command_named_in_prose_exists_with_its_flags(doc: str, span: str) -> None:
    words = span.split()
    sub = _subparser(words[0], words[1])
    accepted = {o for a in sub._actions for o in a.option_strings}
    flags = {w.split("=")[0] for w in words[2:] if w.startswith("-")}
    assert flags - accepted == set()


def _argv(line: str, tmp_path: Path) -> list[str]:
    """The documented line with its placeholders filled in with safe values."""
    line = re.sub(r"\[(--[^\]]+)\]", r"\1", line)  # optional parts, taken
    line = line.replace("REGISTRY/lvscare:vX", "registry.local/lvscare:v1")
    package = tmp_path / "package.tar.gz"
    package.write_bytes(b"a package")
    line = line.replace("FILE_OR_URL", str(package)).replace(
        "HEX", hashlib.sha256(package.read_bytes()).hexdigest())
    key = tmp_path / "id_key"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return [str(key) if a == "~/.ssh/id_ed25519" else a for a in shlex.split(line)]


@pytest.mark.parametrize(("doc", "line"), COMMANDS, ids=[f"{d}: {c[:60]}" for d, c in COMMANDS])
def test_every_documented_command(doc: str, line: str, tmp_path: Path) -> None:
    argv = _argv(line, tmp_path)
    tool, args = argv[0], argv[1:]
    if tool == "installer":
        if args[0] == "join":
            # A dry run needs no node: the plan, per node, in the documented order.
            p = subprocess.run([sys.executable, "-m", "lvscare_installer", *args, "--dry-run"],
                               capture_output=True, text=True, cwd=REPO)
            assert p.returncode == 0, p.stderr
            for node in [args[i + 1] for i, a in enumerate(args) if a == "--node"]:
                assert f"{node}:" in p.stdout
            steps = re.findall(r"^  (\w+):", p.stdout, re.M)[:7]
            assert steps == ["preflight", "package", "lvscare", "rules", "hosts", "manifest", "join"]
        else:
            installer_parser().parse_args(args)
        return
    if args[0] == "static-pod":
        out = tmp_path / "manifests"
        p = subprocess.run([sys.executable, "-m", "lvscare", *args, "--path", str(out)],
                           capture_output=True, text=True, cwd=REPO)
        assert p.returncode == 0, p.stderr
        if "--print" in args:
            assert yaml.safe_load(p.stdout)["kind"] == "Pod" and not out.exists()
            return
        (written,) = out.iterdir()
        pod = yaml.safe_load(written.read_text())
        assert written.name == "kube-sealos-lvscare.yaml" and pod["kind"] == "Pod"
        daemon = pod["spec"]["containers"][0]["args"]
        assert daemon[daemon.index("--vs") + 1] == args[args.index("--vip") + 1]
        return
    if args[0] == "version":
        p = subprocess.run([sys.executable, "-m", "lvscare", *args], capture_output=True, text=True)
        assert json.loads(p.stdout)["gitVersion"].startswith("v")
        return
    ns = make_parser(raise_errors=True).parse_args(args)
    if args[0] == "care":
        cfg = load_config(care_values(ns), {}, hosts=None)
        assert str(cfg.virtual_servers[0].endpoint) == args[args.index("--vs") + 1]


def test_the_commands_were_found() -> None:
    kinds = {(c.split()[0], c.split()[1]) for _, c in COMMANDS}
    assert {("lvscare", "care"), ("lvscare", "static-pod"), ("lvscare", "version"),
            ("lvscare", "status"), ("installer", "join"), ("installer", "clean")} <= kinds


# -- names -------------------------------------------------------------------------------------


def _code_strings() -> set[str]:
    out = set()
    for path in CODE:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                out.add(node.value)
    return out


STRINGS = _code_strings()


def test_every_metric_the_docs_name_exists() -> None:
    defined = {s for s in STRINGS if re.fullmatch(r"lvscare_[a-z_]+", s)}
    named = set()
    sources = {**TEXT, **{p.name: p.read_text() for p in (REPO / "monitoring").iterdir()}}
    for text in sources.values():
        named |= set(re.findall(r"\blvscare_[a-z_]+\b", text))
    named -= {"lvscare_rig", "lvscare_installer"}  # packages, not metrics
    base = {re.sub(r"_(bucket|sum|count)$", "", n) for n in named}
    assert base - defined == set()


# Backticked phrases that quote other programs, not lvscare's own words.
FOREIGN = {"pyenv init", "prepend-iptables-chains: false", "kill -HUP", "ss -K", "sudo -S",
           "kubernetes service portals", "hostNetwork: true", "modprobe -d", "alias lvscare",
           "kube-proxy --cleanup", "retry 3", "k8sServiceHost: apiserver.cluster.local",
           "k8sServicePort: 6443", "proto 76", "runAsUser: 0",
           "shutdown-delay-duration: 15s",  # kubeadm's extraArgs
           "httpchk GET /healthz",  # haproxy
           "imagePullPolicy: IfNotPresent", "podman kube play", "nsenter --net", "pod start",
           "dpkg-deb -x"}
TOOLS = ("lvscare", "installer", "kubectl", "helm", "crictl", "ctr", "ip", "iptables", "ipset", "curl",
         "sysctl", "docker", "kubeadm", "openssl", "python3", "echo", "rm", "sh", "apt", "pip",
         "ipvsadm", "ssh", "setpriv", "unshare", "systemctl", "sealctl", "pytest", "accept for",
         "virtual service", "scripts/")


def test_every_log_line_the_docs_quote_is_one_the_code_writes() -> None:
    """Each lower-case phrase in backticks (a log event, an error) is the code's own text; an
    ellipsis stands for what the code fills in."""
    missing = []
    for doc, text in TEXT.items():
        for span in re.findall(r"`([^`\n]+)`", text):
            if not re.fullmatch(r"[a-z][a-zA-Z ;:,()'\u2019\-…/.0-9]*", span) or " " not in span:
                continue
            if span in FOREIGN or re.match(rf"({'|'.join(map(re.escape, TOOLS))})\b", span):
                continue
            pieces = [p.strip(" ;:,") for p in span.split("…") if p.strip(" ;:,")]
            if not all(any(p in s for s in STRINGS) or p.startswith("real server ") for p in pieces):
                missing.append(f"{doc}: {span}")
    assert missing == []


def _our_flags() -> set[str]:
    flags: set[str] = set()

    def walk(p: argparse.ArgumentParser) -> None:
        for action in p._actions:
            flags.update(o for o in action.option_strings if o.startswith("--"))
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    walk(make_parser())
    walk(installer_parser())
    return flags


# Flags the docs name that belong to other programs.
FOREIGN_FLAGS = {
    "--service-cluster-ip-range", "--goaway-chance", "--node-labels", "--cleanup", "--set",
    "--platform", "--push", "--config", "--ignore-preflight-errors", "--token",
    "--discovery-token-ca-cert-hash", "--no-deps", "--random-fully", "--comment", "--mark",
    "--or-mark", "--match-set", "--vaddr", "--vport", "--vdir", "--net-host", "--privileged",
    "--rm", "--bounding-set", "--inh-caps", "--ambient-caps", "--no-new-privs", "--health",
    "--help", "--kubeconfig", "--namespace", "--name", "--short", "--all-namespaces",
    "--dport", "--sport", "--numeric", "--stats",  # ss, ipvsadm
    "--ipvs-exclude-cidrs", "--kube-proxy-arg",  # kube-proxy, k3s
    "--mount", "--print-join-command",  # Dockerfile RUN, kubeadm token create
    "--repeat", "--max-children", "--skip",  # bench/installer.py, scripts/mutation, bench/failover.py
    "--trials", "--real",  # bench/failover.py, bench/rolling_restart.py
    "--variant", "--include",  # debootstrap
    "--flag", "--int",  # a placeholder; an abbreviation quoted as refused
    "--patches", "--shutdown-delay-duration", "--request-timeout",  # kubeadm, kube-apiserver
    "--delays", "--seconds", "--seed", "--keep",  # bench/rolling_restart.py, bench/chaos.py
    "--build-arg", "--net", "--start",  # buildah/docker build, nsenter, podman kube play
    "--authorization-mode", "--endpoint-reconciler-type", "--shutdown-send-retry-after",
    "--shutdown-watch-termination-grace-period",  # kube-apiserver
    "--quick",  # scripts/test and scripts/kernel-test (lvscare_rig.tiers' pytest option)
}


def test_every_flag_the_docs_name_is_accepted_somewhere() -> None:
    ours = _our_flags() | {"--v"}  # `--v=4`: quoted as what is refused
    named = set()
    for text in TEXT.values():
        for block in [*re.findall(r"`([^`\n]+)`", text), *re.findall(r"```\w*\n(.*?)```", text, re.S)]:
            named |= set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", block))
    unknown = sorted(named - ours - FOREIGN_FLAGS)
    assert unknown == []


def test_every_chart_value_the_docs_name_exists_and_every_value_is_named() -> None:
    values = yaml.safe_load((REPO / "helm" / "lvscare" / "values.yaml").read_text())
    text = TEXT["docs/operating.md"]
    listed = re.search(r"Values \(all checked by `values.schema.json`.*?\n\n", text, re.S)
    assert listed is not None
    named = set()
    for span in re.findall(r"`([a-zA-Z.{},*]+)`", listed.group(0)):
        if span.endswith((".json", ".yaml")):
            continue
        m = re.fullmatch(r"(\w+)\.\{([\w,]+)\}", span)
        if m:
            named |= {f"{m.group(1)}.{k}" for k in m.group(2).split(",")}
        elif span.endswith(".*"):
            named |= {f"{span[:-2]}.{k}" for k in values[span[:-2]]}
        else:
            named.add(span)

    def exists(path: str) -> bool:
        node = values
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    assert sorted(n for n in named if not exists(n)) == []
    assert sorted(k for k in values if not any(n == k or n.startswith(k + ".") for n in named)) == []
