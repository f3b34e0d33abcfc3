"""The real artifacts in a real pod runner: the image scripts/image built from this checkout, run by
podman's ``kube play`` in the test kernel, under four manifests nobody rewrote for the test (only
their real-server addresses and the host paths the test kernel lacks), against HTTPS apiserver
stand-ins in namespaces. Where podman is not a kubelet, lvscare_rig.pods says what is done instead.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from lvscare_rig import pods
from lvscare_rig.topology import Lab

from .helpers import wait, weights

pytestmark = pytest.mark.needs("image")

REPO = Path(__file__).resolve().parents[2]
VIP = "10.103.97.2:6443"
# /proc/<pid>/status of the daemon, by what its securityContext asks.
LEAST = {"CapEff": "0000000000003000", "NoNewPrivs": "1", "Seccomp": "2"}  # NET_ADMIN, NET_RAW
PRIVILEGED = {"CapEff": "000001ffffffffff", "NoNewPrivs": "0", "Seccomp": "0"}  # 6.1: 41 caps


@pytest.fixture(scope="module")
def podman() -> pods.Podman:
    runner = pods.Podman()
    name, took = runner.load()
    print(f"image {name} loaded in {took:.1f} s")
    return runner


@pytest.fixture
def lab_pods(lab: Lab, podman: pods.Podman) -> Iterator[Lab]:
    yield lab
    for line in podman("pod", "ps", "--format", "{{.Name}}", check=False).stdout.split():
        podman.remove(line)


def _addresses(lab: Lab) -> list[str]:
    return [b.address for b in lab.backends]


def _with_real_servers(args: list[str], lab: Lab) -> list[str]:
    """``args`` with its --rs values replaced by the lab's apiservers (the only edit)."""
    out: list[str] = []
    rs = iter(_addresses(lab))
    for i, a in enumerate(args):
        out.append(next(rs) if i and args[i - 1] == "--rs" else a)
    return out


def static_pod(lab: Lab) -> dict[str, Any]:
    """What `lvscare static-pod` writes for these masters."""
    masters = ",".join(b.ip4 for b in lab.backends)
    made = lab.lvscare("static-pod", "--masters", masters, "--print")
    assert made.returncode == 0, made.stderr
    return pods.for_the_test_kernel(yaml.safe_load(made.stdout))


def sealos_pod(lab: Lab) -> dict[str, Any]:
    pod = yaml.safe_load((REPO / "tests" / "support" / "sealos-lvscare.yaml").read_text())
    for c in pod["spec"]["containers"]:
        c["args"] = _with_real_servers(c["args"], lab)
    return pods.for_the_test_kernel(pod)


def helm_pod(lab: Lab) -> dict[str, Any]:
    """The pod of the Helm chart's DaemonSet, from Helm's own engine (`helm template`)."""
    from helm_python import chart as helm

    out = helm.Chart.load(REPO / "helm" / "lvscare").render(
        {"realServers": _addresses(lab)}, name="lvscare", namespace="kube-system", is_install=True)
    (ds,) = [d for path, text in out.items() if path.endswith(".yaml")
             for d in yaml.safe_load_all(text) if d and d["kind"] == "DaemonSet"]
    template = ds["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "lvscare-node", "namespace": "kube-system", **template["metadata"]},
           "spec": template["spec"]}
    return pods.for_the_test_kernel(pod)


def daemon_of(pod: dict[str, Any]) -> dict[str, Any]:
    (c,) = pod["spec"]["containers"]
    return c  # type: ignore[no-any-return]


def expected_privileges(container: dict[str, Any]) -> dict[str, str]:
    return PRIVILEGED if container.get("securityContext", {}).get("privileged") else LEAST


def proc_status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: v.strip() for k, v in re.findall(r"^(CapEff|NoNewPrivs|Seccomp):\s*(\S+)$", text, re.M)}


def health_probe(container: dict[str, Any]) -> dict[str, Any]:
    """The container's liveness probe; sealos's has none, so the GET a user would make."""
    return container.get("livenessProbe") or {"httpGet": {"host": "127.0.0.1", "port": 10262,
                                                          "path": "/healthz"}}


def table(lab: Lab) -> dict[str, int]:
    return weights(lab, f"TCP {VIP}")


def check_the_running_pod(lab: Lab, podman: pods.Podman, manifest: dict[str, Any]) -> None:
    name = manifest["metadata"]["name"]
    container = daemon_of(manifest)
    everyone = set(_addresses(lab))
    wait(lambda: set(table(lab)) == everyone, 90)
    pid = podman.pid(name, container["name"])
    assert proc_status(pid) == expected_privileges(container)
    # The root file system, written from inside the container.
    write = podman.exec(name, container["name"], "python3", "-c", "open('/lvscare-was-here', 'w')")
    if container.get("securityContext", {}).get("readOnlyRootFilesystem"):
        assert write.returncode != 0 and "Read-only file system" in write.stderr, write
    else:  # sealos's manifest asks for a writable root; the runtime gives it
        assert write.returncode == 0, write.stderr
    # What the kubelet's liveness probe gets, and what an operator sees from the node.
    wait(lambda: pods.kubelet_http_get(lab.node, health_probe(container)) == 200, 30)
    status = lab.lvscare("status")
    assert status.returncode == 0, status.stderr
    assert all(a in status.stdout for a in everyone), status.stdout
    # A killed apiserver is out, and back once it answers again.
    dead = lab.backends[0]
    lab.kill(dead)
    wait(lambda: dead.address not in table(lab), 15)
    lab.start(dead)
    wait(lambda: table(lab).get(dead.address) == 1, 15)


def check_recreated_while_dead(lab: Lab, podman: pods.Podman, manifest: dict[str, Any],
                               play: Callable[[], None]) -> None:
    """The pod deleted and created again (an upgrade, a manifest edit) while an apiserver is dead:
    it stays out through the new pod's init container and daemon, and comes back when it answers."""
    name = manifest["metadata"]["name"]
    dead = lab.backends[1]
    lab.kill(dead)
    wait(lambda: dead.address not in table(lab), 15)
    podman.remove(name)
    assert dead.address not in table(lab)  # the rules stay while no lvscare runs
    play()
    container = daemon_of(manifest)
    wait(lambda: podman("container", "exists", f"{name}-{container['name']}", check=False).returncode == 0
         and podman.container(name, container["name"])["State"]["Running"], 90)
    others = set(_addresses(lab)) - {dead.address}
    end = time.monotonic() + 5
    while time.monotonic() < end:
        assert set(table(lab)) == others
        time.sleep(0.2)
    lab.start(dead)
    wait(lambda: table(lab).get(dead.address) == 1, 20)


@pytest.mark.parametrize("which", ["static-pod", "sealos", "helm"])
def test_the_image_runs_under_the_manifest(lab_pods: Lab, podman: pods.Podman, which: str) -> None:
    lab = lab_pods
    manifest = {"static-pod": static_pod, "sealos": sealos_pod, "helm": helm_pod}[which](lab)

    def play() -> None:
        podman.play(copy.deepcopy(manifest), lab.node)

    play()
    check_the_running_pod(lab, podman, manifest)
    check_recreated_while_dead(lab, podman, manifest, play)


@pytest.mark.smoke(quick=False)
def test_the_kubelets_order_init_to_completion_then_the_daemon(lab_pods: Lab, podman: pods.Podman) -> None:
    """The static pod as a kubelet starts it: the init container alone, to completion, then the
    daemon. Its rules are in place, with every real server, before the daemon exists."""
    lab = lab_pods
    manifest = static_pod(lab)
    name = manifest["metadata"]["name"]
    (init,) = manifest["spec"]["initContainers"]
    first = copy.deepcopy(manifest)
    first["metadata"]["name"] = f"{name}-init"
    first["spec"]["containers"] = [first["spec"].pop("initContainers")[0]]
    first["spec"]["restartPolicy"] = "Never"
    podman.play(first, lab.node)
    wait(lambda: podman.container(f"{name}-init", init["name"])["State"]["Status"] == "exited", 90)
    state = podman.container(f"{name}-init", init["name"])["State"]
    assert state["ExitCode"] == 0, podman("logs", f"{name}-init-{init['name']}", check=False).stderr
    assert set(table(lab)) == set(_addresses(lab))
    # The sysctls only a privileged container can write (/proc/sys is read-only otherwise).
    sysctls = lab.run("sysctl", "-n", "net.ipv4.vs.expire_nodest_conn",
                      "net.ipv4.vs.expire_quiescent_template").stdout.split()
    assert sysctls == ["1", "1"], sysctls
    podman.remove(f"{name}-init")
    daemon = copy.deepcopy(manifest)
    del daemon["spec"]["initContainers"]
    podman.play(daemon, lab.node)
    check_the_running_pod(lab, podman, daemon)
