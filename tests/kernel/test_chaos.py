"""A minute of the chaos campaign (bench/chaos.py) with a fixed seed: overlapping faults of the
backends, the kernel's table, the VIP's objects, the firewall, the configuration and the control
plane's members, with every invariant checked all along."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

CHAOS = Path(__file__).resolve().parents[2] / "bench" / "chaos.py"
SEED = 20261204


@pytest.mark.smoke(quick=False)
def test_a_minute_of_chaos_breaks_no_invariant() -> None:
    spec = importlib.util.spec_from_file_location("chaos", CHAOS)
    assert spec is not None and spec.loader is not None
    chaos = importlib.util.module_from_spec(spec)
    sys.modules["chaos"] = chaos  # its dataclasses look their module up
    spec.loader.exec_module(chaos)
    report = chaos.campaign(60, SEED)
    print("\n" + "\n".join([*report.timeline, *report.lines()]))
    assert len(report.timeline) >= 10, "the campaign must have done something"
    assert report.violations == []
