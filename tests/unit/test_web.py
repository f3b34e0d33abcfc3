"""The daemon's own HTTP server against clients that are not polite: too many, idle, slow,
malformed. Real sockets on loopback."""

from __future__ import annotations

import asyncio

from lvscare.web import MAX_HEAD, WebServer


async def _server(**kw: float) -> WebServer:
    server = WebServer({"/healthz": lambda: (200, "text/plain", b"ok\n"),
                        "/boom": lambda: 1 // 0},  # type: ignore[dict-item]
                       **kw)  # type: ignore[arg-type]
    await server.start("127.0.0.1:0")
    return server


async def _ask(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 2)
    finally:
        writer.close()


async def test_answers_get_and_head_and_refuses_the_rest() -> None:
    server = await _server()
    try:
        ok = await _ask(server.port, b"GET /healthz?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and ok.endswith(b"\r\n\r\nok\n")
        assert b"Connection: close" in ok and b"Content-Length: 3" in ok
        head = await _ask(server.port, b"HEAD /healthz HTTP/1.0\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
        assert (await _ask(server.port, b"POST /healthz HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
        assert (await _ask(server.port, b"GET /nope HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
        assert (await _ask(server.port, b"GET /healthz\r\n\r\n")).startswith(b"HTTP/1.1 400")
        assert (await _ask(server.port, b"GET /boom HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 500")
        huge = b"GET /healthz HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD * 2) + b"\r\n\r\n"
        assert await _ask(server.port, huge) == b""  # closed, not buffered
    finally:
        await server.close()


async def test_idle_and_slow_clients_are_cut_off() -> None:
    server = await _server(timeout=0.3)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /hea")  # and then nothing more, or one byte now and then
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()
        assert server.active == 0
    finally:
        await server.close()


async def test_connections_beyond_the_cap_are_closed_and_the_server_still_answers() -> None:
    server = await _server(max_connections=8, timeout=1.0)
    idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(20)]
    try:
        await asyncio.sleep(0.1)
        assert server.active == 8 and server.refused == 12
        # The idle ones time out, and then it answers again.
        await asyncio.sleep(1.2)
        assert server.active == 0
        ok = await _ask(server.port, b"GET /healthz HTTP/1.1\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200")
    finally:
        for _, w in idle:
            w.close()
        await server.close()
