"""An apiserver stand-in that speaks HTTP/2 as kube-apiserver does: hypercorn (a server nobody
here wrote) serving a small ASGI app over TLS with ALPN ``h2`` and ``http/1.1``. PINGs are
answered by hypercorn's protocol layer, before the app, as Go's HTTP/2 server answers them.

Every response body is the backend's name. ``--fault-file`` switches behaviour per request:

  ok          200 on every path (default)
  500 / 401   that status on the health paths (/readyz, /healthz, /livez), 200 elsewhere
  slow:S      the health paths answer 200 after S seconds (a brown-out: PINGs stay prompt)
  hang        the health paths never answer (PINGs still answered)

``--count-file`` gets, after every request, one line per path: ``<path> <requests>``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
from collections import Counter
from pathlib import Path
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config

HEALTH_PATHS = {"/readyz", "/healthz", "/livez"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True, help="address:port ([v6]:port)")
    ap.add_argument("--name", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--fault-file")
    ap.add_argument("--count-file")
    ap.add_argument("--http1-only", action="store_true", help="offer only http/1.1 by ALPN")
    args = ap.parse_args()
    fault_file = Path(args.fault_file) if args.fault_file else None
    count_file = Path(args.count_file) if args.count_file else None
    counts: Counter[str] = Counter()
    body = (args.name + "\n").encode()

    def fault() -> str:
        try:
            return fault_file.read_text().strip() if fault_file else ""
        except OSError:
            return ""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path = scope["path"]
        counts[path] += 1
        if count_file is not None:
            count_file.write_text("".join(f"{p} {n}\n" for p, n in sorted(counts.items())))
        mode, status = fault(), 200
        if path in HEALTH_PATHS:
            if mode.isdigit():
                status = int(mode)
            elif mode.startswith("slow:"):
                await asyncio.sleep(float(mode[5:]))
            elif mode == "hang":
                await asyncio.Event().wait()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    # Bound here, before "listening" is printed: connections wait in the backlog until hypercorn
    # accepts them, so the rig never races the server's start.
    host, _, port = args.listen.rpartition(":")
    host = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(128)
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.certfile, config.keyfile = args.cert, args.key
    config.alpn_protocols = ["http/1.1"] if args.http1_only else ["h2", "http/1.1"]
    config.keep_alive_timeout = 90  # kube-apiserver's HTTP/2 idle timeout
    config.accesslog = None
    config.errorlog = None

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        print("listening", flush=True)
        await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    asyncio.run(run())


if __name__ == "__main__":
    main()
