"""``installer join`` / ``clean`` against real OpenSSH servers: simulated nodes in network namespaces
inside the test kernel, so the ``--run-once`` each node runs programs a real IPVS table (its own,
per namespace). Files the installer writes land in each node's test directory (lvscare_rig.sshnodes);
``kubeadm`` on the nodes is a test double that records its arguments."""

from __future__ import annotations

import http.server
import io
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from lvscare_rig import sshnodes
from lvscare_rig.sshnodes import HOSTS, PASSWORD, SshLab

VS_LINE = "TCP  10.103.97.2:6443 rr"
TOKEN = "abcdef.0123456789abcdef"


def installer(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lvscare_installer", *args], capture_output=True, text=True,
                          timeout=600, env=env)


def rows(out: str) -> dict[str, str]:
    """The final table: node -> its line."""
    return {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}


@pytest.fixture
def lab2() -> Iterator[SshLab]:
    lab = sshnodes.build(2)
    yield lab
    lab.close()


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _package(tmp: Path) -> Path:
    """An offline package shaped like sealos' kube*.tar.gz: kube/shell/init.sh."""
    path = tmp / "kube.tar.gz"
    script = b"#!/bin/sh\necho \"init.sh ran in $(pwd)\" >> /mnt/init.log\n"
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("kube/shell/init.sh")
        info.size, info.mode = len(script), 0o755
        tf.addfile(info, io.BytesIO(script))
    return path


def test_join_programs_the_node_then_rerun_changes_nothing_then_clean_undoes_it(
        lab2: SshLab, tmp_path: Path) -> None:
    master, node = lab2.nodes
    pkg = _package(tmp_path)
    args = ["join", "--master", master.address, "--node", node.address, "--pkg-url", str(pkg),
            "--pkg-sha256", _digest(pkg),
            *lab2.flags()]
    first = installer(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "ok" in rows(first.stdout)[node.address]

    # Real rules in the node's kernel namespace, pointing at the master's apiserver port.
    table = node.ipvsadm()
    assert VS_LINE in table and "-> 10.210.1.2:6443" in table, table
    # The hosts file kept every other line and gained one marked entry.
    hosts = node.file("hosts").read_text()
    assert hosts.startswith(HOSTS)
    assert hosts.count("apiserver.cluster.local") == 1 and "10.103.97.2 apiserver.cluster.local" in hosts
    # The manifest is exactly what `lvscare static-pod` renders for the same input.
    manifest = node.file("kubernetes/manifests/kube-sealos-lvscare.yaml").read_text()
    rendered = subprocess.run([sys.executable, "-m", "lvscare", "static-pod", "--vip", "10.103.97.2:6443",
                               "--masters", "10.210.1.2:6443", "--print"],
                              capture_output=True, text=True, check=True).stdout
    assert manifest == rendered
    assert yaml.safe_load(manifest)["spec"]["containers"][0]["args"][-2:] == ["--rs", "10.210.1.2:6443"]
    # The package's init.sh ran, from its own directory.
    assert node.file("init.log").read_text().count("init.sh ran in") == 1
    assert "/kube/shell" in node.file("init.log").read_text()
    # kubeadm: the token came from the master and reached the node in a file, not a command line.
    assert master.kubeadm_calls() == ["token create --print-join-command"]
    calls = node.kubeadm_calls()
    assert calls[-1] == "join --config /mnt/state/join-configuration.yaml"
    assert not any(TOKEN in c for c in calls)
    join_conf = yaml.safe_load(node.file("join-config.seen").read_text())
    assert join_conf["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert join_conf["discovery"]["bootstrapToken"]["apiServerEndpoint"] == "apiserver.cluster.local:6443"
    assert join_conf["discovery"]["bootstrapToken"]["token"] == TOKEN
    assert not node.file("state/join-configuration.yaml").exists()
    assert TOKEN not in first.stdout + first.stderr

    # Rerun: every step finds its work done; no second join, no second init.sh, no duplicate entry.
    second = installer(*args)
    assert second.returncode == 0, second.stdout + second.stderr
    for step in ("lvscare", "hosts", "manifest", "join", "package"):
        assert f"[{node.address}] {step}: ok" in second.stderr, second.stderr
    assert node.kubeadm_calls() == calls
    assert node.file("hosts").read_text() == hosts
    assert node.file("init.log").read_text().count("init.sh ran in") == 1
    assert node.ipvsadm() == table

    cleaned = installer("clean", "--node", node.address, *lab2.flags())
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert node.kubeadm_calls()[-1] == "reset -f"
    assert not node.file("kubernetes/manifests/kube-sealos-lvscare.yaml").exists()
    assert node.file("hosts").read_text() == HOSTS
    assert "10.103.97.2" not in node.ipvsadm()
    assert not node.file("bin/lvscare").exists()


@pytest.mark.smoke
def test_the_rules_before_join_follow_the_pods_options(lab2: SshLab) -> None:
    """``--options=--mode=link``: the node's --run-once (before join) must create link-mode
    rules, as the static pod after join will, not route-mode ones."""
    master, node = lab2.nodes
    done = installer("join", "--master", master.address, "--node", node.address,
                     "--options=--mode=link", *lab2.flags())
    assert done.returncode == 0, done.stdout + done.stderr
    addr = subprocess.run(["ip", "-n", node.netns, "-o", "addr", "show", "dev", "lvscare"],
                          capture_output=True, text=True, check=False).stdout
    assert "10.103.97.2/32" in addr, addr  # link mode's dummy interface holds the VIP
    route = subprocess.run(["ip", "-n", node.netns, "route", "show", "table", "local", "proto", "76"],
                           capture_output=True, text=True, check=True).stdout
    assert route.strip() == ""  # and route mode's route is not there
    manifest = yaml.safe_load(node.file("kubernetes/manifests/kube-sealos-lvscare.yaml").read_text())
    assert "--mode=link" in manifest["spec"]["containers"][0]["args"]


def test_password_auth_and_a_wrong_password(lab2: SshLab, tmp_path: Path) -> None:
    master, node = lab2.nodes
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password-42\n")
    flags = lab2.flags(key=False)
    bad = installer("join", "--master", master.address, "--node", node.address,
                    "--passwd-file", str(wrong), *flags)
    assert bad.returncode == 1
    line = rows(bad.stdout)[node.address]
    assert "FAILED" in line and "connect: authentication failed for root@10.210.2.2 (password)" in line
    assert "not-the-password-42" not in bad.stdout + bad.stderr
    # Nothing changed on the node.
    assert node.file("hosts").read_text() == HOSTS
    assert not node.file("bin/lvscare").exists() and node.kubeadm_calls() == []

    # The right password from the environment; the package comes over HTTP from the test's address.
    pkg = _package(tmp_path)
    server = http.server.ThreadingHTTPServer(
        ("10.210.2.1", 0), lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://10.210.2.1:{server.server_address[1]}/{pkg.name}"
        good = installer("join", "--master", master.address, "--node", node.address, "--pkg-url", url,
                         "--pkg-sha256", _digest(pkg),
                         *flags, env={**_env(), "LVSCARE_SSH_PASSWORD": PASSWORD})
    finally:
        server.shutdown()
    assert good.returncode == 0, good.stdout + good.stderr
    assert VS_LINE in node.ipvsadm()
    assert node.file("init.log").exists()
    assert PASSWORD not in good.stdout + good.stderr


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_unreachable_and_failing_nodes_do_not_stop_the_others_and_a_rerun_finishes() -> None:
    lab = sshnodes.build(4, down=frozenset({4}))
    try:
        master, healthy, failing, down = lab.nodes
        failing.file("fail-join").write_text("")
        args = ["join", "--master", master.address, *lab.flags(), "--parallel", "3"]
        nodes = ["--node", healthy.address, "--node", failing.address, "--node", down.address]
        first = installer(*args, *nodes)
        assert first.returncode == 1
        result = rows(first.stdout)
        assert " ok " in result[healthy.address]
        assert "FAILED" in result[failing.address] and "join: exit 1: error execution phase" in \
            result[failing.address]
        assert "FAILED" in result[down.address] and "connect: cannot connect to 10.210.4.2:22" in \
            result[down.address]
        assert VS_LINE in healthy.ipvsadm() and VS_LINE in failing.ipvsadm()
        assert TOKEN not in first.stdout + first.stderr

        failing.file("fail-join").unlink()
        second = installer(*args, "--node", healthy.address, "--node", failing.address)
        assert second.returncode == 0, second.stdout + second.stderr
        assert f"[{failing.address}] join: done" in second.stderr
        assert f"[{healthy.address}] join: ok" in second.stderr
        assert failing.file("kubernetes/kubelet.conf").exists()
        # One token for the whole run, asked once per run.
        assert master.kubeadm_calls() == ["token create --print-join-command"] * 2
    finally:
        lab.close()


def test_host_keys_are_verified(lab2: SshLab, tmp_path: Path) -> None:
    node = lab2.nodes[1]
    empty = tmp_path / "known_hosts"
    flags = lab2.flags()
    flags[flags.index("--known-hosts") + 1] = str(empty)
    refused = installer("clean", "--node", node.address, *flags)
    assert refused.returncode == 1
    assert f"host key of {node.address} is not in {empty}" in refused.stdout

    accepted = installer("clean", "--node", node.address, *flags, "--accept-new-host-keys")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    recorded = empty.read_text().split()
    assert recorded[0] == node.address
    assert recorded[2] == node.file("ssh_host_ed25519_key.pub").read_text().split()[1]

    # A changed key is refused even with --accept-new-host-keys.
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    empty.write_text(f"{node.address} {' '.join(other.with_suffix('.pub').read_text().split()[:2])}\n")
    changed = installer("clean", "--node", node.address, *flags, "--accept-new-host-keys")
    assert changed.returncode == 1
    assert "does not match" in changed.stdout


def test_a_sudo_user_joins_and_cleans(lab2: SshLab, tmp_path: Path) -> None:
    """Not root: every step goes through `sudo -S`, its password (the SSH one) on stdin only."""
    master, node = lab2.nodes
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    flags = [*lab2.flags(key=False), "--user", sshnodes.SUDO_USER, "--passwd-file", str(secret)]
    joined = installer("join", "--master", master.address, "--node", node.address, *flags)
    assert joined.returncode == 0, joined.stdout + joined.stderr
    assert VS_LINE in node.ipvsadm()
    manifest = node.file("kubernetes/manifests/kube-sealos-lvscare.yaml")
    assert manifest.stat().st_uid == 0 and oct(manifest.stat().st_mode & 0o777) == "0o600"
    assert node.kubeadm_calls()[-1] == "join --config /mnt/state/join-configuration.yaml"
    assert list(node.file("home").iterdir()) == []  # uploads staged in the home are gone
    assert PASSWORD not in joined.stdout + joined.stderr
    cleaned = installer("clean", "--node", node.address, *flags)
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert node.file("hosts").read_text() == HOSTS and "10.103.97.2" not in node.ipvsadm()


APISERVER = """apiVersion: v1
kind: Pod
metadata: {name: kube-apiserver, namespace: kube-system}
spec:
  containers:
  - name: kube-apiserver
    command:
    - kube-apiserver
    - --service-cluster-ip-range=%s
"""


def test_the_cluster_is_checked_on_the_first_master_before_any_node_changes(lab2: SshLab) -> None:
    master, node = lab2.nodes
    args = ["join", "--master", master.address, "--node", node.address, *lab2.flags()]

    def unchanged() -> None:
        assert node.file("hosts").read_text() == HOSTS and not node.file("bin/lvscare").exists()
        assert "10.103.97.2" not in node.ipvsadm() and node.kubeadm_calls() == []

    # kubeadm's default service range holds the default VIP.
    master.file("kubernetes/manifests/kube-apiserver.yaml").write_text(APISERVER % "10.96.0.0/12")
    refused = installer(*args)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "the VIP 10.103.97.2 is inside the cluster's service range 10.96.0.0/12" in refused.stderr
    unchanged()
    # kube-proxy in ipvs mode, the VIP not excluded: the patch to apply, in the one line.
    master.file("kubernetes/manifests/kube-apiserver.yaml").write_text(APISERVER % "10.96.0.0/22")
    master.file("kube-proxy.conf").write_text("apiVersion: kubeproxy.config.k8s.io/v1alpha1\n"
                                              "kind: KubeProxyConfiguration\nmode: ipvs\n")
    refused = installer(*args)
    assert refused.returncode == 2 and "ipvs: {excludeCIDRs: [10.103.97.2/32]}" in refused.stderr
    unchanged()
    assert master.file("kubectl.log").read_text().count("--kubeconfig /mnt/kubernetes/admin.conf") == 2
    # Excluded: accepted. nftables mode: a note, and the join goes on.
    master.file("kube-proxy.conf").write_text("mode: nftables\n")
    joined = installer(*args)
    assert joined.returncode == 0, joined.stdout + joined.stderr
    assert "installer: note: kube-proxy runs in nftables mode" in joined.stderr
    # kubeadm's apiserver: no shutdown delay, the default grace period; noted, never refused.
    assert ("installer: note: kube-apiserver on " + master.address + " has "
            "--shutdown-delay-duration 0s") in joined.stderr
    assert "terminationGracePeriodSeconds 30 (the default)" in joined.stderr
    assert VS_LINE in node.ipvsadm()


def test_kubeadm_before_1_23_gets_the_manifest_after_join(lab2: SshLab) -> None:
    """kubeadm < 1.23 refuses to join with a file in the manifests directory (the test double
    does as it does); the manifest then follows the join."""
    master, node = lab2.nodes
    node.file("kubeadm-version").write_text("v1.22.17\n")
    joined = installer("join", "--master", master.address, "--node", node.address, *lab2.flags())
    assert joined.returncode == 0, joined.stdout + joined.stderr
    assert f"[{node.address}] manifest: after join (kubeadm < 1.23)" in joined.stderr
    assert f"[{node.address}] join: done, then the manifest" in joined.stderr
    assert node.file("kubernetes/manifests/kube-sealos-lvscare.yaml").exists()
    assert yaml.safe_load(node.file("join-config.seen").read_text())["apiVersion"] == "kubeadm.k8s.io/v1beta3"
    # The double would have refused the other order, as kubeadm 1.22 does.
    node.file("kubernetes/kubelet.conf").unlink()
    node.file("kubernetes/manifests/extra.yaml").write_text("kind: Pod\n")
    refused = installer("join", "--master", master.address, "--node", node.address, *lab2.flags())
    assert refused.returncode == 1 and "DirAvailable--etc-kubernetes-manifests" in refused.stdout
