"""The Helm chart, rendered and linted by Helm's own engine (helm-python-sdk embeds Helm's Go
library; no helm binary can be installed from this machine's registries), then every Kubernetes
object validated against the official schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helm_python import chart as helm
from helm_python.errors import HelmValuesError

from lvscare import staticpod
from lvscare.cli import load_config, make_parser

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "lvscare"
VALUES: dict[str, Any] = {"realServers": ["192.168.0.2:6443", "192.168.0.3:6443", "192.168.0.4:6443"]}
EVERYTHING: dict[str, Any] = {
    **VALUES, "mode": "link", "health": {"status": [401], "interval": "2s",
                                         "ca": "/etc/kubernetes/pki/ca.crt",
                                         "cert": "/etc/lvscare/probe.crt", "key": "/etc/lvscare/probe.key"},
    "metrics": {"address": "0.0.0.0:10262"}, "extraArgs": ["--all-down", "empty"],
    "serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
    "grafanaDashboard": {"enabled": True}, "discover": True,
}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    out = helm.Chart.load(CHART).render(values, name="lvscare", namespace="kube-system", is_install=True)
    return [doc for path, text in sorted(out.items()) if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def test_lint_is_clean() -> None:
    report = helm.lint(CHART, VALUES, strict=True, kube_version="v1.31.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("values", [VALUES, EVERYTHING], ids=["defaults", "everything"])
def test_rendered_objects_are_valid_kubernetes(values: dict[str, Any]) -> None:
    docs = render(values)
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # CRDs of the Prometheus operator: checked below against our own files
        kubernetes_validate.validate(doc, "1.31", strict=True)
    kinds = sorted(d["kind"] for d in docs)
    if values is EVERYTHING:
        assert kinds == ["ConfigMap", "DaemonSet", "PrometheusRule", "Service", "ServiceMonitor"]
    else:
        assert kinds == ["DaemonSet"]


def _options(values: dict[str, Any]) -> list[str]:
    """The chart's settings as the `lvscare static-pod --options` that ask for the same."""
    health = {"timeout": "800ms", "interval": "1s", "rise": 2, "fall": 2, "status": [],
              **values.get("health", {})}
    opts = ["--mode", values.get("mode", "route"), "--health-timeout", health["timeout"],
            "--interval", health["interval"], "--rise", str(health["rise"]), "--fall", str(health["fall"])]
    for code in health["status"]:
        opts += ["--health-status", str(code)]
    opts += [f"--health-{name}={health[name]}" for name in ("ca", "cert", "key") if health.get(name)]
    opts += ["--metrics-address", values.get("metrics", {}).get("address", "127.0.0.1:10262")]
    return opts + values.get("extraArgs", [])


@pytest.mark.parametrize("values", [VALUES, EVERYTHING], ids=["defaults", "everything"])
def test_daemonset_runs_what_the_static_pod_runs(values: dict[str, Any]) -> None:
    pod = by_kind(render(values), "DaemonSet")["spec"]["template"]["spec"]
    static = staticpod.manifest(staticpod.StaticPod(
        masters=tuple(values["realServers"]), options=tuple(_options(values)),
        discover=values.get("discover", False)))["spec"]
    (main,), (init,) = pod["containers"], pod["initContainers"]
    (s_main,), (s_init,) = static["containers"], static["initContainers"]
    assert main["args"] == s_main["args"] and init["args"] == s_init["args"]
    assert main["securityContext"] == s_main["securityContext"]
    assert init["securityContext"] == s_init["securityContext"]
    assert main["volumeMounts"] == s_main["volumeMounts"] and pod["volumes"] == static["volumes"]
    assert pod["hostNetwork"] and pod["priorityClassName"] == static["priorityClassName"]
    # And lvscare accepts them.
    ns = make_parser(raise_errors=True).parse_args(main["args"])
    cfg = load_config({k: v for k, v in vars(ns).items() if k != "command"}, {})
    assert [str(rs.endpoint) for rs in cfg.virtual_servers[0].real_servers] == values["realServers"]


def test_nodes_that_run_the_static_pod_are_skipped() -> None:
    """The label installer join gives the nodes it puts the static pod on keeps the DaemonSet off
    them (tests/unit/test_installer.py checks the label; the kernel tests, the lock behind it)."""
    from lvscare.config import STATIC_POD_LABEL

    pod = by_kind(render(VALUES), "DaemonSet")["spec"]["template"]["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [
        {"matchExpressions": [{"key": STATIC_POD_LABEL, "operator": "DoesNotExist"}]}]


def test_liveness_probe_follows_the_metrics_address() -> None:
    main = by_kind(render(EVERYTHING), "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    assert main["livenessProbe"]["httpGet"] == {"host": "127.0.0.1", "port": 10262, "path": "/healthz"}
    off = by_kind(render({**VALUES, "metrics": {"address": "off"}}), "DaemonSet")
    assert "livenessProbe" not in off["spec"]["template"]["spec"]["containers"][0]


def test_monitoring_objects_carry_the_repository_rules_and_dashboard() -> None:
    docs = render(EVERYTHING)
    rules = yaml.safe_load((REPO / "monitoring" / "alerts.yaml").read_text())
    assert by_kind(docs, "PrometheusRule")["spec"] == rules
    dashboard = json.loads(by_kind(docs, "ConfigMap")["data"]["lvscare.json"])
    assert dashboard == json.loads((REPO / "monitoring" / "dashboard.json").read_text())
    for name in ("alerts.yaml", "dashboard.json"):
        assert (CHART / "files" / name).read_bytes() == (REPO / "monitoring" / name).read_bytes()


@pytest.mark.parametrize(("values", "message"), [
    ({"realServers": None}, "missing property 'realServers'"),  # null removes a chart default
    ({"realServers": []}, "minItems"),
    ({"realServers": ["apiserver.local:6443"]}, "/realServers/0"),
    ({**VALUES, "mode": "ipvs"}, "/mode"),
    ({**VALUES, "health": {"status": [200]}}, "/health/status/0"),
    ({**VALUES, "virtualserver": "10.0.0.1:6443"}, "virtualserver"),
    ({**VALUES, "realServers": ["300.1.1.1:6443"]}, "/realServers/0"),
    ({**VALUES, "realServers": ["10.0.0.1:65536"]}, "/realServers/0"),
    ({**VALUES, "virtualServer": "10.103.97.256:6443"}, "/virtualServer"),
    ({**VALUES, "metrics": {"address": "127.0.0.1:99999"}}, "/metrics/address"),
    ({**VALUES, "health": {"ca": "pki/ca.crt"}}, "/health/ca"),
])
def test_bad_values_fail_at_install_with_the_key_named(values: dict[str, Any], message: str) -> None:
    with pytest.raises(HelmValuesError, match=message):
        helm.Chart.load(CHART).render(values, name="lvscare", namespace="kube-system")
