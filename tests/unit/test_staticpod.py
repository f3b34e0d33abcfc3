"""``lvscare static-pod``: the manifest is valid Kubernetes, least-privileged, and the one source."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from lvscare import staticpod
from lvscare.cli import main

REPO = Path(__file__).resolve().parents[2]
MASTERS = ("192.168.0.2", "192.168.0.3", "192.168.0.4")


@pytest.mark.parametrize("options", [(), ("--mode", "link"), ("--health-status", "401", "--interval", "2s")])
def test_manifest_is_valid_against_the_kubernetes_schema(options: tuple[str, ...]) -> None:
    doc = staticpod.manifest(staticpod.StaticPod(masters=MASTERS, options=options))
    for version in ("1.28", "1.31"):
        kubernetes_validate.validate(doc, version, strict=True)


def test_daemon_runs_with_net_admin_only_and_the_init_container_is_the_run_once() -> None:
    doc = staticpod.manifest(staticpod.StaticPod(masters=MASTERS))
    spec = doc["spec"]
    main_c, = spec["containers"]
    init, = spec["initContainers"]
    assert spec["hostNetwork"] is True and spec["priorityClassName"] == "system-node-critical"
    assert main_c["securityContext"]["privileged"] is False
    assert main_c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    assert main_c["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert main_c["resources"]["limits"] and main_c["resources"]["requests"]
    assert main_c["livenessProbe"]["httpGet"] == {"host": "127.0.0.1", "port": 10262, "path": "/healthz"}
    assert init["args"] == [*main_c["args"], "--run-once"]
    assert {"name": "lib-modules", "mountPath": "/lib/modules", "readOnly": True} in main_c["volumeMounts"]
    # Go lvscare's argument order, so diffs against an old manifest read naturally.
    assert main_c["args"] == ["care", "--vs", "10.103.97.2:6443", "--health-path", "/readyz",
                              "--health-schem", "https", "--rs", "192.168.0.2:6443",
                              "--rs", "192.168.0.3:6443", "--rs", "192.168.0.4:6443"]


def test_the_committed_example_is_what_the_generator_writes() -> None:
    committed = (REPO / "manifests" / "kube-sealos-lvscare.yaml").read_text()
    assert committed == staticpod.render(staticpod.StaticPod(masters=(",".join(MASTERS),)))


def test_static_pod_writes_the_file_atomically_and_set_img_changes_only_the_image(tmp_path: Path) -> None:
    assert main(["static-pod", "--masters", "10.0.0.2", "--path", str(tmp_path), "--vip",
                 "10.103.97.2:6443"]) == 0
    path = tmp_path / "kube-sealos-lvscare.yaml"
    before = yaml.safe_load(path.read_text())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    assert main(["static-pod", "--set-img", "--image", "registry.local/lvscare:v9", "--path",
                 str(tmp_path)]) == 0
    after = yaml.safe_load(path.read_text())
    assert after["spec"]["containers"][0]["image"] == "registry.local/lvscare:v9"
    assert after["spec"]["initContainers"][0]["image"] == "registry.local/lvscare:v9"
    after["spec"]["containers"][0]["image"] = after["spec"]["initContainers"][0]["image"] = \
        before["spec"]["containers"][0]["image"]
    assert after == before


def test_bare_master_addresses_take_the_vip_port() -> None:
    assert staticpod.real_servers("[fd00::2]:443", ["fd00::1", "[fd00::3]:6443"]) == \
        ["[fd00::1]:443", "[fd00::3]:6443"]
    assert staticpod.real_servers("10.103.97.2:6443", ["10.0.0.1,10.0.0.2:7443"]) == \
        ["10.0.0.1:6443", "10.0.0.2:7443"]


@pytest.mark.parametrize(("args", "message"), [
    ([], "--masters: at least one apiserver address is needed"),
    (["--masters", "10.0.0.300"], "--masters: '10.0.0.300' is not an address"),
    (["--masters", "10.0.0.2", "--vip", "10.103.97.2"], "--vip: '10.103.97.2' has no port"),
    (["--masters", "10.0.0.2", "--options=--mode=bogus"], "--mode: 'bogus' is not one of"),
    (["--masters", "10.0.0.2", "--options=--run-once"], "--run-once and -C make no sense"),
    (["--masters", "10.0.0.2", "--options=--bogus"], "lvscare care would reject it: unrecognized"),
    (["--masters", "fd00::1"], "is IPv6 but virtual server 10.103.97.2:6443 is IPv4"),
    (["--masters", "10.0.0.2", "--name", "../../etc/cron.d/x"],
     "--name: '../../etc/cron.d/x' is not a valid pod name"),
    (["--masters", "10.0.0.2", "--name", "a\nb"], "is not a valid pod name"),
    (["--masters", "10.0.0.2", "--name", "Upper"], "is not a valid pod name"),
    (["--masters", "10.0.0.2", "--image", "not an image"],
     "--image: 'not an image' is not an image reference"),
    (["--masters", "10.0.0.2", "--image", "Lvscare:1"], "is not an image reference"),
    (["--masters", "10.0.0.2", "--options=--health-ca=/nonexistent/ca.crt"],
     "--health-ca '/nonexistent/ca.crt': No such file or directory"),
    (["--masters", "10.0.0.2", "--options=--health-ca=ca.crt"], "must be an absolute path on the node"),
    (["--masters", "10.0.0.2", "--options", "--config", "--options", "/etc/lvscare.yaml"],
     "names a file on the node"),
    (["--set-img", "--image", "a b"], "--image: 'a b' is not an image reference"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "lvscare", "static-pod", "--path", str(tmp_path), *args],
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert len(p.stderr.splitlines()) == 1 and message in p.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("image", [
    "lvscare", "ghcr.io/lvscare/lvscare:v0.1.0", "localhost:5000/a/b_c:1.0",
    "registry.k8s.io/x@sha256:" + "a" * 64, "docker.io/labring/lvscare:v4.1.3"])
def test_image_references_that_are_valid(image: str) -> None:
    assert staticpod.check_image(image) == image


def _static_pod(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lvscare", "static-pod", *args],
                          capture_output=True, text=True, timeout=60)


def test_sealctl_command_lines_work_as_sealos_writes_them(tmp_path: Path) -> None:
    """``sealctl static-pod lvscare …``, with --options as a pflag string slice whose values
    begin with '-' (sealos's k3s clusters), and --set-img called blindly where no manifest is."""
    import yaml

    p = _static_pod("lvscare", "--path", str(tmp_path), "--vip", "10.103.97.2:6443",
                    "--masters", "10.0.0.2:6443", "--options", "--health-status", "--options", "401",
                    "--options", "--mode=link,--interval=2s", "--print")
    assert p.returncode == 0, p.stderr
    args = yaml.safe_load(p.stdout)["spec"]["containers"][0]["args"]
    assert args[-4:] == ["--health-status", "401", "--mode=link", "--interval=2s"]
    assert "&id" not in p.stdout and "*id" not in p.stdout  # no YAML anchors
    missing = _static_pod("--path", str(tmp_path), "--set-img", "--image", "lvscare:v2")
    assert missing.returncode == 0 and "nothing to update" in missing.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("options", "probe"), [
    ((), {"host": "127.0.0.1", "port": 10262, "path": "/healthz"}),
    (("--metrics-address=0.0.0.0:9100",), {"host": "127.0.0.1", "port": 9100, "path": "/healthz"}),
    (("--metrics-address=10.0.0.9:9100",), {"host": "10.0.0.9", "port": 9100, "path": "/healthz"}),
    (("--metrics-address=off",), None),
])
def test_the_liveness_probe_follows_the_metrics_address(options: tuple[str, ...],
                                                         probe: dict[str, object] | None) -> None:
    doc = staticpod.manifest(staticpod.StaticPod(masters=MASTERS, options=options))
    found = doc["spec"]["containers"][0].get("livenessProbe")
    assert (found["httpGet"] if found else None) == probe


@pytest.mark.parametrize("abbreviation", [["--v=4"], ["--int", "7"], ["--health-sch", "http"]])
def test_care_flags_are_never_abbreviated(abbreviation: list[str]) -> None:
    p = subprocess.run([sys.executable, "-m", "lvscare", "care", "--run-once", "--vs", "10.103.97.2:6443",
                        "--rs", "10.0.0.2:6443", *abbreviation], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "unrecognized arguments" in p.stderr, p.stderr


def test_the_probes_certificates_are_checked_and_mounted_read_only(tmp_path: Path) -> None:
    """A client certificate for the probes (docs/troubleshooting.md): the files are checked where
    the manifest is written and mounted from the node at the same path, in both containers."""
    from lvscare_rig.topology import make_certificate

    cert, key = make_certificate(tmp_path)
    out = tmp_path / "manifests"
    assert main(["static-pod", "--path", str(out), "--masters", "10.0.0.2",
                 "--options", f"--health-ca={cert}", "--options", f"--health-cert={cert}",
                 "--options", f"--health-key={key}"]) == 0
    spec = yaml.safe_load((out / "kube-sealos-lvscare.yaml").read_text())["spec"]
    volumes = {v["name"]: v["hostPath"] for v in spec["volumes"]}
    assert volumes["health-ca"] == {"path": str(cert), "type": "File"}
    assert volumes["health-key"] == {"path": str(key), "type": "File"}
    for c in (*spec["initContainers"], *spec["containers"]):
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        assert mounts["health-cert"] == {"name": "health-cert", "mountPath": str(cert), "readOnly": True}
        assert mounts["health-key"]["mountPath"] == str(key) and mounts["health-key"]["readOnly"]
    # A key that does not go with the certificate is refused before anything is written.
    (tmp_path / "other").mkdir()
    other_cert, _ = make_certificate(tmp_path / "other")
    bad = tmp_path / "bad"
    assert main(["static-pod", "--path", str(bad), "--masters", "10.0.0.2",
                 "--options", f"--health-cert={other_cert}", "--options", f"--health-key={key}"]) == 2
    assert not bad.exists()


def test_discover_mounts_the_kubelets_identity_read_only_and_passes_the_flags(tmp_path: Path) -> None:
    doc = staticpod.manifest(staticpod.StaticPod(masters=MASTERS, discover=True))
    kubernetes_validate.validate(doc, "1.31", strict=True)
    (daemon,), (init,) = doc["spec"]["containers"], doc["spec"]["initContainers"]
    args = daemon["args"]
    assert args[args.index("--discover-from") + 1] == "/etc/kubernetes/kubelet.conf"
    assert args[args.index("--state-dir") + 1] == "/var/lib/lvscare"
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in daemon["volumeMounts"]}
    assert mounts["/etc/kubernetes/kubelet.conf"] and mounts["/var/lib/kubelet/pki"]
    assert mounts["/var/lib/lvscare"] is False  # the state file is written
    assert not {"/etc/kubernetes/kubelet.conf", "/var/lib/lvscare"} & {
        m["mountPath"] for m in init["volumeMounts"]}  # --run-once does not discover
    types = {v["hostPath"]["path"]: v["hostPath"]["type"] for v in doc["spec"]["volumes"]}
    assert types["/var/lib/lvscare"] == "DirectoryOrCreate" and types["/var/lib/kubelet/pki"] == "Directory"
    # Off by default; asked for with a pflag boolean, as the other flags of the command.
    plain = staticpod.manifest(staticpod.StaticPod(masters=MASTERS))
    assert "--discover-from" not in plain["spec"]["containers"][0]["args"]
    assert main(["static-pod", "--masters", ",".join(MASTERS), "--discover=true",
                 "--path", str(tmp_path)]) == 0
    assert "--discover-from" in (tmp_path / "kube-sealos-lvscare.yaml").read_text()


def test_discovery_paths_through_options_are_refused_with_the_way(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["static-pod", "--masters", "10.0.0.1", "--print",
                 "--options=--discover-from=/etc/kubernetes/kubelet.conf"]) == 2
    err = capsys.readouterr().err.strip()
    assert "names a file on the node, which the pod does not mount; use --discover" in err
