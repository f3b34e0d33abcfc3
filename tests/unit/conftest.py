"""Fixtures the host tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from lvscare_rig import tools

from lvscare.prober import Prober


@pytest.fixture(autouse=True, scope="session")
def _listed_tools_only() -> Iterator[None]:
    """A program the tests run must be listed, with its package (lvscare_rig.tools)."""
    with tools.guard():
        yield


@pytest.fixture
async def prober() -> AsyncIterator[Prober]:
    p = Prober()
    await p.start()
    yield p
    await p.close()
