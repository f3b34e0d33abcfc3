"""Control-plane discovery: read the ``kubernetes`` Endpoints object every ``--discover-interval``
and keep the last good member list in ``--state-dir``.

Where the request goes: the kubeconfig's server (normally the VIP itself). When that cannot be
reached (no healthy real server behind the VIP, an external balancer that is down), each known
member is asked directly, its certificate verified against the kubeconfig's CA and server name,
so a membership change is still found when the path through the VIP is what is broken.

``poll`` never raises: an unusable answer (non-200, 401/403, not JSON, no ready address, a
timeout) keeps the current list; it is logged once per episode (a change of reason) and counted.
The decisions on an answer are ``members.py``'s; this module does the I/O: HTTP with the standard
library in a thread (one small request every 30 s), the state file written atomically.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import random
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from lvscare.config import Config, Endpoint
from lvscare.errors import UserError
from lvscare.kubeconfig import KubeConfig
from lvscare.log import get_logger
from lvscare.members import State, Unusable, decode_state, encode_state, parse_endpoints

log = get_logger("lvscare")

PATH = "/api/v1/namespaces/default/endpoints/kubernetes"
MAX_BODY = 1 << 20
TIMEOUT = 5.0
JITTER = 0.2
MAX_BACKOFF = 300.0
RBAC_HINT = ("the kubeconfig's identity may not get the kubernetes Endpoints in default: a node's "
             "kubelet identity may (Node authorizer); others need a Role with get on endpoints")

Fetch = Callable[[KubeConfig, "Endpoint | None", float], Awaitable[tuple[int, bytes]]]


class _Conn(http.client.HTTPSConnection):
    """Connects to ``address`` and verifies the certificate against ``server_name``."""

    def __init__(self, address: str, port: int, server_name: str, ctx: ssl.SSLContext,
                 timeout: float) -> None:
        super().__init__(address, port, context=ctx, timeout=timeout)
        self._server_name = server_name
        self._ctx = ctx

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self._server_name)


def _get(kc: KubeConfig, address: Endpoint | None, timeout: float) -> tuple[int, bytes]:
    ctx = kc.ssl_context()
    host, port = (kc.host, kc.port) if address is None else (str(address.ip), address.port)
    conn = _Conn(host, port, kc.server_name, ctx, timeout)
    try:
        conn.request("GET", PATH, headers={"Accept": "application/json", "User-Agent": "lvscare",
                                           "Host": f"{kc.server_name}:{kc.port}"})
        response = conn.getresponse()
        return response.status, response.read(MAX_BODY + 1)
    finally:
        conn.close()


T = TypeVar("T")


async def in_daemon_thread(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in a daemon thread of its own. Not ``asyncio.to_thread``: its executor is
    joined when the loop shuts down and again at interpreter exit, so a stopping daemon would wait
    for a server that never finishes the TLS handshake (up to the socket timeout per call). A
    cancelled caller leaves the thread to end by itself; the process does not wait for it."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result, exc = fn(*args), None
        except BaseException as e:  # handed to the caller as is
            result, exc = None, e
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, result, exc)

    threading.Thread(target=work, name="lvscare-discovery", daemon=True).start()
    return await fut


async def fetch(kc: KubeConfig, address: Endpoint | None, timeout: float) -> tuple[int, bytes]:
    """GET the Endpoints object from the kubeconfig's server, or from ``address`` with the same
    server name. Raises OSError, ssl.SSLError, http.client.HTTPException, TimeoutError,
    UserError (an unreadable certificate file)."""
    return await asyncio.wait_for(in_daemon_thread(_get, kc, address, timeout), timeout * 3)


Offload = Callable[[Callable[[State], None], State], Awaitable[None]]


@dataclass(frozen=True)
class Poll:
    members: tuple[Endpoint, ...] | None  # None: keep what there is
    via: str  # "server" or the member asked
    reason: str | None = None  # why not: a metric label
    detail: str = ""


def state_path(state_dir: str, cfg: Config) -> str:
    vs = cfg.virtual_servers[0].endpoint
    return os.path.join(state_dir, f"members-{vs.ip}-{vs.port}.json")


class Discovery:
    def __init__(self, kube: KubeConfig, cfg: Config, fetch: Fetch = fetch,
                 rng: random.Random | None = None, wall: Callable[[], float] = time.time,
                 offload: Offload = in_daemon_thread) -> None:
        self.kube = kube
        self.interval = cfg.discover_interval
        self.path = state_path(cfg.state_dir, cfg)
        self._fetch = fetch
        self._rng = rng or random.Random()
        self._wall = wall
        self._offload = offload  # where blocking file I/O runs: never the event loop
        self._episode: str | None = None  # the reason of the current run of failures
        self._failures_in_a_row = 0
        self._identity: str | None = None
        self.failures: dict[str, int] = {}
        self.last_success: float | None = None  # wall clock
        self._saved: tuple[Endpoint, ...] | None = None  # what the state file holds

    def identity(self) -> str:
        if self._identity is None:
            self._identity = self.kube.cluster_identity()
        return self._identity

    # -- the state file --------------------------------------------------------------------------

    def load_state(self) -> tuple[Endpoint, ...] | None:
        """The members of a state file of this cluster; None (with one line) otherwise."""
        try:
            with open(self.path, "rb") as fh:
                data = fh.read(MAX_BODY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("discovery state file unreadable: ignored", path=self.path,
                        error=exc.strerror or str(exc))
            return None
        try:
            state = decode_state(data)
        except Unusable as exc:
            log.warning("discovery state file unusable: ignored", path=self.path, error=str(exc))
            return None
        try:
            identity = self.identity()
        except UserError as exc:
            log.warning("discovery state file not used: cannot read the kubeconfig's CA",
                        path=self.path, error=str(exc))
            return None
        if state.cluster != identity:
            log.warning("discovery state file is of another cluster (its CA differs): ignored",
                        path=self.path, server=state.server)
            return None
        log.info("members from the discovery state file", path=self.path,
                 members=[str(m) for m in state.members], read_at=state.read_at)
        self._saved = state.members
        return state.members

    def save_state(self, members: Sequence[Endpoint]) -> None:
        """Write the state file now, in the caller's thread; a failure is counted and logged once."""
        try:
            # The CA file may be unreadable right now (being rotated): no file this round.
            self._write_state(State(self.identity(), self.kube.server, self._wall(), tuple(members)))
        except (OSError, UserError) as exc:
            self._state_failed(exc)

    async def remember(self, members: Sequence[Endpoint]) -> None:
        """The state file follows the members: written when they change, never from the event
        loop (its fsync may take as long as a slow disk wants, and every probe would wait)."""
        members = tuple(members)
        if members == self._saved:
            return
        try:
            state = State(self.identity(), self.kube.server, self._wall(), members)
            await self._offload(self._write_state, state)
        except (OSError, UserError) as exc:
            self._state_failed(exc)
            return
        self._saved = members

    def _write_state(self, state: State) -> None:
        tmp = f"{self.path}.tmp"
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(encode_state(state))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def _state_failed(self, exc: OSError | UserError) -> None:
        self._count("state")
        if self._episode != "state":
            log.warning("discovery state file not written; discovery goes on", path=self.path,
                        error=getattr(exc, "strerror", None) or str(exc))
        self._episode = "state"

    # -- polling ---------------------------------------------------------------------------------

    async def poll(self, known: Sequence[Endpoint]) -> Poll:
        """One round: the kubeconfig's server, then, if it cannot be reached, each known member."""
        result = await self._ask(None)
        if result.reason == "unreachable":
            for member in known:
                direct = await self._ask(member)
                if direct.reason != "unreachable":
                    result = direct
                    break
        self._record(result)
        return result

    async def _ask(self, address: Endpoint | None) -> Poll:
        via = "server" if address is None else str(address)
        try:
            status, body = await self._fetch(self.kube, address, TIMEOUT)
        except UserError as exc:  # a rotated certificate file missing or unusable right now
            return Poll(None, via, "kubeconfig", str(exc))
        except (OSError, TimeoutError, http.client.HTTPException, ssl.SSLError) as exc:
            if isinstance(exc, ssl.SSLCertVerificationError):
                return Poll(None, via, "tls", getattr(exc, "verify_message", None) or str(exc))
            detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            return Poll(None, via, "unreachable", detail)
        if status in (401, 403):
            return Poll(None, via, "forbidden", f"HTTP {status}")
        if status != 200:
            return Poll(None, via, "http_status", f"HTTP {status}")
        if len(body) > MAX_BODY:
            return Poll(None, via, "decode", "answer larger than 1 MiB")
        try:
            return Poll(parse_endpoints(body), via)
        except Unusable as exc:
            return Poll(None, via, exc.reason, str(exc))

    def _count(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1

    def _record(self, result: Poll) -> None:
        if result.members is not None:
            self.last_success = self._wall()
            self._failures_in_a_row = 0
            if self._episode is not None:
                log.info("discovery works again", via=result.via)
            self._episode = None
            return
        assert result.reason is not None
        self._count(result.reason)
        self._failures_in_a_row += 1
        if result.reason != self._episode:
            fields: dict[str, object] = {"reason": result.reason, "detail": result.detail,
                                         "via": result.via, "server": self.kube.server}
            if result.reason == "forbidden":
                fields["hint"] = RBAC_HINT
            log.warning("discovery failed: keeping the current real servers", **fields)
        self._episode = result.reason

    def next_wait(self) -> float:
        """The interval ±20 %; after failures, doubling up to 5 minutes."""
        base = min(self.interval * (2 ** self._failures_in_a_row), MAX_BACKOFF) \
            if self._failures_in_a_row else self.interval
        return base * self._rng.uniform(1 - JITTER, 1 + JITTER)
