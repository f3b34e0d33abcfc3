"""The installer's pure parts: hosts block, join command, plan, input errors, the zipapp bundle."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lvscare_installer import hosts
from lvscare_installer.bundle import NODE_MODULES, build
from lvscare_installer.plan import Plan, kubeadm_api_version, parse_join_command

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
    with pytest.raises(hosts.HostsConflict) as err:
        hosts.with_entry("192.168.0.2 apiserver.cluster.local  # sealos master0\n"
                         "192.168.0.3 apiserver.cluster.local\n", "10.103.97.2")
    assert str(err.value) == ("apiserver.cluster.local already maps to 192.168.0.2, 192.168.0.3 "
                              "outside lvscare's block; remove that line first")


def test_hosts_edge_cases() -> None:
    """A commented-out mapping is no mapping; an unterminated block (a crash mid-write) is ours to
    the end of the file and is replaced, not doubled; CRLF files keep their other lines as they
    are."""
    commented = "# 192.168.0.2 apiserver.cluster.local\n127.0.0.1 localhost\n"
    added = hosts.with_entry(commented, "10.103.97.2")
    assert added.startswith(commented) and "10.103.97.2 apiserver.cluster.local" in added
    trailing = "127.0.0.1 localhost # apiserver.cluster.local is elsewhere\n"
    assert hosts.with_entry(trailing, "10.103.97.2").startswith(trailing)
    broken = f"127.0.0.1 localhost\n{hosts.BEGIN}\n10.103.97.2 apiserver.cluster.local\n"
    fixed = hosts.with_entry(broken, "10.103.97.9")
    assert fixed.count(hosts.BEGIN) == 1 and fixed.count(hosts.END) == 1
    assert "10.103.97.2" not in fixed and fixed.startswith("127.0.0.1 localhost\n")
    assert hosts.without_entry(broken) == "127.0.0.1 localhost\n"
    crlf = "127.0.0.1 localhost\r\n::1 localhost\r\n"
    assert hosts.without_entry(hosts.with_entry(crlf, "10.103.97.2")) == crlf


_line = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x0b\x0c\x1c\x1d\x1e"
                              "\x85\u2028\u2029"), max_size=40).filter(
    lambda s: s not in (hosts.BEGIN, hosts.END)
    and "apiserver.cluster.local" not in s.split("#", 1)[0])  # a live mapping would conflict


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
    with pytest.raises(ValueError, match=r"^the join command has no valid --token$"):
        parse_join_command(JOIN.replace("abcdef.0123456789abcdef", "nope"))
    with pytest.raises(ValueError, match=r"^the join command has no valid --discovery-token-ca-cert-hash$"):
        parse_join_command("kubeadm join 10.0.0.2:6443 --token abcdef.0123456789abcdef\n")
    with pytest.raises(ValueError, match=r"^no 'kubeadm join' line in the output of kubeadm token create$"):
        parse_join_command("error: not a master\n")


@pytest.mark.parametrize("version", ["v1.30.4", "v1.31.0"])
def test_join_configuration_labels_the_node_as_a_static_pod_node(version: str) -> None:
    """kubeadm's own shape for kubelet flags: a map in v1beta3, a list of name/value in v1beta4."""
    import yaml

    from lvscare.config import STATIC_POD_LABEL
    from lvscare_installer.plan import join_configuration

    plan = Plan(masters=("10.0.0.2",), nodes=("10.0.0.9",), user="root")
    token = parse_join_command("kubeadm join 10.0.0.2:6443 --token abcdef.0123456789abcdef "
                               "--discovery-token-ca-cert-hash sha256:" + "a" * 64)
    doc = yaml.safe_load(join_configuration(plan, token, kubeadm_api_version(version)))
    extra = doc["nodeRegistration"]["kubeletExtraArgs"]
    flags = {a["name"]: a["value"] for a in extra} if isinstance(extra, list) else extra
    assert flags == {"node-labels": f"{STATIC_POD_LABEL}=true"}
    assert isinstance(extra, list) == doc["apiVersion"].endswith("v1beta4")


def test_kubeadm_api_version() -> None:
    assert kubeadm_api_version("v1.30.4") == "kubeadm.k8s.io/v1beta3"
    assert kubeadm_api_version("v1.31.0\n") == "kubeadm.k8s.io/v1beta4"
    assert kubeadm_api_version("v2.0.0") == "kubeadm.k8s.io/v1beta4"


def test_plan_addresses() -> None:
    plan = Plan(masters=("fd00::2",), nodes=("n1",), user="root", vip="fd00::97:2", port=6443)
    assert plan.vs == "[fd00::97:2]:6443" and plan.real_servers == ["[fd00::2]:6443"]
    assert plan.care_args() == ["care", "--vs", "[fd00::97:2]:6443", "--health-path", "/readyz",
                                "--health-schem", "https", "--rs", "[fd00::2]:6443"]
    # join --discover: the rules step (--run-once, before join: no kubelet.conf yet, not read) and
    # the static pod run the same arguments.
    discovering = Plan(masters=("10.0.0.2",), nodes=("n1",), user="root", discover=True)
    assert discovering.care_args()[-4:] == ["--discover-from", "/etc/kubernetes/kubelet.conf",
                                            "--state-dir", "/var/lib/lvscare"]


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

    from lvscare import staticpod
    from lvscare_installer import steps

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
    return subprocess.run([sys.executable, "-m", "lvscare_installer", *args], capture_output=True, text=True,
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
    (["join", "--master", "10.0.0.2", "--node", "n1", "--node", "n1", "--pk", "K"],
     "n1 and n1 are the same node"),
    (["join", "--master", "10.0.0.2", "--node", "10.0.0.5", "--node", "10.0.0.5:22", "--pk", "K"],
     "10.0.0.5 and 10.0.0.5:22 are the same node"),
    (["join", "--master", "10.0.0.2", "--node", "-oProxyCommand=touch /tmp/x", "--dry-run"],
     "is not host[:port]"),
    (["join", "--master", "10.0.0.2", "--node", "a b", "--dry-run"], "--node: 'a b' is not host[:port]"),
    (["join", "--master", "10.0.0.2", "--node", "root@n1", "--dry-run"], "not user@host"),
    (["join", "--master", "10.0.0.2", "--node", "n1", "--user=-oProxyCommand=x", "--dry-run"],
     "--user: '-oProxyCommand=x' is not a user name"),
    (["join", "--master", "10.0.0.2", "--node", "n1", "--vip", "fe80::1%x\n6.6.6.6", "--dry-run"],
     "--vip: 'fe80::1%x\\n6.6.6.6' has control characters"),
    (["join", "--master", "10.0.0.2", "--node", "n1", "--vip", "fe80::1%eth0", "--dry-run"],
     "has a zone id"),
    (["join", "--master", "10.0.0.2", "--node", "n1", "--dry-run", "--state-dir", "/tmp/a\nb"],
     "--state-dir: '/tmp/a\\nb' must be an absolute path"),
    (["join", "--master", "10.0.0.2", "--node", "n1", "--dry-run", "--pkg-url", "https://x/p.tgz"],
     "--pkg-url needs --pkg-sha256"),
    (["join", "--master", "10.0.0.2", "--node", "n1", "--dry-run", "--pkg-url", "https://x/p.tgz",
      "--pkg-sha256", "nope"], "--pkg-sha256: 'nope' is not a SHA-256"),
    (["join", "--master", "10.0.0.2", "--node", "n1", "--passwd-file", "EMPTY"], "first line of"),
    (["join", "--master", "10.0.0.2", "--node", "n1", "--passwd-file", "LATIN1"], "is not UTF-8 text"),
    (["join", "--master", "10.0.0.2", "--node", "n1", "--pk", "ENCRYPTED"], "is encrypted"),
    (["join", "--master", "10.0.0.2", "--node", "n1", "--pk", "/nonexistent"], "--pk: cannot read"),
    (["join", "--master", "10.0.0.2", "--node", "n1", "--passwd-file", "/nonexistent"], "--passwd-file"),
    (["join", "--master", "10.0.0.2", "--node", "n1:x", "--dry-run"], "--node: 'n1:x' has no valid port"),
    (["join", "--master", "10.0.0.2", "--node", "n1", "--dry-run", "--hosts-path", "etc/hosts"],
     "--hosts-path: 'etc/hosts' must be an absolute path"),
    (["join", "--master", "10.0.0.2", "--node", "n1", "--dry-run", "--options=--mode=bogus"],
     "--mode: 'bogus' is not one of"),
    (["join", "--master", "10.0.0.2", "--node", "n1", "--dry-run", "--pkg-url", "/nonexistent.tgz",
      "--pkg-sha256", "ab" * 32], "--pkg-url: '/nonexistent.tgz' is not a file"),
    (["clean", "--node", "n1", "--pk", "K", "--parallel", "0"], "--parallel: 0 is out of range"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    key, encrypted = tmp_path / "key", tmp_path / "encrypted"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f", str(encrypted)],
                   check=True)
    (tmp_path / "empty").write_text("\nsecond line\n")
    (tmp_path / "latin1").write_bytes("pässwort\n".encode("latin-1"))
    files = {"K": key, "ENCRYPTED": encrypted, "EMPTY": tmp_path / "empty", "LATIN1": tmp_path / "latin1"}
    args = [str(files[a]) if a in files else a for a in args]
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
    assert b.size < 300_000
    names = zipfile.ZipFile(b.path).namelist()
    # What runs on a node before it joins, and nothing else: no third-party package, no daemon,
    # no test rig.
    assert sorted(n for n in names if n.endswith(".py")) == sorted(
        ["__main__.py", *(f"lvscare/{m}.py" for m in NODE_MODULES)])
    again = build(tmp_path / "again")
    assert again.sha256 == b.sha256 and again.path != b.path  # reproducible: reruns skip the upload
    assert build(tmp_path).path == b.path  # cached
    assert (tmp_path.stat().st_mode & 0o077) == 0
    # A cached bundle that changed after it was written is not uploaded: it is built again.
    good = b.path.read_bytes()
    b.path.write_bytes(good.replace(b"lvscare", b"evilcare", 1))
    rebuilt = build(tmp_path)
    assert rebuilt.sha256 == b.sha256 and rebuilt.path.read_bytes() == good
    # -I -S: no site-packages at all; everything but the standard library must come from the zip.
    v = subprocess.run([sys.executable, "-I", "-S", str(b.path), "version", "--short"],
                       capture_output=True, text=True, check=True)
    assert v.stdout.startswith("v")
    bad = subprocess.run([sys.executable, "-I", "-S", str(b.path), "care", "--run-once", "--vs",
                          "10.103.97.2:6443", "--rs", "nonsense"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--rs" in bad.stderr
    other = subprocess.run([sys.executable, "-I", "-S", str(b.path), "status"], capture_output=True,
                           text=True)
    assert other.returncode == 2 and "not in this node bundle" in other.stderr
    assert "Traceback" not in other.stderr


def test_the_node_modules_stay_python_3_9_and_standard_library_only() -> None:
    """Between kernel-test runs on Debian 11's python3.9: ruff's per-file target version names
    exactly these modules, vermin finds nothing newer than 3.9, and nothing evaluates an
    ``X | Y`` of types at run time (3.10) - the annotations are strings (PEP 563)."""
    import ast
    import tomllib

    root = Path(__file__).resolve().parents[2]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    (pattern,) = pyproject["tool"]["ruff"]["per-file-target-version"]
    listed = pattern.split("{")[1].split("}")[0].split(",")
    assert sorted(listed) == sorted(NODE_MODULES)
    paths = [root / "lvscare" / f"{m}.py" for m in NODE_MODULES]
    vermin = Path(sys.executable).with_name("vermin")
    out = subprocess.run([str(vermin), "-t=3.9-", "--violations", "--no-tips", *map(str, paths)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
    stdlib = sys.stdlib_module_names
    for path in paths:
        tree = ast.parse(path.read_text())
        source = path.read_text()
        if path.stem not in ("__init__", "__main__"):
            assert "from __future__ import annotations" in source, path
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("isinstance", "issubclass"):
                assert not isinstance(node.args[1], ast.BinOp), f"{path.name}:{node.lineno}"
            if isinstance(node, (ast.Import, ast.ImportFrom)) and node.col_offset == 0:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for name in names:
                    top = name.split(".")[0]
                    assert top in stdlib or top in ("lvscare", "__future__") or (
                        path.stem == "log" and top == "structlog"), f"{path.name} imports {name}"
        for node in tree.body:  # module-level aliases are evaluated at import
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.BinOp) and isinstance(
                    node.value.op, ast.BitOr):
                left = node.value.left
                assert not (isinstance(left, ast.Attribute) and left.attr[:1].isupper()), \
                    f"{path.name}:{node.lineno}"


# Each would create the file PWNED with the shell's own redirection (no command needed) if it
# ever ran as shell syntax.
HOSTILE = ["$(>PWNED)", "`>PWNED`", "a'b; >PWNED; '", "x\"; >PWNED; \"", "; >PWNED", "a\n>PWNED",
           "a b", "-rf", "*"]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_no_field_can_change_the_structure_of_a_remote_command(hostile: str, tmp_path: Path) -> None:
    """Every command the steps build, with a hostile string in every path, run by a real ``sh``
    in a scratch directory where every external command is a stub: nothing but the stubs runs,
    and each receives the hostile string as one argument."""
    import shlex

    import yaml

    from lvscare import staticpod
    from lvscare_installer import steps
    from lvscare_installer.plan import Paths
    from lvscare_installer.remote import Auth, Remote

    root = tmp_path / "node"
    root.mkdir()
    base = f"{root}/{hostile}"
    paths = Paths(manifests=f"{base}/m", hosts=f"{base}/hosts", binary=f"{base}/bin", state=f"{base}/s")
    plan = Plan(masters=("10.0.0.2",), nodes=("n1",), user="root", paths=paths)
    commands: list[str] = []

    class Recording(Remote):
        def __init__(self) -> None:
            self.root, self._staged, self.auth = True, True, Auth("root", staging=f"{base}/s")

        def run(self, script: str, *, timeout: float = 300, check: bool = True) -> tuple[int, str, str]:
            commands.append(script)
            return 1, "", ""  # "not done yet": every step goes on to its commands

        def _sftp(self):  # type: ignore[no-untyped-def]
            return _Uploads()

    class _Upload(io.BytesIO):
        def chmod(self, mode: int) -> None:
            pass

    class _Uploads:
        def open(self, path: str, mode: str) -> io.BytesIO:
            return _Upload()

        def putfo(self, fo: object, path: str) -> None:
            pass

    manifest = staticpod.render(staticpod.StaticPod(vip=plan.vs, masters=tuple(plan.real_servers)))
    inputs = steps.Inputs(plan, None, None, "kube-sealos-lvscare", manifest, None)  # type: ignore[arg-type]
    steps.step_rules(Recording(), inputs)
    steps.step_manifest(Recording(), inputs)
    Recording().write(f"{base}/hosts", b"127.0.0.1 localhost\n", 0o644)
    for _, fn in steps.clean_steps(plan, "kube-sealos-lvscare"):
        with contextlib.suppress(Exception):  # a step that needed an answer from a stub
            fn(Recording())
    assert yaml.safe_load(manifest)
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    log = tmp_path / "argv.log"
    for name in ("kubeadm", "rm", "sha256sum", "install", "mv", "mkdir", "touch", "tar", "find", "python3"):
        (stubs / name).write_text("#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\" >> "
                                  f"{shlex.quote(str(log))}; done\n")
        (stubs / name).chmod(0o755)
    assert len(commands) >= 4
    for script in commands:
        subprocess.run(["/bin/sh", "-c", script], cwd=tmp_path, env={"PATH": str(stubs)},
                       capture_output=True, timeout=10, check=False)
        assert not (tmp_path / "PWNED").exists() and not (root / "PWNED").exists(), script
    # The binary the rules step and -C run is one word: the stub for it is never created, so its
    # invocation fails; what matters is that the hostile text went nowhere else.
    assert not list(tmp_path.rglob("PWNED"))


def test_a_node_that_does_not_speak_ssh_fails_in_one_line(tmp_path: Path) -> None:
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer() -> None:
        for _ in range(3):  # bounded: paramiko may retry
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            conn.close()

    threading.Thread(target=answer, daemon=True).start()
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    try:
        p = run("clean", "--node", f"127.0.0.1:{port}", "--pk", str(key), "--connect-timeout", "5",
                "--known-hosts", str(tmp_path / "known_hosts"))
    finally:
        listener.close()
    assert p.returncode == 1, p.stdout + p.stderr
    assert "Traceback" not in p.stderr and "paramiko" not in p.stderr, p.stderr
    failed = [line for line in p.stdout.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and f"127.0.0.1:{port}" in failed[0], p.stdout


def test_secrets_are_redacted_from_node_errors() -> None:
    """The paths where a secret can reach an error message: a node command that echoes the SSH
    password (a failing sudo), and `kubeadm join` failing with the join token in its output."""
    from types import SimpleNamespace

    from lvscare_installer.plan import JoinToken, redact
    from lvscare_installer.remote import Auth, Remote, RemoteError
    from lvscare_installer.steps import Inputs, step_join

    assert redact("a hunter2 b hunter2", ["hunter2", ""]) == "a *** b ***"
    auth = Auth(user="root", password="hunter2-secret", key_file=None, known_hosts="/nonexistent",
                accept_new=False, connect_timeout=1.0)
    remote = Remote("10.0.0.9", auth)
    result = SimpleNamespace(exited=1, stdout="", stderr="sudo: hunter2-secret is wrong")
    remote.conn = SimpleNamespace(run=lambda *a, **k: result)  # type: ignore[assignment]
    with pytest.raises(RemoteError) as err:
        remote.run("true")
    assert "hunter2-secret" not in str(err.value) and "***" in str(err.value)

    token = JoinToken("abcdef.0123456789abcdef", ("sha256:" + "a" * 64,))

    class Node:
        def run(self, script: str, **kw: object) -> tuple[int, str, str]:
            if script.startswith("kubeadm join"):
                raise RemoteError(f"exit 1: bad token {token.token}")
            return 0, "v1.30.0\n", ""

        def write(self, path: str, data: bytes, mode: int) -> None:
            assert token.token.encode() in data  # in a 0600 file, where it belongs

    plan = Plan(masters=("10.0.0.2",), nodes=("10.0.0.9",), user="root")
    inputs = Inputs(plan, auth, None, "kube-sealos-lvscare", "", lambda: token)  # type: ignore[arg-type]
    with pytest.raises(RemoteError) as err:
        step_join(Node(), inputs)  # type: ignore[arg-type]
    assert token.token not in str(err.value) and "***" in str(err.value)


def test_dry_run_plan_says_what_each_step_will_do() -> None:
    from lvscare_installer.plan import describe

    plan = Plan(masters=("10.0.0.2", "10.0.0.3"), nodes=("n1",), user="ops")
    lines = describe(plan, "n1")
    assert lines == [
        "preflight: ssh ops@n1, root or sudo, python3 >= 3.9, ip_vs loadable, kubeadm on PATH",
        "package: none given",
        "lvscare: install the self-contained lvscare zipapp at /usr/local/bin/lvscare",
        "rules: /usr/local/bin/lvscare care --vs 10.103.97.2:6443 --health-path /readyz "
        "--health-schem https --rs 10.0.0.2:6443 --rs 10.0.0.3:6443 --run-once",
        "hosts: '10.103.97.2 apiserver.cluster.local' in lvscare's block of /etc/hosts",
        "manifest: write /etc/kubernetes/manifests/<name>.yaml (lvscare static-pod)",
        "join: kubeadm join apiserver.cluster.local:6443 with a token from 10.0.0.2 "
        "(skipped if /etc/kubernetes/kubelet.conf exists)",
    ]
    with_pkg = describe(Plan(masters=("10.0.0.2",), nodes=("n1",), user="root", pkg="/tmp/k.tgz"), "n1")
    assert with_pkg[0].endswith("kubeadm from the package")
    assert with_pkg[1] == "package: copy /tmp/k.tgz and run its init.sh"


def test_result_table() -> None:
    from lvscare_installer.plan import NodeResult, table

    ok = NodeResult("node-one", {"preflight": "done", "hosts": "ok", "join": "done"}, seconds=12.34)
    done = NodeResult("n2", {"preflight": "done"}, seconds=1.0)
    bad = NodeResult("n3", {"preflight": "done"}, failed_step="join", error="exit 1: no", seconds=3.0)
    assert ok.ok and not bad.ok
    assert table([ok, done, bad]).splitlines() == [
        "NODE      RESULT  TIME   DETAIL",
        "node-one  ok      12.3s  hosts ok",
        "n2        ok      1.0s   all steps done",
        "n3        FAILED  3.0s   join: exit 1: no",
    ]


def test_join_configuration_is_the_whole_document() -> None:
    import yaml

    from lvscare_installer.plan import JoinToken, join_configuration

    plan = Plan(masters=("10.0.0.2",), nodes=("n1",), user="root", port=6444)
    token = JoinToken("abcdef.0123456789abcdef", ("sha256:" + "a" * 64, "sha256:" + "b" * 64))
    text = join_configuration(plan, token, "kubeadm.k8s.io/v1beta3")
    assert text.startswith("apiVersion: kubeadm.k8s.io/v1beta3\nkind: JoinConfiguration\n")
    doc = yaml.safe_load(text)
    assert doc == {
        "apiVersion": "kubeadm.k8s.io/v1beta3",
        "kind": "JoinConfiguration",
        "discovery": {"bootstrapToken": {
            "apiServerEndpoint": "apiserver.cluster.local:6444",
            "token": "abcdef.0123456789abcdef",
            "caCertHashes": ["sha256:" + "a" * 64, "sha256:" + "b" * 64],
        }},
        "nodeRegistration": {"kubeletExtraArgs": {"node-labels": "lvscare.io/static-pod=true"}},
    }


def test_hosts_block_markers_exactly() -> None:
    """Markers count only as whole lines (CRLF allowed); an END before the block is just a line;
    text after the block is kept."""
    b, e = hosts.BEGIN, hosts.END
    crlf = f"127.0.0.1 localhost\r\n{b}\r\n10.0.0.1 apiserver.cluster.local\r\n{e}\r\n::1 x\r\n"
    assert hosts.without_entry(crlf) == "127.0.0.1 localhost\r\n::1 x\r\n"
    early_end = f"{e}\n127.0.0.1 localhost\n"
    assert hosts.without_entry(early_end) == early_end
    added = hosts.with_entry(early_end, "10.103.97.2")
    assert added.startswith(early_end) and added.endswith(f"{b}\n10.103.97.2 apiserver.cluster.local\n{e}\n")
    quoted = f"# see: {b}\n127.0.0.1 localhost\n"  # not a marker line
    assert hosts.without_entry(quoted) == quoted
    middle = f"1.1.1.1 a\n{b}\n10.0.0.1 apiserver.cluster.local\n{e}\n2.2.2.2 b\n"
    assert hosts.with_entry(middle, "10.103.97.2") == (
        f"1.1.1.1 a\n{b}\n10.103.97.2 apiserver.cluster.local\n{e}\n2.2.2.2 b\n")
    assert hosts.without_entry(middle) == "1.1.1.1 a\n2.2.2.2 b\n"
    # A name among several on a line, with a comment after it, is a mapping.
    with pytest.raises(hosts.HostsConflict):
        hosts.with_entry("10.0.0.5 other apiserver.cluster.local # note\n", "10.103.97.2")


def test_hosts_markers_are_whole_lines_and_comments_are_not_mappings() -> None:
    b, e = hosts.BEGIN, hosts.END
    # a marker with trailing blanks or more text is not a marker
    assert hosts.without_entry(f"{b}  \n1.1.1.1 a\n") == f"{b}  \n1.1.1.1 a\n"
    assert hosts.without_entry(f"{b}\n1.1.1.1 a\n{e}X\n2.2.2.2 b\n") == ""  # unterminated: ours
    # an empty block, and an END before the block
    assert hosts.without_entry(f"1.1.1.1 a\n{b}\n{e}\n2.2.2.2 b\n") == "1.1.1.1 a\n2.2.2.2 b\n"
    assert hosts.without_entry(f"{e}\n{b}\nx\n{e}\ny\n") == f"{e}\ny\n"
    # the name in a comment after a second '#' is still a comment
    text = "1.1.1.1 foo # old: # 9.9.9.9 apiserver.cluster.local\n"
    assert hosts.with_entry(text, "10.103.97.2").startswith(text)


def test_result_table_lists_every_step_not_done() -> None:
    from lvscare_installer.plan import NodeResult, table

    r = NodeResult("n1", {"preflight": "ok", "lvscare": "done", "join": "skipped"}, seconds=1.0)
    assert table([r]).splitlines()[1].endswith("preflight ok, join skipped")


def test_hosts_markers_with_trailing_characters_are_not_markers() -> None:
    b, e = hosts.BEGIN, hosts.END
    assert hosts.without_entry(f"{b}X\n1.1.1.1 a\n{e}\n") == f"{b}X\n1.1.1.1 a\n{e}\n"
    assert hosts.without_entry(f"{b}\n1.1.1.1 a\n{e}  \n2.2.2.2 b\n") == ""  # no END: ours to the end
    # the name after a first '#' is a comment even when another '#' follows
    text = "1.1.1.1 foo # apiserver.cluster.local # note\n"
    assert hosts.with_entry(text, "10.103.97.2").startswith(text)


def test_the_service_range_check() -> None:
    from lvscare_installer.plan import DEFAULT_SERVICE_RANGE, service_ranges, vip_in_service_range

    manifest = ("spec:\n  containers:\n  - command:\n    - kube-apiserver\n"
                "    - --service-cluster-ip-range=10.96.0.0/12,fd00:10:96::/112\n")
    ranges = service_ranges(manifest)
    assert [str(r) for r in ranges] == ["10.96.0.0/12", "fd00:10:96::/112"]
    refusal = vip_in_service_range("10.103.97.2", ranges, "192.168.0.2")
    assert refusal is not None and "10.96.0.0/12" in refusal and "10.103.97.2" in refusal
    assert "192.168.0.2" in refusal and "--force" in refusal and "\n" not in refusal
    # sealos' range leaves the default VIP outside.
    assert vip_in_service_range("10.103.97.2", service_ranges("- --service-cluster-ip-range=10.96.0.0/22"),
                                 "m") is None
    assert service_ranges("no flag here") == [] and DEFAULT_SERVICE_RANGE.num_addresses == 256


@pytest.mark.parametrize(("conf", "mode", "refused", "noted"), [
    ("mode: ipvs\nipvs:\n  excludeCIDRs: null\n", "ipvs", True, False),
    ("mode: ipvs\nipvs:\n  excludeCIDRs: [10.103.0.0/16]\n", "ipvs", False, False),
    ("mode: ipvs\n", "ipvs", True, False),
    ("mode: nftables\n", "nftables", False, True),
    ("mode: \"\"\n", "iptables", False, False),
    ("mode: iptables\n", "iptables", False, False),
])
def test_the_kube_proxy_check(conf: str, mode: str, refused: bool, noted: bool) -> None:
    from lvscare_installer.plan import kube_proxy_check

    got, refusal, note = kube_proxy_check("10.103.97.2", conf)
    assert got == mode and (refusal is not None) == refused and (note is not None) == noted
    if refusal:
        assert "ipvs: {excludeCIDRs: [10.103.97.2/32]}" in refusal and "rollout restart" in refusal
    if note:
        assert "flushes every IPVS virtual server" in note


def test_kubeadm_versions() -> None:
    from lvscare_installer.plan import kubeadm_version

    assert kubeadm_version("v1.22.17\n") == (1, 22) and kubeadm_version("garbage") is None
    assert kubeadm_api_version("v1.21.14") == "kubeadm.k8s.io/v1beta2"
    assert kubeadm_api_version("v1.22.0") == "kubeadm.k8s.io/v1beta3"


class _Preflight:
    """A node answering the preflight script as the given shell would."""

    def __init__(self, code: int, out: str) -> None:
        self.answer = (code, out, "")

    def run(self, script: str, *, timeout: float = 300, check: bool = True) -> tuple[int, str, str]:
        assert "sys.version_info" in script and "(3, 9)" in script
        return self.answer


@pytest.mark.parametrize(("code", "out", "message"), [
    (11, "none\n", "no python3 found; lvscare needs python3 >= 3.9 on the node before it joins: "
                   "install it (apt-get install python3, dnf install python3) and run join again"),
    (11, "3.8.10\n", "python3 3.8.10 found; lvscare needs python3 >= 3.9"),
    (12, "3.9.2\n", "the kernel cannot load ip_vs"),
])
def test_preflight_says_what_it_found_and_what_to_do(code: int, out: str, message: str) -> None:
    from lvscare_installer import steps
    from lvscare_installer.remote import RemoteError

    plan = Plan(masters=("10.0.0.2",), nodes=("n1",), user="root")
    inputs = steps.Inputs(plan, None, None, "kube-sealos-lvscare", "", None)  # type: ignore[arg-type]
    with pytest.raises(RemoteError) as exc:
        steps.step_preflight(_Preflight(code, out), inputs)  # type: ignore[arg-type]
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)
    assert steps.step_preflight(_Preflight(0, "3.13.1\n"), inputs) == "ok"  # type: ignore[arg-type]


def test_the_cluster_check_notes_short_shutdown_delays_and_grace_periods() -> None:
    from lvscare_installer.plan import shutdown_notes

    kubeadm = "spec:\n  containers:\n  - command:\n    - kube-apiserver\n    - --advertise-address=10.0.0.2\n"
    notes = shutdown_notes(kubeadm, "10.0.0.2")
    assert len(notes) == 2
    assert notes[0].startswith("kube-apiserver on 10.0.0.2 has --shutdown-delay-duration 0s, "
                               "shorter than lvscare's 10s to see a shutdown")
    assert "terminationGracePeriodSeconds 30 (the default), shorter than its shutdown delay + " \
           "60s (60s)" in notes[1]
    tuned = kubeadm + "    - --shutdown-delay-duration=15s\n  terminationGracePeriodSeconds: 75\n"
    assert shutdown_notes(tuned, "10.0.0.2") == []
    assert len(shutdown_notes(kubeadm + "    - --shutdown-delay-duration=1m10s\n"
                              "  terminationGracePeriodSeconds: 135\n", "m")) == 0
    assert len(shutdown_notes(kubeadm + "    - --shutdown-delay-duration=5s\n"
                              "  terminationGracePeriodSeconds: 90\n", "m")) == 1
