"""What the daemon knows, frozen after each reconcile, for the exporters to render.

``/metrics``, ``/healthz``, ``/status`` and ``lvscare status`` read a ``Snapshot`` and nothing else:
they never see the daemon, so they cannot change it, and they render the same state whatever
moment a scrape arrives. Plain data only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from lvscare.config import Config, RealServer, VirtualServer
from lvscare.health import Health
from lvscare.plan import Dest


@dataclass(frozen=True)
class RealServerView:
    real_server: RealServer
    health: Health
    # In the kernel: the weight as last written and the connection counts as last read; None when
    # the real server is not in the kernel.
    kernel: Dest | None
    source: str = "seed"  # seed, state or discovered


@dataclass(frozen=True)
class VirtualServerView:
    virtual_server: VirtualServer
    all_down: bool  # held open by fail-open
    real_servers: tuple[RealServerView, ...]

    @property
    def serving(self) -> int:
        """Real servers that take new connections by their health."""
        return sum(1 for rs in self.real_servers if rs.health.serving)


@dataclass(frozen=True)
class Snapshot:
    config: Config
    virtual_servers: tuple[VirtualServerView, ...] = ()
    last_reconcile: float | None = None  # wall clock of the last successful reconcile
    last_error: str | None = None  # why the last reconcile failed, while it keeps failing
    repairs: int = 0  # operations that undid someone else's change, since start
    sysctls: Mapping[str, str | None] = field(default_factory=dict)
    discovery_last_success: float | None = None  # wall clock; None: never, or discovery off
