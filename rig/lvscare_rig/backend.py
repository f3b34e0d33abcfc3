"""An apiserver stand-in for the kernel tests and the demo: HTTPS (or HTTP), stdlib only.

Every response body is the backend's name, so a client can tell which real server answered.
``--fault-file`` names a file whose content switches behaviour at run time (re-read per request):

  ok        200 on every path (default, also when the file is absent or empty)
  500 / 401 that HTTP status on the health path, 200 elsewhere
  flap      500 and 200 in turn on the health path: every other probe fails
  hang      accept TCP, read the request, never answer
  tls-hang  accept TCP, never start the TLS handshake

As a stand-in apiserver for discovery, ``--endpoints-file`` is served at
/api/v1/namespaces/default/endpoints/kubernetes (re-read per request; a file reading ``HTTP 403``
answers that status), only to a client that presented a certificate signed by ``--client-ca``
(others get 401), as kube-apiserver asks for client certificates but does not require them.
"""

from __future__ import annotations

import argparse
import itertools
import socket
import ssl
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ENDPOINTS = "/api/v1/namespaces/default/endpoints/kubernetes"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True, help="address:port ([v6]:port)")
    ap.add_argument("--name", required=True)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--fault-file")
    ap.add_argument("--health-path", default="/healthz")
    ap.add_argument("--client-ca")
    ap.add_argument("--endpoints-file")
    args = ap.parse_args()
    host, _, port = args.listen.rpartition(":")
    host = host.strip("[]")
    fault_file = Path(args.fault_file) if args.fault_file else None

    def fault() -> str:
        try:
            return fault_file.read_text().strip() if fault_file else ""
        except OSError:
            return ""

    turns = itertools.count()  # flap: one count per health request (atomic in CPython)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: object) -> None:
            pass

        def endpoints(self) -> None:
            try:
                body = Path(args.endpoints_file).read_bytes()
            except OSError:
                body = b"HTTP 404"
            status = 200
            if not getattr(self.connection, "getpeercert", lambda: None)():
                status, body = 401, b'{"kind":"Status","code":401}'
            elif body.startswith(b"HTTP "):
                status, body = int(body.split()[1]), b'{"kind":"Status"}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if args.endpoints_file and self.path == ENDPOINTS:
                self.endpoints()
                return
            mode = fault()
            if mode == "hang":
                time.sleep(3600)
                return
            status = 200
            if mode.isdigit() and self.path.split("?")[0] == args.health_path:
                status = int(mode)
            elif mode == "flap" and self.path.split("?")[0] == args.health_path:
                status = 500 if next(turns) % 2 == 0 else 200
            body = (args.name + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET
        do_HEAD = do_GET

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 128

        def get_request(self):  # type: ignore[no-untyped-def]
            conn, addr = self.socket.accept()
            if fault() == "tls-hang":
                # Hold the socket open without a handshake; the client must time out.
                held.append(conn)
                raise OSError("holding connection")
            if ctx is not None:
                conn = ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
                conn.settimeout(10)
                try:
                    conn.do_handshake()
                except (OSError, ssl.SSLError):
                    conn.close()
                    raise
            return conn, addr

        def handle_error(self, request: object, client_address: object) -> None:
            pass

    held: list[socket.socket] = []
    ctx = None
    if args.cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args.cert, args.key)
        if args.client_ca:
            ctx.verify_mode = ssl.CERT_OPTIONAL
            ctx.load_verify_locations(args.client_ca)
    server = Server((host, int(port)), Handler)
    print("listening", flush=True)
    server.serve_forever(poll_interval=0.2)


if __name__ == "__main__":
    main()
