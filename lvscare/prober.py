"""Health probes of real servers: HTTP/2 PING and readiness, HTTP/1.1 with aiohttp, or a TCP connect.

HTTP/2, the default when the server negotiates it (kube-apiserver does): one standing TLS
connection per real server (``h2conn``). Every interval a PING, which the server's connection loop
answers before any handler: liveness at no cost to the apiserver's handler chain. Every
``readiness_interval`` a request of the readiness path (``/readyz``) on the same connection. The
verdicts, in order: the connection or the PING fails -> that failure (refused, reset, timeout);
readiness answered with a bad status -> http_status (then readiness is asked every interval until
it passes ``rise`` times); readiness not answered within the timeout while PINGs are -> slow (see
``health``); else ok. A server that does not choose ``h2`` by ALPN is probed with HTTP/1.1 as
before, logged once, and asked again after its next failure (an upgraded apiserver).

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
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lvscare.config import Endpoint, HealthCheck
from lvscare.health import Outcome, ProbeResult
from lvscare.log import get_logger
from lvscare.tls import build_ssl_context

if TYPE_CHECKING:
    import aiohttp

    from lvscare.h2conn import Answer, H2Connection

log = get_logger("lvscare")


def _consume(fut: asyncio.Future[None]) -> None:
    # A connection lost with an error sets an exception nobody else reads.
    if not fut.cancelled():
        fut.exception()


# kube-apiserver's /readyz names its failing checks; this one is its graceful shutdown (from
# SIGTERM on, while it still serves through --shutdown-delay-duration and its in-flight requests).
SHUTDOWN_CHECK = b"[-]shutdown failed"


def _bad_status(status: int, body: bytes) -> ProbeResult:
    """A failing readiness answer: shutting down, or sick (lost etcd, a failing informer...)."""
    if SHUTDOWN_CHECK in body:
        return ProbeResult(Outcome.SHUTDOWN, status=status, detail=f"HTTP {status}: shutting down")
    failing = [line[3:].split(b" ")[0].decode(errors="replace")
               for line in body.splitlines() if line.startswith(b"[-]")]
    detail = f"HTTP {status}" + (f": {', '.join(failing[:3])} failed" if failing else "")
    return ProbeResult(Outcome.HTTP_STATUS, status=status, detail=detail)


class NotH2(Exception):
    """The server did not choose ``h2`` by ALPN (an HTTP/1.1-only server or proxy)."""


async def _open_h2(host: str, port: int, ctx: ssl.SSLContext, authority: str) -> H2Connection:
    """Connect and check ALPN; the caller bounds the time. Raises OSError, ssl.SSLError or
    NotH2. ``h2`` is imported only once a server has chosen it: against HTTP/1.1-only servers
    the daemon never loads it."""
    # Python sends no SNI for an address; the certificate is checked against it when the
    # context checks host names.
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host)
    tls = writer.get_extra_info("ssl_object")
    chosen = tls.selected_alpn_protocol() if tls is not None else None
    if chosen != "h2":
        writer.close()
        raise NotH2(chosen or "no ALPN")
    from lvscare.h2conn import H2Connection

    return H2Connection(reader, writer, authority)


@dataclass(frozen=True)
class _Tls:
    ca: str | None
    cert: str | None
    key: str | None
    insecure: bool


@dataclass
class _H2:
    """What the HTTP/2 probe of one real server carries from one probe to the next."""

    conn: H2Connection | None = None
    http1: bool = False  # the server did not choose h2: probe it with HTTP/1.1
    told_http1: bool = False  # said so in the log (once per server)
    # Two virtual servers sharing a real server and its health check share its probe state;
    # their probes take turns, or both would open a connection and one would leak.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    readiness: asyncio.Future[Answer] | None = None  # a readiness request still unanswered
    readiness_sid: int = 0
    readiness_conn: H2Connection | None = None  # where it was sent (a retired one, after a GOAWAY)
    readiness_sent: float = 0.0
    readiness_next: float = 0.0
    ready_streak: int = 0  # readiness answers in time, in a row, on this connection
    verdict: ProbeResult = field(default_factory=lambda: ProbeResult(Outcome.OK))
    # Connections that said goodbye (GOAWAY NO_ERROR) and still owe an answer: kept until they
    # end by themselves.
    retired: list[H2Connection] = field(default_factory=list)
    goodbye: bool = False  # the last connection ended with GOAWAY(NO_ERROR); none opened since

    def drop(self) -> None:
        """Forget the connection and what it proved: after a failure."""
        for conn in (self.conn, *self.retired):
            if conn is not None:
                conn.close()
        self.conn, self.readiness, self.ready_streak, self.retired = None, None, 0, []
        self.verdict = ProbeResult(Outcome.OK)
        self.goodbye = False

    def retire(self) -> None:
        """The connection ended without a failure (GOAWAY NO_ERROR, an idle close): keep what
        readiness proved and the answer it still owes; the next probe opens a new one."""
        conn, self.conn = self.conn, None
        self.retired = [c for c in self.retired if not c.is_closed or c.busy]
        if conn is not None:
            self.goodbye = conn.goaway
            if conn.busy:
                self.retired.append(conn)
            else:
                conn.close()


# What a probe's state belongs to: the real server and the health check it is probed with. Two
# aiohttp's clean-up of closed TLS connections aborts each one's transport again later. Python
# 3.11.0-3.11.2 (Debian 12's, the image's) fails that second abort with an AttributeError inside
# asyncio (fixed in 3.11.3: the transport's protocol is already gone), which breaks the session's
# close at shutdown, reload and in the periodic clean-up. There the clean-up stays off: asyncio's
# own TLS shutdown timeout still ends such a connection.
_SSL_ABORT_IS_SAFE = sys.version_info >= (3, 11, 3)

# virtual servers with different checks of one apiserver (path, CA) never mix their settings.
Target = tuple[Endpoint, HealthCheck]


class Prober:
    """One aiohttp session for every HTTP/1.1 probe of the process, and one HTTP/2 connection
    per real server and health check."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._contexts: dict[_Tls, ssl.SSLContext] = {}
        self._h2_contexts: dict[_Tls, ssl.SSLContext] = {}
        self._closed: dict[Target, asyncio.Future[None]] = {}
        self._h2: dict[Target, _H2] = {}

    def closed(self, rs: Endpoint, hc: HealthCheck) -> asyncio.Future[None] | None:
        """Completes when the server closes the connection the last probe of ``rs`` used.

        A killed apiserver's kernel closes that idle connection at once, so the daemon can probe
        right then instead of at the next interval.
        """
        fut = self._closed.get((rs, hc))
        return fut if fut is not None and not fut.done() else None

    def retain(self, targets: Iterable[Target]) -> None:
        """Forget every real server not in ``targets`` (gone by a reload or from the control
        plane's members): its connection closes now, not when the server idles it out."""
        keep = set(targets)
        for target in [t for t in self._h2 if t not in keep]:
            self._h2.pop(target).drop()
        for target in [t for t in self._closed if t not in keep]:
            del self._closed[target]

    def prepare(self, hc: HealthCheck) -> None:
        """Build the TLS context for ``hc`` now (at start, and again at a reload: the files may
        have been renewed), so that bad certificates fail before anything uses them."""
        if hc.type == "http" and hc.scheme == "https":
            tls = _Tls(hc.ca, hc.cert, hc.key, hc.insecure_skip_verify)
            self._contexts[tls] = build_ssl_context(hc)
            # Its own context: ALPN on aiohttp's would let a server choose h2 that aiohttp
            # cannot speak.
            h2ctx = self._h2_contexts[tls] = build_ssl_context(hc)
            h2ctx.set_alpn_protocols(["h2", "http/1.1"])

    async def start(self) -> None:
        """Nothing to open: connections are made by the first probe of each kind."""

    def _http_session(self) -> aiohttp.ClientSession:
        # aiohttp is imported at the first HTTP/1.1 probe: against apiservers, which all speak
        # HTTP/2, the daemon never pays its ~11 MB of memory (docs/benchmarks.md, footprint).
        import aiohttp

        if self._session is not None:
            return self._session
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=1, keepalive_timeout=30,
                                         enable_cleanup_closed=_SSL_ABORT_IS_SAFE,
                                         use_dns_cache=False)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=30),
            auto_decompress=False, skip_auto_headers=("User-Agent",),
            headers={"User-Agent": "lvscare"})
        return self._session

    async def close(self) -> None:
        for state in self._h2.values():
            state.drop()
        self._h2.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def probe(self, rs: Endpoint, hc: HealthCheck) -> ProbeResult:
        start = time.monotonic()
        try:
            if hc.type == "tcp":
                result = await self._probe_tcp(rs, hc)
            elif hc.protocol == "auto" and hc.scheme == "https":
                result = await self._probe_h2(rs, hc)
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
        import aiohttp

        session = self._http_session()
        host = f"[{rs.ip}]" if rs.ip.version == 6 else str(rs.ip)
        url = f"{hc.scheme}://{host}:{rs.port}{hc.path_for(h2=False)}"
        ssl_arg: ssl.SSLContext | bool = False
        if hc.scheme == "https":
            ssl_arg = self._context(hc, self._contexts)
        headers = dict(hc.headers)
        try:
            async with asyncio.timeout(hc.timeout):
                async with session.request(
                    hc.method, url, data=hc.body or None, headers=headers, ssl=ssl_arg,
                    allow_redirects=False,
                ) as response:
                    # aiohttp has already handed a small response's connection back to its
                    # pool; the protocol object is only on a private attribute. Without it we
                    # fall back to probing every interval (test_prober checks it is there).
                    protocol = getattr(response, "_protocol", None)
                    closed = getattr(protocol, "closed", None)
                    if isinstance(closed, asyncio.Future) and closed is not self._closed.get((rs, hc)):
                        closed.add_done_callback(_consume)
                        self._closed[(rs, hc)] = closed
                    body = (await response.content.read(4096))
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
        return _bad_status(status, body)

    def _context(self, hc: HealthCheck, contexts: dict[_Tls, ssl.SSLContext]) -> ssl.SSLContext:
        tls = _Tls(hc.ca, hc.cert, hc.key, hc.insecure_skip_verify)
        if tls not in contexts:
            self.prepare(hc)
        return contexts[tls]

    async def _probe_h2(self, rs: Endpoint, hc: HealthCheck) -> ProbeResult:
        st = self._h2.setdefault((rs, hc), _H2())
        async with st.lock:
            return await self._probe_h2_locked(rs, hc, st)

    async def _probe_h2_locked(self, rs: Endpoint, hc: HealthCheck, st: _H2) -> ProbeResult:
        if st.http1:
            result = await self._probe_http(rs, hc)
            if result.outcome.dead:
                # It may come back upgraded: ask for h2 again on the next connection. A bad
                # status is an HTTP/1.1 server answering: nothing to ask again.
                st.http1 = False
            return result
        start = time.monotonic()
        for reused in (True, False):
            if st.conn is None or st.conn.is_closed:
                reused = False
                if st.conn is not None:
                    if st.conn.graceful:
                        st.retire()
                    else:
                        st.drop()
                failed = await self._connect_h2(rs, hc, st)
                if failed is not None:
                    if failed.outcome is Outcome.REFUSED and (
                            st.goodbye or st.verdict.outcome is Outcome.SHUTDOWN):
                        # It said goodbye (or that it is shutting down) and then stopped
                        # listening: a graceful shutdown serving its last requests, not a death.
                        return ProbeResult(Outcome.SHUTDOWN, detail="stopped listening after "
                                           + ("GOAWAY" if st.goodbye else "/readyz said shutdown"))
                    st.drop()
                    return failed
                st.goodbye = False
                if st.http1:
                    return await self._probe_http(rs, hc)
            assert st.conn is not None
            self._ask_readiness(st, hc, st.conn)
            try:
                async with asyncio.timeout(hc.timeout):
                    await st.conn.ping()
                break
            except TimeoutError:
                st.drop()
                return ProbeResult(Outcome.TIMEOUT, detail=f"PING unanswered in {hc.timeout:g}s")
            except ConnectionError as exc:
                if getattr(exc, "graceful", False):
                    # GOAWAY(NO_ERROR) instead of the PING's answer: a live server saying goodbye
                    # (--goaway-chance, an idle timeout, a shutdown). Alive; the next probe
                    # opens a new connection and finds out whether it still listens.
                    st.retire()
                    break
                st.drop()
                # A standing connection may end between probes for good reasons (an idle
                # timeout, GOAWAY after a request limit): ask again once on a new one, as HTTP/1.1
                # clients retry an idempotent request. A new connection that fails is an answer.
                if not reused:
                    # A server that breaks the protocol is broken, not dead: it takes ``fall``
                    # failures, as any error, where a reset is conclusive.
                    broken = getattr(exc, "protocol_error", False)
                    return ProbeResult(Outcome.ERROR if broken else Outcome.RESET,
                                       detail=str(exc)[:200])
        rtt = time.monotonic() - start
        if st.readiness is not None and not st.readiness.done():
            # What is left of the timeout since the request was sent; nothing if an earlier
            # probe sent it.
            left = st.readiness_sent + hc.timeout - time.monotonic()
            if left > 0:
                await asyncio.wait([st.readiness], timeout=left)
        self._readiness_verdict(st, hc)
        if st.verdict.ok:
            return ProbeResult(Outcome.OK, status=st.verdict.status, detail="")
        return ProbeResult(st.verdict.outcome, rtt, st.verdict.status, st.verdict.detail)

    @staticmethod
    def _ask_readiness(st: _H2, hc: HealthCheck, conn: H2Connection) -> None:
        """Send the readiness request if it is due. It is asked every interval while it has to
        prove itself: on a new connection until it answers in time ``rise`` times, and after a
        bad answer. Not while it is slow: more requests would only add to an overloaded
        server's work."""
        now = time.monotonic()
        eager = st.verdict.outcome is not Outcome.SLOW and st.ready_streak < hc.rise
        if st.readiness is None and (eager or now >= st.readiness_next):
            st.readiness_sid, st.readiness = conn.request(
                hc.method, hc.path_for(h2=True), hc.headers, hc.body.encode())
            st.readiness_conn = conn
            st.readiness_sent, st.readiness_next = now, now + hc.readiness_interval

    def _readiness_verdict(self, st: _H2, hc: HealthCheck) -> None:
        """Update ``st.verdict`` from the readiness request, answered or not."""
        fut = st.readiness
        if fut is None:
            return
        path = hc.path_for(h2=True)
        if not fut.done():
            waited = time.monotonic() - st.readiness_sent
            if waited >= hc.readiness_interval:
                if st.readiness_conn is not None:
                    st.readiness_conn.cancel(st.readiness_sid)  # the next one is due; one at a time
                st.readiness = None
            st.ready_streak = 0
            st.verdict = ProbeResult(Outcome.SLOW, detail=f"{path} unanswered after {waited:.2f}s; "
                                     "PINGs answered")
            return
        st.readiness = None
        exc = fut.exception() if not fut.cancelled() else None
        if getattr(exc, "graceful", False):
            return  # a GOAWAY left it unprocessed: asked again on the new connection, no verdict
        if exc is not None or fut.cancelled():
            st.ready_streak = 0
            st.verdict = ProbeResult(Outcome.ERROR, detail=f"{path}: {exc or 'cancelled'}"[:200])
            return
        answer = fut.result()
        status, waited = answer.status, answer.at - st.readiness_sent
        if not (status < 400 or status in hc.status):
            st.ready_streak = 0
            st.verdict = _bad_status(status, answer.body)
        elif waited > hc.timeout:
            st.ready_streak = 0
            st.verdict = ProbeResult(Outcome.SLOW, status=status,
                                     detail=f"{path} answered {status} in {waited:.2f}s; PINGs answered")
        else:
            st.ready_streak += 1
            st.verdict = ProbeResult(Outcome.OK, status=status)

    async def _connect_h2(self, rs: Endpoint, hc: HealthCheck, st: _H2) -> ProbeResult | None:
        """Open the connection into ``st``; a ProbeResult when that failed."""
        ctx = self._context(hc, self._h2_contexts)
        host = str(rs.ip)
        authority = f"[{host}]:{rs.port}" if rs.ip.version == 6 else f"{host}:{rs.port}"
        try:
            async with asyncio.timeout(hc.timeout):
                st.conn = await _open_h2(host, rs.port, ctx, authority)
        except TimeoutError:
            return ProbeResult(Outcome.TIMEOUT, detail=f"no connection in {hc.timeout:g}s")
        except NotH2 as exc:
            st.http1 = True
            if not st.told_http1:
                st.told_http1 = True
                log.info("real server does not speak HTTP/2: probing it with HTTP/1.1 requests",
                         rs=str(rs), alpn=str(exc))
            return None
        except ssl.SSLError as exc:
            return ProbeResult(Outcome.TLS, detail=str(exc)[:200])
        except ConnectionRefusedError:
            return ProbeResult(Outcome.REFUSED, detail="connection refused")
        except ConnectionResetError:
            return ProbeResult(Outcome.RESET, detail="connection reset")
        except OSError as exc:
            return ProbeResult(Outcome.ERROR, detail=(exc.strerror or str(exc))[:200])
        self._closed[(rs, hc)] = st.conn.closed
        return None
