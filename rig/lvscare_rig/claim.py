"""pytest plugin for one of several test kernels that share one kernel suite.

Every kernel collects the same tests, orders them longest first (by the durations of an earlier
run) and runs a test only after claiming it in a directory on the host that all kernels mount
(``LVSCARE_SUITE_DIR``): a test runs once, and a kernel that finishes early takes the next one,
so the kernels end within about one short test of each other. ``mkdir`` is the claim because the
host does it atomically for every kernel (hostfs passes it through; its ``open`` does not pass
``O_EXCL``). Each result is appended to ``results-<worker>.jsonl`` as it ends, for
``lvscare_rig.kernelsuite``'s progress lines and combined report.

A module that sets ``CLAIM_WHOLE_MODULE = True`` is claimed as one unit and its tests run in
order in one kernel, so that a costly module-scoped fixture (a real control plane) is set up once.

Loaded with ``-p lvscare_rig.claim``; without ``LVSCARE_SUITE_DIR`` it does nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
from pathlib import Path
from typing import Any

import pytest

_DIR = os.environ.get("LVSCARE_SUITE_DIR")
_WORKER = os.environ.get("LVSCARE_SUITE_WORKER", "k1")
_results: dict[str, dict[str, Any]] = {}


def expected_durations() -> dict[str, float]:
    path = os.environ.get("LVSCARE_SUITE_HINTS")
    if not path:
        return {}
    try:
        hints = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return {k: float(v) for k, v in hints.items()} if isinstance(hints, dict) else {}


def longest_first(nodeids: list[str], hints: dict[str, float]) -> list[str]:
    # A test nobody has timed yet counts as a typical one: it neither jumps the queue nor waits.
    typical = statistics.median(hints.values()) if hints else 0.0
    return sorted(nodeids, key=lambda n: -hints.get(n, typical))


def units(items: list[pytest.Item], hints: dict[str, float]) -> list[tuple[str, list[pytest.Item]]]:
    """What is claimed: a test, or a whole module that asks for it; longest first."""
    out: list[tuple[str, list[pytest.Item]]] = []
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and getattr(module, "CLAIM_WHOLE_MODULE", False):
            key = item.nodeid.split("::")[0]
            if key not in modules:
                modules[key] = []
                out.append((key, modules[key]))
            modules[key].append(item)
        else:
            out.append((item.nodeid, [item]))
    for _, group in out:  # a claimed module runs in its file's order, whatever the durations
        group.sort(key=lambda i: i.reportinfo()[1] or 0)
    typical = statistics.median(hints.values()) if hints else 0.0
    return sorted(out, key=lambda u: -sum(hints.get(i.nodeid, typical) for i in u[1]))


def _claim(suite: Path, nodeid: str) -> bool:
    try:
        (suite / "claims" / hashlib.sha256(nodeid.encode()).hexdigest()).mkdir()
    except FileExistsError:
        return False
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _DIR:
        return
    order = {n: i for i, n in enumerate(longest_first([i.nodeid for i in items],
                                                      expected_durations()))}
    items.sort(key=lambda item: order[item.nodeid])


def pytest_collection_finish(session: pytest.Session) -> None:
    if not _DIR:
        return
    suite = Path(_DIR)
    (suite / "claims").mkdir(exist_ok=True)
    (suite / f"collected-{_WORKER}.json").write_text(
        json.dumps([item.nodeid for item in session.items]))


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> bool | None:
    if not _DIR or session.config.option.collectonly:
        return None
    if session.testsfailed and not session.config.option.continue_on_collection_errors:
        raise session.Interrupted(f"{session.testsfailed} errors during collection")
    suite = Path(_DIR)
    stop = suite / "stop"
    for key, group in units(session.items, expected_durations()):
        if stop.exists():
            break
        if not _claim(suite, key):
            continue
        for i, item in enumerate(group):
            # nextitem=None after a unit: which test this kernel runs next is not known until it
            # claims one, so its fixtures are torn down; within a claimed module they are kept.
            nextitem = group[i + 1] if i + 1 < len(group) else None
            item.config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
            if session.shouldfail:
                stop.mkdir(exist_ok=True)  # -x: the other kernels stop too
                raise session.Failed(session.shouldfail)
            if session.shouldstop:
                raise session.Interrupted(session.shouldstop)
    return True


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not _DIR:
        return
    entry = _results.setdefault(report.nodeid, {
        "nodeid": report.nodeid, "worker": _WORKER, "outcome": "passed", "duration": 0.0,
        "longrepr": "", "sections": []})
    entry["duration"] += report.duration
    if report.failed:
        entry["outcome"] = "failed" if report.when == "call" else "error"
        entry["longrepr"] += f"[{report.when}]\n{report.longreprtext}\n"
        entry["sections"] = [list(s) for s in report.sections]
    elif report.skipped and entry["outcome"] == "passed":
        entry["outcome"] = "skipped"
        entry["longrepr"] = report.longreprtext
    if report.when == "teardown":
        with (Path(_DIR) / f"results-{_WORKER}.jsonl").open("a") as f:
            f.write(json.dumps(_results.pop(report.nodeid)) + "\n")
