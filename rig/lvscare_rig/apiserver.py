"""An HTTP/2 apiserver stand-in that follows kube-apiserver's graceful shutdown, for the tests of
what a restart costs its clients (docs/design.md, "A shutdown is not a death").

What it copies (``../shared/notes/apiserver-shutdown.md``; Go's net/http and x/net/http2):

* SIGTERM: ``/readyz`` answers 500 ``[-]shutdown failed: reason withheld`` at once; everything
  else is still served.
* ``--shutdown-delay`` seconds later: the listener closes (new connections are refused), every
  connection gets GOAWAY(NO_ERROR) with the last stream it will answer, and what is in flight is
  still answered; each connection closes once it has nothing left; the process exits when none is
  left, or after ``--request-timeout``.
* ``--goaway-chance p``: with probability p, GOAWAY(NO_ERROR) on the connection of an answer, sent
  before its HEADERS as Go does (the answer itself is delivered); the connection
  closes once idle.
* ``--idle-timeout``: a connection with no stream for that long gets GOAWAY and is closed (PINGs do
  not count as activity), as kube-apiserver's 90 s.
* PINGs are answered by the protocol layer (python-hyper's h2), before any handler.

Paths: ``/readyz`` (200 ``ok``, or 500 with the failing checks named: shutdown, or ``--fault-file``
``etcd`` for a sick server that is not shutting down), ``/sleep/S`` (answers after S seconds: a
long request), anything else 200 with the server's name.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import socket
import ssl
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import hyperframe.frame

SHUTDOWN_BODY = b"[+]ping ok\n[+]etcd ok\n[-]shutdown failed: reason withheld\nreadyz check failed\n"
ETCD_BODY = b"[+]ping ok\n[-]etcd failed: reason withheld\n[+]shutdown ok\nreadyz check failed\n"


class Conn:
    def __init__(self, server: Server, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server, self.reader, self.writer = server, reader, writer
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.streams: dict[int, asyncio.Task[None]] = {}
        self.last_stream = 0
        self.goaway_sent = False
        self.last_active = time.monotonic()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def goaway(self) -> None:
        if not self.goaway_sent:
            self.goaway_sent = True
            # Written as a raw frame: h2's close_connection() would also close its state machine,
            # and the streams the GOAWAY promises could no longer be answered (Go answers them).
            self.flush()
            frame = hyperframe.frame.GoAwayFrame(0)
            frame.last_stream_id = self.last_stream
            frame.error_code = h2.errors.ErrorCodes.NO_ERROR
            if not self.writer.is_closing():
                self.writer.write(frame.serialize())
        if not self.streams:
            self.writer.close()

    async def run(self) -> None:
        self.h2.initiate_connection()
        self.flush()
        try:
            while data := await self.reader.read(65536):
                for event in self.h2.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived) and not self.goaway_sent:
                        self.last_stream = max(self.last_stream, event.stream_id)
                        self.last_active = time.monotonic()
                        headers = dict(event.headers or [])
                        path = headers.get(b":path", b"/").decode()
                        sid = event.stream_id
                        self.streams[sid] = asyncio.create_task(self.answer(sid, path))
                    elif isinstance(event, h2.events.RequestReceived):
                        self.h2.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                    elif isinstance(event, h2.events.DataReceived) and event.stream_id:
                        self.h2.acknowledge_received_data(event.flow_controlled_length,
                                                          event.stream_id)
                self.flush()
        except (OSError, ssl.SSLError, h2.exceptions.ProtocolError):
            pass
        finally:
            for task in self.streams.values():
                task.cancel()
            self.writer.close()
            self.server.conns.discard(self)

    async def answer(self, sid: int, path: str) -> None:
        answer = self.server.respond(path)
        if isinstance(answer, float):
            await asyncio.sleep(answer)
            answer = (200, self.server.name.encode())
        status, body = answer
        # --goaway-chance: Go marks the answer "Connection: close" and sends the GOAWAY before
        # the answer's HEADERS (whose stream the GOAWAY's last-stream-id promises).
        if self.server.rng.random() < self.server.goaway_chance:
            self.goaway()
        try:
            self.h2.send_headers(sid, [(":status", str(status)),
                                       ("content-length", str(len(body)))])
            self.h2.send_data(sid, body, end_stream=True)
        except h2.exceptions.ProtocolError:
            pass
        del self.streams[sid]
        self.last_active = time.monotonic()
        self.flush()
        if self.goaway_sent and not self.streams:
            self.writer.close()


class Http1:
    """An HTTP/1.1 connection, counted among the server's connections until it is answered."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    def goaway(self) -> None:
        """HTTP/1.1 has no GOAWAY: the request in flight is answered, then the connection closes."""


class Server:
    def __init__(self, args: argparse.Namespace) -> None:
        self.name = args.name
        self.goaway_chance = args.goaway_chance
        self.rng = random.Random()
        self.fault_file = Path(args.fault_file) if args.fault_file else None
        self.count_file = Path(args.count_file) if args.count_file else None
        self.counts: dict[str, int] = {}
        self.conns: set[Conn | Http1] = set()
        self.shutting_down = False

    def count(self, path: str) -> None:
        self.counts[path] = self.counts.get(path, 0) + 1
        if self.count_file is not None:
            self.count_file.write_text("".join(f"{p} {n}\n" for p, n in sorted(self.counts.items())))

    def fault(self) -> str:
        try:
            return self.fault_file.read_text().strip() if self.fault_file else ""
        except OSError:
            return ""

    async def serve(self, conn_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tls = writer.get_extra_info("ssl_object")
        if tls is None or tls.selected_alpn_protocol() != "h2":
            await self.http1(conn_reader, writer)
            return
        conn = Conn(self, conn_reader, writer)
        self.conns.add(conn)
        await conn.run()

    def respond(self, path: str) -> tuple[int, bytes] | float:
        """The answer to ``path``, or the seconds to wait first (``/sleep/S``)."""
        self.count(path)
        if path == "/readyz":
            if self.shutting_down:
                return 500, SHUTDOWN_BODY
            if self.fault() == "etcd":
                return 500, ETCD_BODY
            return 200, b"ok"
        if path.startswith("/sleep/"):
            return float(path[7:])
        return 200, self.name.encode()

    async def http1(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request per connection (``Connection: close``), as keepalived's and haproxy's
        checks and simple clients use it. In flight at shutdown: still answered."""
        marker = Http1(writer)
        self.conns.add(marker)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            path = head.split(b" ", 2)[1].decode(errors="replace")
            answer = self.respond(path)
            if isinstance(answer, float):
                await asyncio.sleep(answer)
                answer = (200, self.name.encode())
            status, body = answer
            writer.write(f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                         + body)
            await writer.drain()
        except (TimeoutError, OSError, asyncio.IncompleteReadError, IndexError,
                asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            self.conns.discard(marker)


async def main(args: argparse.Namespace) -> None:
    server = Server(args)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    host, _, port = args.listen.rpartition(":")
    host = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    listener = await asyncio.start_server(server.serve, sock=sock, ssl=ctx, backlog=1024)
    loop = asyncio.get_running_loop()
    term = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, term.set)
    print("listening", flush=True)

    async def idle_reaper() -> None:
        while True:
            await asyncio.sleep(1)
            for conn in list(server.conns):
                if (isinstance(conn, Conn) and not conn.streams
                        and time.monotonic() - conn.last_active > args.idle_timeout):
                    conn.goaway()

    reaper = asyncio.create_task(idle_reaper())
    await term.wait()
    server.shutting_down = True  # /readyz: [-]shutdown failed
    await asyncio.sleep(args.shutdown_delay)
    listener.close()  # refused from now on
    for conn in list(server.conns):
        conn.goaway()
    deadline = time.monotonic() + args.request_timeout
    while server.conns and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    reaper.cancel()


def cli() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True, help="address:port ([v6]:port)")
    ap.add_argument("--name", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--fault-file")
    ap.add_argument("--count-file", help="after every request: one line per path, '<path> <n>'")
    ap.add_argument("--shutdown-delay", type=float, default=0.0)
    ap.add_argument("--request-timeout", type=float, default=60.0)
    ap.add_argument("--goaway-chance", type=float, default=0.0)
    ap.add_argument("--idle-timeout", type=float, default=90.0)
    asyncio.run(main(ap.parse_args()))


if __name__ == "__main__":
    cli()
