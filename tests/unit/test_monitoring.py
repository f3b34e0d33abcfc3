"""The alert rules and the dashboard shipped in monitoring/ are valid and use real metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lvscare.metrics import _GAUGES

ROOT = Path(__file__).resolve().parents[2] / "monitoring"
EXPORTED = set(_GAUGES) | {
    "lvscare_probes_total", "lvscare_real_server_transitions_total",
    "lvscare_rules_repaired_total", "lvscare_reconcile_errors_total",
    "lvscare_probe_duration_seconds_bucket", "lvscare_reconcile_duration_seconds_bucket"}


def test_alert_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: scripts/setup installs it (Debian package prometheus)")
    proc = subprocess.run([promtool, "check", "rules", str(ROOT / "alerts.yaml")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rules_and_dashboard_only_use_exported_metrics() -> None:
    text = (ROOT / "alerts.yaml").read_text()
    dashboard = json.loads((ROOT / "dashboard.json").read_text())
    text += " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    used = set(re.findall(r"\blvscare_[a-z_]+", text))
    assert used and used <= EXPORTED, used - EXPORTED


def test_the_panels_the_docs_name_exist() -> None:
    """docs/coexistence.md sends operators to a sysctl panel: it exists and reads lvscare_sysctl."""
    dashboard = json.loads((ROOT / "dashboard.json").read_text())
    panels = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in dashboard["panels"]}
    docs = re.sub(r"\s+", " ", " ".join(p.read_text() for p in (ROOT.parent / "docs").glob("*.md")))
    named = re.findall(r'panel "([^"]+)"', docs)
    assert named and set(named) <= set(panels), set(named) - set(panels)
    assert any("lvscare_sysctl" in expr for expr in panels.values())
