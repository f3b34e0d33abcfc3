"""Send requests through the VIP and report which backend answered each one (JSON on stdout).

Each request uses a new connection, so the IPVS scheduler picks a real server for every one.
"""

from __future__ import annotations

import argparse
import collections
import json
import socket
import ssl
import time


def request(host: str, port: int, timeout: float, tls: bool) -> str:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as raw:
        raw.settimeout(timeout)
        raw.connect((host, port))
        sock: socket.socket = raw
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            sock = ctx.wrap_socket(raw)
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise OSError(f"bad response {head[:40]!r}")
    return body.decode().strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, default=6443)
    ap.add_argument("--count", type=int, default=9)
    ap.add_argument("--timeout", type=float, default=2.0)
    ap.add_argument("--plain", action="store_true", help="HTTP instead of HTTPS")
    ap.add_argument("--every", type=float, default=0.0,
                    help="stream: one request this often, one JSON line each, for --count")
    args = ap.parse_args()
    if args.every:
        # Bounded: --count requests, one every --every seconds.
        for _ in range(args.count):
            started = time.time()
            try:
                line = {"t": started, "ok": True,
                        "backend": request(args.host, args.port, args.timeout, not args.plain)}
            except OSError as exc:
                line = {"t": started, "ok": False, "error": type(exc).__name__}
            line["took"] = round(time.time() - started, 4)
            print(json.dumps(line), flush=True)
            time.sleep(max(0.0, args.every - (time.time() - started)))
        return
    answers: collections.Counter[str] = collections.Counter()
    errors: list[str] = []
    started = time.monotonic()
    for _ in range(args.count):
        try:
            answers[request(args.host, args.port, args.timeout, not args.plain)] += 1
        except OSError as exc:
            errors.append(type(exc).__name__ + ": " + str(exc))
    print(json.dumps({"answers": answers, "errors": errors,
                      "seconds": round(time.monotonic() - started, 3)}))


if __name__ == "__main__":
    main()
