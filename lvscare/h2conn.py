"""One HTTP/2 client connection over asyncio, for probes: PING and small requests, nothing else.

python-hyper's ``h2`` keeps the protocol's state (frames, HPACK, flow control, stream ids); this
module only moves its bytes and turns its events into futures. A probe needs two things of it:

* ``ping()``: answered by the server's connection loop before any handler (Go's HTTP/2 server,
  hypercorn, nginx), so an answer proves the process and the path are alive and costs the server
  no authentication, no Priority and Fairness, no audit.
* ``request()``: one request on a new stream of the same connection, for readiness.

``closed`` completes when the connection takes no new stream (EOF, reset, GOAWAY): the daemon then
probes at once instead of at the next interval, as with HTTP/1.1. A GOAWAY is not a failure: the
streams at or below its last-stream-id are still answered on this connection (kube-apiserver's
``--goaway-chance`` sends one with ordinary answers; its shutdown sends one to every connection),
and ``graceful`` tells the prober that the server said goodbye rather than died.

The caller opens the TLS connection and checks that ALPN chose ``h2`` (``prober``): this module,
and ``h2`` with it, is imported only for a server that speaks HTTP/2.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

READ_SIZE = 65536


class ConnectionGone(ConnectionError):
    """The connection ended before the answer: EOF, a reset, GOAWAY or a protocol error.
    ``graceful``: the server said goodbye (GOAWAY NO_ERROR, a clean close), it did not fail."""

    protocol_error = False

    def __init__(self, message: str, graceful: bool = False) -> None:
        super().__init__(message)
        self.graceful = graceful


class BadAnswer(ConnectionGone):
    """The server sent what HTTP/2 or HTTP does not allow: a broken server, not a dead one."""

    protocol_error = True


@dataclass(frozen=True)
class Answer:
    status: int
    at: float  # monotonic time the response ended
    body: bytes = b""  # its first BODY_LIMIT bytes: /readyz names its failing checks


BODY_LIMIT = 4096


class _Client(h2.connection.H2Connection):
    """h2's client connection, except that a graceful GOAWAY leaves it open for what was promised.

    h2 closes its connection state machine on any GOAWAY, and then refuses every later frame. Go
    (kube-apiserver with --goaway-chance, and at shutdown) sends GOAWAY(NO_ERROR) *before* the
    HEADERS of the stream it is answering, which the GOAWAY's last-stream-id promises (RFC 9113
    6.8): with h2's rule that answer was a protocol error, and the probe an error."""

    def _receive_goaway_frame(self, frame: Any) -> tuple[list[Any], list[h2.events.Event]]:
        before = self.state_machine.state
        frames, events = super()._receive_goaway_frame(frame)
        if frame.error_code == 0:
            self.state_machine.state = before
        return frames, events


@dataclass
class _Stream:
    answer: asyncio.Future[Answer]
    status: int | None = None
    body: list[bytes] = field(default_factory=list)


class H2Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, authority: str) -> None:
        self._reader = reader
        self._writer = writer
        self._authority = authority
        self._h2 = _Client(
            h2.config.H2Configuration(client_side=True, header_encoding=None))
        self._h2.initiate_connection()
        self._pings: dict[bytes, asyncio.Future[None]] = {}
        self._streams: dict[int, _Stream] = {}
        self._ping_ids = itertools.count(1)
        loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = loop.create_future()
        # GOAWAY(NO_ERROR) received, or the connection ended cleanly (EOF) without an error.
        self.graceful = False
        self.goaway = False  # GOAWAY(NO_ERROR) received: the server said goodbye
        self._last_stream: int | None = None  # GOAWAY's last-stream-id: nothing new after it
        self._flush()
        self._task = loop.create_task(self._read())


    @property
    def is_closed(self) -> bool:
        return self.closed.done()

    def ping(self) -> asyncio.Future[None]:
        """Send a PING; the future completes with its ACK."""
        opaque = next(self._ping_ids).to_bytes(8, "big")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.is_closed:
            fut.set_exception(ConnectionGone("connection closed", graceful=self.graceful))
            return fut
        self._pings[opaque] = fut
        self._h2.ping(opaque)
        self._flush()
        return fut

    def request(self, method: str, path: str, headers: tuple[tuple[str, str], ...] = (),
                body: bytes = b"") -> tuple[int, asyncio.Future[Answer]]:
        """Start a request; returns its stream id and a future of the answer."""
        fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        if self.is_closed:
            fut.set_exception(ConnectionGone("connection closed", graceful=self.graceful))
            return 0, fut
        sid = self._h2.get_next_available_stream_id()
        hdrs = [(":method", method), (":scheme", "https"), (":authority", self._authority),
                (":path", path), ("user-agent", "lvscare"),
                *((k.lower(), v) for k, v in headers if k.lower() not in ("host", "connection"))]
        self._streams[sid] = _Stream(fut)
        try:
            self._h2.send_headers(sid, hdrs, end_stream=not body)
            if body:
                self._h2.send_data(sid, body, end_stream=True)
        except h2.exceptions.H2Error as exc:
            self._streams.pop(sid, None)
            fut.set_exception(ConnectionGone(f"HTTP/2: {exc}"))
            return sid, fut
        self._flush()
        return sid, fut

    def cancel(self, sid: int) -> None:
        """Give up on a request (RST_STREAM CANCEL); the connection stays."""
        stream = self._streams.pop(sid, None)
        if stream is None or self.is_closed:
            return
        if not stream.answer.done():
            stream.answer.cancel()
        try:
            self._h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        except h2.exceptions.H2Error:
            return  # the stream had already ended
        self._flush()

    def close(self) -> None:
        self._end(ConnectionGone("closed by lvscare", graceful=True))
        self._task.cancel()
        self._writer.close()

    @property
    def busy(self) -> bool:
        """Requests still waiting for their answers (after a GOAWAY: those it promised)."""
        return bool(self._streams)

    # -- the connection's loop ------------------------------------------------------------------

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and not self._writer.is_closing():
            self._writer.write(data)

    async def _read(self) -> None:
        try:
            while True:
                data = await self._reader.read(READ_SIZE)
                if not data:
                    # Clean, as an idle timeout ends a connection; whether the server still
                    # listens is the next connection's to tell.
                    self.graceful = self.graceful or not (self._streams or self._pings)
                    raise ConnectionGone("closed by the server", graceful=self.graceful)
                for event in self._h2.receive_data(data):
                    self._dispatch(event)
                self._flush()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any bad frame, or a bug, ends this connection only
            # (OSError, TLS and h2 protocol errors, and whatever a malformed answer raises): every
            # waiting probe gets the reason, and ``closed`` completes.
            if isinstance(exc, ConnectionGone):
                gone = exc
            elif isinstance(exc, OSError):
                gone = ConnectionGone(f"{type(exc).__name__}: {exc}"[:200])
            else:  # h2's protocol errors, a malformed frame, a bug
                gone = BadAnswer(f"{type(exc).__name__}: {exc}"[:200])
            self._end(gone)
        finally:
            self._writer.close()

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.PingAckReceived):
            fut = self._pings.pop(bytes(event.ping_data or b""), None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif isinstance(event, h2.events.ResponseReceived):
            stream = self._streams.get(event.stream_id or 0)
            if stream is not None:
                for name, value in event.headers or ():
                    if name == b":status":
                        if not (len(value) == 3 and value.isdigit()):
                            raise BadAnswer(f"malformed :status {bytes(value)[:20]!r}")
                        stream.status = int(value)
        elif isinstance(event, h2.events.DataReceived):
            # Give the window back, or a server would stop sending after 64 KiB of bodies.
            if event.flow_controlled_length and event.stream_id:
                self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            stream = self._streams.get(event.stream_id or 0)
            if stream is not None and event.data and sum(map(len, stream.body)) < BODY_LIMIT:
                stream.body.append(bytes(event.data))
        elif isinstance(event, h2.events.StreamEnded):
            stream = self._streams.pop(event.stream_id or 0, None)
            if stream is not None and not stream.answer.done():
                if stream.status is None:
                    stream.answer.set_exception(ConnectionGone("stream ended without a status"))
                else:
                    stream.answer.set_result(Answer(stream.status, time.monotonic(),
                                                    b"".join(stream.body)[:BODY_LIMIT]))
            self._end_if_drained()
        elif isinstance(event, h2.events.StreamReset):
            stream = self._streams.pop(event.stream_id or 0, None)
            if stream is not None and not stream.answer.done():
                stream.answer.set_exception(ConnectionGone(f"stream reset ({event.error_code!s})"))
            self._end_if_drained()
        elif isinstance(event, h2.events.ConnectionTerminated):
            # GOAWAY: no new streams on this connection; the next probe opens a new one, which
            # tells whether the server still listens. With NO_ERROR it is a goodbye (a shutdown,
            # --goaway-chance, an idle timeout), not a failure: the streams it promised (up to
            # last-stream-id) still get their answers here.
            code = event.error_code
            graceful = code == h2.errors.ErrorCodes.NO_ERROR or code == 0
            if not graceful:
                raise ConnectionGone(f"GOAWAY ({code!s})")
            self.graceful = self.goaway = True
            last = event.last_stream_id if event.last_stream_id is not None else 0
            self._last_stream = last
            gone = ConnectionGone(f"GOAWAY ({code!s}): not processed", graceful=True)
            for sid in [sid for sid in self._streams if sid > last]:
                answer = self._streams.pop(sid).answer
                if not answer.done():
                    answer.set_exception(gone)
                    answer.exception()
            if not self.closed.done():
                self.closed.set_result(None)  # no new streams: wake the prober
            self._end_if_drained()

    def _end_if_drained(self) -> None:
        """After a GOAWAY, the connection ends once its promised answers are in."""
        if self._last_stream is not None and not self._streams:
            raise ConnectionGone("GOAWAY: every promised answer received", graceful=True)

    def _end(self, exc: ConnectionGone) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        futures: list[asyncio.Future[Any]] = [*self._pings.values()]
        futures += [s.answer for s in self._streams.values()]
        for fut in futures:
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # retrieved: nobody may be waiting any more
        self._pings.clear()
        self._streams.clear()
