"""pytest plugin for the kernel suite's tiers: what a selection of tests needs built, and the smoke.

Markers (a module sets them with ``pytestmark``, a test with a decorator):

- ``needs("image" | "control-plane" | "node-roots", …)``: what must be built on the host before
  the test kernels boot (``ARTEFACTS``). ``lvscare_rig.kernelsuite`` collects the selection on the
  host first and builds only what it needs, so one module runs without building the others'.
- ``smoke``: the one test of a module that shows its subject works at all; ``-m smoke`` runs one
  per module (``scripts/fresh-check``). ``--quick`` keeps the smoke tests that need nothing built
  and are not ``smoke(quick=False)`` (a minute or more), for the edit-and-test loop
  (``scripts/test --quick``).

Loaded with ``-p lvscare_rig.tiers``; ``--lvscare-needs=FILE`` writes the selection's test ids and
needs as JSON at the end of collection.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ARTEFACTS = ("node-roots", "control-plane", "image")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lvscare")
    group.addoption("--quick", action="store_true",
                    help="only the smoke tests that need nothing built on the host")
    group.addoption("--lvscare-needs", metavar="FILE",
                    help="write the selected tests and what they need built, as JSON")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "smoke: the one test of its module that the smoke tiers run")
    config.addinivalue_line("markers", "needs(*artefacts): what the host builds before the kernels "
                            f"boot, of {', '.join(ARTEFACTS)}")


def needs_of(item: pytest.Item) -> set[str]:
    found: set[str] = set()
    for mark in item.iter_markers("needs"):
        for name in mark.args:
            if name not in ARTEFACTS:
                raise pytest.UsageError(f"{item.nodeid}: needs({name!r}): not one of {ARTEFACTS}")
            found.add(name)
    return found


def quick(item: pytest.Item) -> bool:
    """A smoke test short enough for the edit-and-test loop (``smoke(quick=False)`` is not)."""
    mark = item.get_closest_marker("smoke")
    return mark is not None and bool(mark.kwargs.get("quick", True))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("quick"):
        return
    keep = [i for i in items if quick(i) and not needs_of(i)]
    dropped = [i for i in items if i not in keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = keep


def pytest_collection_finish(session: pytest.Session) -> None:
    out = session.config.getoption("lvscare_needs")
    if not out:
        return
    needs: set[str] = set()
    for item in session.items:
        needs |= needs_of(item)
    # What lvscare_rig.claim hands out: a test, or a whole module that asks to be one unit. More
    # kernels than units would boot only to find nothing to claim.
    units = {i.nodeid.split("::")[0] if getattr(getattr(i, "module", None), "CLAIM_WHOLE_MODULE", False)
             else i.nodeid for i in session.items}
    Path(out).write_text(json.dumps({"tests": [i.nodeid for i in session.items],
                                     "needs": sorted(needs, key=ARTEFACTS.index),
                                     "units": len(units)}))
