"""Health probes of real servers: HTTP(S) with aiohttp, or a plain TCP connect.

Connection reuse, decided: probes keep one HTTP/1.1 connection per real server alive and send
each probe on it. A fleet of 5,000 nodes probing 3 apiservers every second then costs each
apiserver 5,000 small requests a second on standing connections instead of 5,000 TLS handshakes
a second. Reuse does not hide a dead server: a killed apiserver closes the connection (aiohttp
drops it, or retries the idempotent request once on a fresh connection, which is refused), a
blackholed one times out, and after any failure the next probe opens a new connection.

``probe()`` never raises: every failure becomes a ``ProbeResult`` with a kind.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass

import aiohttp

from lvscare.config import Endpoint, HealthCheck
from lvscare.health import Outcome, ProbeResult
from lvscare.tls import build_ssl_context


def _consume(fut: asyncio.Future[None]) -> None:
    # A connection lost with an error sets an exception nobody else reads.
    if not fut.cancelled():
        fut.exception()


@dataclass(frozen=True)
class _Tls:
    ca: str | None
    cert: str | None
    key: str | None
    insecure: bool


class Prober:
    """One aiohttp session for every probe of the process."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._contexts: dict[_Tls, ssl.SSLContext] = {}
        self._closed: dict[Endpoint, asyncio.Future[None]] = {}

    def closed(self, rs: Endpoint) -> asyncio.Future[None] | None:
        """Completes when the server closes the connection the last probe of ``rs`` used.

        A killed apiserver's kernel closes that idle connection at once, so the daemon can probe
        right then instead of at the next interval.
        """
        fut = self._closed.get(rs)
        return fut if fut is not None and not fut.done() else None

    def prepare(self, hc: HealthCheck) -> None:
        """Build the TLS context for ``hc`` now (at start, and again at a reload: the files may
        have been renewed), so that bad certificates fail before anything uses them."""
        if hc.type == "http" and hc.scheme == "https":
            self._contexts[_Tls(hc.ca, hc.cert, hc.key, hc.insecure_skip_verify)] = build_ssl_context(hc)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=1, keepalive_timeout=30,
                                         enable_cleanup_closed=True, use_dns_cache=False)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=30),
            auto_decompress=False, skip_auto_headers=("User-Agent",),
            headers={"User-Agent": "lvscare"})

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def probe(self, rs: Endpoint, hc: HealthCheck) -> ProbeResult:
        start = time.monotonic()
        try:
            if hc.type == "tcp":
                result = await self._probe_tcp(rs, hc)
            else:
                result = await self._probe_http(rs, hc)
        except Exception as exc:
            result = ProbeResult(Outcome.ERROR, detail=f"{type(exc).__name__}: {exc}")
        return ProbeResult(result.outcome, time.monotonic() - start, result.status, result.detail)

    async def _probe_tcp(self, rs: Endpoint, hc: HealthCheck) -> ProbeResult:
        try:
            async with asyncio.timeout(hc.timeout):
                _, writer = await asyncio.open_connection(str(rs.ip), rs.port)
        except TimeoutError:
            return ProbeResult(Outcome.TIMEOUT, detail=f"no connection in {hc.timeout:g}s")
        except ConnectionRefusedError:
            return ProbeResult(Outcome.REFUSED, detail="connection refused")
        except OSError as exc:
            return ProbeResult(Outcome.ERROR, detail=exc.strerror or str(exc))
        writer.close()
        return ProbeResult(Outcome.OK)

    async def _probe_http(self, rs: Endpoint, hc: HealthCheck) -> ProbeResult:
        assert self._session is not None, "Prober.start() first"
        host = f"[{rs.ip}]" if rs.ip.version == 6 else str(rs.ip)
        url = f"{hc.scheme}://{host}:{rs.port}{hc.path}"
        ssl_arg: ssl.SSLContext | bool = False
        if hc.scheme == "https":
            tls = _Tls(hc.ca, hc.cert, hc.key, hc.insecure_skip_verify)
            if tls not in self._contexts:
                self.prepare(hc)
            ssl_arg = self._contexts[tls]
        headers = dict(hc.headers)
        try:
            async with asyncio.timeout(hc.timeout):
                async with self._session.request(
                    hc.method, url, data=hc.body or None, headers=headers, ssl=ssl_arg,
                    allow_redirects=False,
                ) as response:
                    # aiohttp has already handed a small response's connection back to its
                    # pool; the protocol object is only on a private attribute. Without it we
                    # fall back to probing every interval (test_prober checks it is there).
                    protocol = getattr(response, "_protocol", None)
                    closed = getattr(protocol, "closed", None)
                    if isinstance(closed, asyncio.Future) and closed is not self._closed.get(rs):
                        closed.add_done_callback(_consume)
                        self._closed[rs] = closed
                    await response.read()
                    status = response.status
        except TimeoutError:
            return ProbeResult(Outcome.TIMEOUT, detail=f"no answer in {hc.timeout:g}s")
        except aiohttp.ClientSSLError as exc:
            return ProbeResult(Outcome.TLS, detail=str(exc.__cause__ or exc)[:200])
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, ConnectionRefusedError):
                return ProbeResult(Outcome.REFUSED, detail="connection refused")
            if isinstance(exc.os_error, ConnectionResetError):
                return ProbeResult(Outcome.RESET, detail="connection reset")
            return ProbeResult(Outcome.ERROR, detail=str(exc.os_error)[:200])
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            if isinstance(exc, aiohttp.ClientOSError) and isinstance(
                    exc.__cause__ or exc, ConnectionRefusedError):
                return ProbeResult(Outcome.REFUSED, detail="connection refused")
            return ProbeResult(Outcome.RESET, detail=str(exc)[:200] or type(exc).__name__)
        except aiohttp.ClientError as exc:
            return ProbeResult(Outcome.ERROR, detail=str(exc)[:200] or type(exc).__name__)
        if status < 400 or status in hc.status:
            return ProbeResult(Outcome.OK, status=status)
        return ProbeResult(Outcome.HTTP_STATUS, status=status, detail=f"HTTP {status}")
