"""Fixtures the host tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from lvscare.prober import Prober


@pytest.fixture
async def prober() -> AsyncIterator[Prober]:
    p = Prober()
    await p.start()
    yield p
    await p.close()
