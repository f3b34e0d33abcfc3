"""``installer join`` and ``installer clean`` on nodes: each step idempotent, nodes in parallel.

Every step first looks at the node and does nothing when it is already done, so rerunning after a
failure finishes the job. A step reports "done" (it changed the node) or "ok" (already in place).
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lvscare_installer import hosts
from lvscare_installer.bundle import Bundle
from lvscare_installer.plan import (
    DEFAULT_SERVICE_RANGE,
    OLD_KUBEADM,
    JoinToken,
    NodeResult,
    Plan,
    join_configuration,
    kube_proxy_check,
    kubeadm_api_version,
    kubeadm_version,
    parse_join_command,
    redact,
    service_ranges,
    shutdown_notes,
    vip_in_service_range,
)
from lvscare_installer.remote import Auth, Remote, RemoteError

Progress = Callable[[str, str, str], None]
q = shlex.quote

_PREFLIGHT = """
[ "$(id -u)" = 0 ] || exit 10
command -v python3 >/dev/null || { echo none; exit 11; }
python3 -c 'import sys; v = sys.version_info; print("%d.%d.%d" % v[:3]); sys.exit(v < (3, 9))' || exit 11
[ -e /proc/net/ip_vs ] || modprobe ip_vs 2>/dev/null || [ -e /proc/net/ip_vs ] || exit 12
command -v kubeadm >/dev/null || [ "$1" = pkg ] || exit 13
"""
_PREFLIGHT_ERRORS = {
    10: "not root, and sudo did not make us root",
    11: "{found}; lvscare needs python3 >= 3.9 on the node before it joins: install it "
        "(apt-get install python3, dnf install python3) and run join again",
    12: "the kernel cannot load ip_vs (modprobe ip_vs failed)",
    13: "kubeadm is not on the node's PATH (install it, or give --pkg-url)",
}


@dataclass
class Inputs:
    """What every node gets, prepared once on the machine running the installer."""

    plan: Plan
    auth: Auth
    bundle: Bundle
    manifest_name: str
    manifest: str
    token: Callable[[], JoinToken]


class TokenSource:
    """One join token for the whole run, asked of the first master once (lazily, thread-safe)."""

    def __init__(self, plan: Plan, auth: Auth) -> None:
        self.plan, self.auth = plan, auth
        self._lock = threading.Lock()
        self._value: JoinToken | None = None
        self._error: str | None = None

    def __call__(self) -> JoinToken:
        with self._lock:
            if self._value is None and self._error is None:
                master = self.plan.masters[0]
                r = Remote(master, self.auth)
                try:
                    r.open()
                    _, out, _ = r.run("kubeadm token create --print-join-command", timeout=120)
                    self._value = parse_join_command(out)
                except (RemoteError, ValueError) as exc:
                    self._error = f"no join token from master {master}: {exc}"
                finally:
                    r.close()
            if self._error is not None:
                raise RemoteError(self._error)
            assert self._value is not None
            return self._value


def _write_if_changed(r: Remote, path: str, text: str, mode: int) -> str:
    if r.read(path) == text:
        return "ok"
    r.write(path, text.encode(), mode)
    return "done"


def step_preflight(r: Remote, inp: Inputs) -> str:
    code, out, _ = r.run(("set -- pkg\n" if inp.plan.pkg else "") + _PREFLIGHT, check=False)
    if code:
        last = out.strip().splitlines()[-1][:20] if out.strip() else "unknown"
        found = "no python3 found" if last == "none" else f"python3 {last} found"
        raise RemoteError(_PREFLIGHT_ERRORS.get(code, f"preflight exit {code}").format(found=found))
    return "ok"


def step_package(r: Remote, inp: Inputs) -> str:
    pkg, digest = inp.plan.pkg, inp.plan.pkg_sha256
    if not pkg or not digest:
        return "skipped"
    state = f"{inp.plan.paths.state}/pkg"
    # Keyed by content: a changed package at the same URL is applied; the same one is not again.
    key = digest[:16]
    work, archive = f"{state}/{key}", f"{state}/{key}.tgz"
    code, _, _ = r.run(f"[ -e {q(work)}/.lvscare-done ]", check=False)
    if code == 0:
        return "ok"
    r.run(f"mkdir -p -m 700 -- {q(state)}")
    if pkg.startswith(("http://", "https://")):
        r.run("python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], "
              f"sys.argv[2])' {q(pkg)} {q(archive)}", timeout=600)
    else:
        r.write(archive, Path(pkg).read_bytes(), 0o600)
    _, out, _ = r.run(f"sha256sum -- {q(archive)}")
    if out.split()[:1] != [digest]:
        r.run(f"rm -f -- {q(archive)}", check=False)
        raise RemoteError(f"package {pkg}: sha256 {out.split()[:1]} is not the --pkg-sha256 given; "
                          "nothing of it ran")
    r.run(f"rm -rf -- {q(work)} && mkdir -p -- {q(work)} && tar -xzf {q(archive)} -C {q(work)}")
    # init.sh at the top of the package or a level or two down (sealos packages: kube/shell/init.sh).
    r.run(f"cd -- {q(work)} && s=$(find . -maxdepth 3 -name init.sh | awk '{{print length, $0}}' | sort -n "
          f"| head -1 | cut -d' ' -f2-) && [ -n \"$s\" ] && cd \"$(dirname \"$s\")\" && sh ./init.sh",
          timeout=1800)
    r.run(f"touch -- {q(work)}/.lvscare-done")
    return "done"


def step_lvscare(r: Remote, inp: Inputs) -> str:
    path = inp.plan.paths.binary
    code, out, _ = r.run(f"sha256sum {q(path)} 2>/dev/null", check=False)
    if code == 0 and out.split()[:1] == [inp.bundle.sha256]:
        return "ok"
    r.write(path, inp.bundle.path.read_bytes(), 0o755)
    return "done"


def step_rules(r: Remote, inp: Inputs) -> str:
    args = [inp.plan.paths.binary, *inp.plan.care_args(), "--run-once", "--log-format", "console"]
    r.run(shlex.join(args), timeout=120)
    return "done"


def step_hosts(r: Remote, inp: Inputs) -> str:
    path = inp.plan.paths.hosts
    text = r.read(path) or ""
    try:
        new = hosts.with_entry(text, inp.plan.vip)
    except hosts.HostsConflict as exc:
        raise RemoteError(f"{path}: {exc}") from None
    if new == text:
        return "ok"
    r.write(path, new.encode(), 0o644)
    return "done"


def _kubeadm(r: Remote, inp: Inputs) -> str:
    """"joined", or the version kubeadm reports."""
    conf = inp.plan.paths.kubelet_conf
    _, version, _ = r.run(f"if [ -e {q(conf)} ]; then echo joined; else kubeadm version -o short; fi")
    return version.strip()


def _old_kubeadm(version: str) -> bool:
    parsed = kubeadm_version(version)
    return parsed is not None and parsed < OLD_KUBEADM


def step_manifest(r: Remote, inp: Inputs) -> str:
    # kubeadm before 1.23 refuses to join with anything in the manifests directory
    # (DirAvailable--etc-kubernetes-manifests): its manifest is written after the join instead.
    if _old_kubeadm(_kubeadm(r, inp)):
        return "after join (kubeadm < 1.23)"
    return _write_if_changed(r, f"{inp.plan.paths.manifests}/{inp.manifest_name}.yaml", inp.manifest, 0o600)


def step_join(r: Remote, inp: Inputs) -> str:
    version = _kubeadm(r, inp)
    if version == "joined":
        return "ok"
    token = inp.token()
    text = join_configuration(inp.plan, token, kubeadm_api_version(version))
    path = f"{inp.plan.paths.state}/join-configuration.yaml"
    r.write(path, text.encode(), 0o600)
    try:
        r.run(f"kubeadm join --config {q(path)}", timeout=600)
    except RemoteError as exc:
        raise RemoteError(redact(str(exc), [token.token])) from None
    finally:
        r.run(f"rm -f {q(path)}", check=False)
    if _old_kubeadm(version):
        _write_if_changed(r, f"{inp.plan.paths.manifests}/{inp.manifest_name}.yaml", inp.manifest, 0o600)
        return "done, then the manifest"
    return "done"


class ClusterRefused(Exception):
    """The cluster the nodes would join conflicts with the plan; one line, nothing changed."""


def check_cluster(plan: Plan, auth: Auth, force: bool) -> list[str]:
    """Look at the first master before any node changes: the VIP against the service range, and
    kube-proxy's mode. Raises ClusterRefused (unless ``force``); returns notes to print."""
    master = plan.masters[0]
    r = Remote(master, auth)
    try:
        r.open()
    except RemoteError as exc:
        return [f"cluster not checked: cannot reach master {master} ({exc})"]
    notes: list[str] = []
    refusals: list[str] = []
    try:
        manifest = r.read(plan.paths.apiserver_manifest)
        if manifest is None:
            notes.append(f"service range not checked: no {plan.paths.apiserver_manifest} on {master}")
        else:
            ranges = service_ranges(manifest) or [DEFAULT_SERVICE_RANGE]
            refusal = vip_in_service_range(plan.vip, ranges, master)
            if refusal:
                refusals.append(refusal)
            notes += shutdown_notes(manifest, master)
        code, conf, err = r.run(
            f"kubectl --kubeconfig {q(plan.paths.admin_conf)} -n kube-system get configmap kube-proxy "
            "-o 'jsonpath={.data.config\\.conf}'", check=False, timeout=60)
        if code:
            notes.append(f"kube-proxy's mode not checked on {master}: kubectl exit {code} "
                         f"({(err.strip().splitlines() or ['no output'])[-1][:120]})")
        else:
            _, refusal, note = kube_proxy_check(plan.vip, conf)
            if refusal:
                refusals.append(refusal)
            if note:
                notes.append(note)
    except RemoteError as exc:
        notes.append(f"cluster not fully checked on master {master}: {exc}")
    finally:
        r.close()
    if refusals and not force:
        raise ClusterRefused(refusals[0])
    return notes + [f"--force: going on although {x}" for x in refusals]


JOIN: list[tuple[str, Callable[[Remote, Inputs], str]]] = [
    ("preflight", step_preflight), ("package", step_package), ("lvscare", step_lvscare),
    ("rules", step_rules), ("hosts", step_hosts), ("manifest", step_manifest), ("join", step_join),
]


def clean_steps(plan: Plan, manifest_name: str) -> list[tuple[str, Callable[[Remote], str]]]:
    p = plan.paths
    binary = q(p.binary)

    def reset(r: Remote) -> str:
        code, _, _ = r.run("command -v kubeadm >/dev/null", check=False)
        if code:
            return "skipped"
        r.run("kubeadm reset -f", timeout=600)
        return "done"

    def manifest(r: Remote) -> str:
        code, _, _ = r.run(f"rm {q(p.manifests)}/{q(manifest_name)}.yaml 2>/dev/null", check=False)
        return "ok" if code else "done"

    def rules(r: Remote) -> str:
        code, _, _ = r.run(f"[ -x {binary} ]", check=False)
        if code:
            return "skipped"
        r.run(shlex.join([p.binary, "care", "--vs", plan.vs, "-C", "--log-format", "console"]), timeout=120)
        return "done"

    def hosts_block(r: Remote) -> str:
        text = r.read(p.hosts)
        if text is None:
            return "ok"
        new = hosts.without_entry(text)
        if new == text:
            return "ok"
        r.write(p.hosts, new.encode(), 0o644)
        return "done"

    def lvscare(r: Remote) -> str:
        code, _, _ = r.run(f"rm {binary} 2>/dev/null", check=False)
        return "ok" if code else "done"

    return [("reset", reset), ("manifest", manifest), ("rules", rules), ("hosts", hosts_block),
            ("lvscare", lvscare)]


def _redact(auth: Auth, text: str) -> str:
    return redact(text, [auth.password] if auth.password else [])


def _run_node(node: str, auth: Auth, steps: Sequence[tuple[str, Callable[[Remote], str]]],
              progress: Progress) -> NodeResult:
    res = NodeResult(node)
    start = time.monotonic()
    r: Remote | None = None
    step = "connect"
    try:
        r = Remote(node, auth)
        r.open()
        for step, fn in steps:
            t = time.monotonic()
            res.steps[step] = fn(r)
            progress(node, step, f"{res.steps[step]} ({time.monotonic() - t:.1f}s)")
    except RemoteError as exc:
        res.failed_step, res.error = step, _redact(auth, str(exc))
        progress(node, step, f"FAILED: {res.error}")
    except Exception as exc:  # a bug must fail one node, not the run
        res.failed_step, res.error = step, _redact(auth, f"{type(exc).__name__}: {exc}".splitlines()[0])
        progress(node, step, f"FAILED: {res.error}")
    finally:
        if r is not None:
            r.close()
        res.seconds = time.monotonic() - start
    return res


def run_parallel(nodes: Sequence[str], parallel: int,
                 work: Callable[[str], NodeResult]) -> list[NodeResult]:
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return list(pool.map(work, nodes))


def join(inp: Inputs, progress: Progress) -> list[NodeResult]:
    def bind(fn: Callable[[Remote, Inputs], str]) -> Callable[[Remote], str]:
        return lambda r: fn(r, inp)

    steps = [(name, bind(fn)) for name, fn in JOIN]
    return run_parallel(inp.plan.nodes, inp.plan.parallel,
                        lambda node: _run_node(node, inp.auth, steps, progress))


def clean(plan: Plan, auth: Auth, manifest_name: str, progress: Progress) -> list[NodeResult]:
    steps = clean_steps(plan, manifest_name)
    return run_parallel(plan.nodes, plan.parallel, lambda node: _run_node(node, auth, steps, progress))
