"""A rolling restart of three apiservers, as every upgrade does, seen by a node's clients.

    .venv/bin/python bench/rolling_restart.py [--delays 0,10] [--skip keepalived,haproxy] [--real]

In the test kernel (booted when the host has no IPVS), in one boot, for each balancer and each
``--shutdown-delay-duration``: a fresh lab of three stand-ins that follow kube-apiserver's
graceful shutdown (rig/lvscare_rig/apiserver.py: /readyz says shutdown at SIGTERM, after the delay
the listener closes and every connection gets GOAWAY(NO_ERROR), what is in flight is answered),
and three clients on the node through the VIP:

  new        a new TLS connection and a GET every 50 ms (20 connections a second);
  long       a 6 s request started every 0.5 s, each on a new connection;
  standing   one HTTP/2 connection, a GET every 100 ms, with client-go's rules: streams a GOAWAY
             left unprocessed are retried on a new connection, a GET cut by a reset or EOF is
             retried once, and "connection refused" is a failure.

Then each apiserver in turn: SIGTERM, its exit, its restart, and the balancer taking it back.

With ``--real``: three real kube-apiservers (1.20, Debian's source package, and etcd:
rig/lvscare_rig/realplane.py, built by scripts/control-plane) with ``--shutdown-delay-duration``
the delay, instead of the stand-ins. Their "long" requests are watches of namespaces with
``timeoutSeconds=6`` (admin certificate), the real apiserver's long-running request.

Balancers: lvscare (defaults, route mode); keepalived as the Kubernetes HA guide sets it up
(SSL_GET /healthz, delay_loop 5: bench/failover.py); haproxy with kubespray's settings (mode tcp,
leastconn, httpchk GET /healthz every 15 s, rise 2 fall 2, redispatch, retries 5), bound to the VIP.
Printed per balancer and delay: failed new connections, cut long requests and standing-client
failures, in all and per restart; then each failure with its reason, its time from the nearest
SIGTERM, and lvscare's log lines from 5 s before it to 2 s after.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lvscare_rig import testkernel, topology

VIP = "10.103.97.2"
PORT = 6443
CLIENT_CERT: tuple[str, str] | None = None  # --real: the admin's certificate and key
LONG = "/sleep/6"


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if CLIENT_CERT is not None:
        ctx.load_cert_chain(*CLIENT_CERT)
    return ctx


def get(path: str, timeout: float) -> None:
    """One HTTP/1.1 GET on a new TLS connection through the VIP; raises OSError on failure."""
    with socket.create_connection((VIP, PORT), timeout=timeout) as raw, _tls().wrap_socket(raw) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {VIP}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    if not data.startswith(b"HTTP/1.1 200"):
        raise OSError(f"bad answer {data[:30]!r}")


@dataclass
class Counts:
    ok: int = 0
    failed: list[float] = field(default_factory=list)  # when (monotonic)
    reasons: list[str] = field(default_factory=list)  # why, beside each of failed
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, ok: bool, at: float, reason: str = "") -> None:
        with self.lock:
            if ok:
                self.ok += 1
            else:
                self.failed.append(at)
                self.reasons.append(reason)


def why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:120]


class Clients:
    def __init__(self) -> None:
        self.stop = threading.Event()
        self.new, self.long, self.standing = Counts(), Counts(), Counts()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        for target in (self._new, self._long, self._standing):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self.threads.append(t)

    def _new(self) -> None:
        while not self.stop.is_set():
            began = time.monotonic()
            try:
                get("/version", 2)
                self.new.add(True, began)
            except OSError as exc:
                self.new.add(False, began, why(exc))
            time.sleep(max(0.0, 0.05 - (time.monotonic() - began)))

    def _long(self) -> None:
        def one(began: float) -> None:
            try:
                get(LONG, 30)
                self.long.add(True, began)
            except OSError as exc:
                self.long.add(False, began, why(exc))

        while not self.stop.is_set():
            threading.Thread(target=one, args=(time.monotonic(),), daemon=True).start()
            self.stop.wait(0.5)
        time.sleep(7)  # the last ones finish

    def _standing(self) -> None:
        asyncio.run(self._standing_loop())

    async def _standing_loop(self) -> None:
        from lvscare.h2conn import ConnectionGone, H2Connection

        conn: H2Connection | None = None
        ctx = _tls()
        ctx.set_alpn_protocols(["h2"])

        async def connect() -> H2Connection:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(VIP, PORT, ssl=ctx), 2)
            return H2Connection(reader, writer, f"{VIP}:{PORT}")

        while not self.stop.is_set():
            began = time.monotonic()
            ok, reason = False, ""
            for attempt in range(3):  # first try, the GOAWAY/GET retry, nothing more
                try:
                    if conn is None or conn.is_closed:
                        conn = await connect()
                    _, fut = conn.request("GET", "/version")
                    answer = await asyncio.wait_for(fut, 5)
                    ok, reason = answer.status == 200, f"status {answer.status}"
                    break
                except ConnectionGone as exc:
                    conn, reason = None, f"attempt {attempt + 1}: {why(exc)}"
                    if exc.graceful or attempt == 0:
                        continue  # unprocessed after a GOAWAY, or a GET cut: asked again
                    break
                except (OSError, TimeoutError) as exc:
                    conn = None  # refused, or no answer: client-go returns it
                    reason = f"attempt {attempt + 1}: {why(exc)}"
                    break
            self.standing.add(ok, began, reason)
            await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - began)))
        if conn is not None:
            conn.close()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)


def haproxy_config(lab: topology.Lab, path: Path) -> None:
    servers = "".join(f"  server {b.name} {b.ip4}:{PORT} check check-ssl verify none\n"
                      for b in lab.backends)
    path.write_text(f"""global
  maxconn 4000
defaults
  mode http
  option redispatch
  retries 5
  timeout connect 30s
  timeout client 5m
  timeout server 15m
  timeout check 30s
frontend kube_api_frontend
  bind {VIP}:{PORT}
  mode tcp
  default_backend kube_api_backend
backend kube_api_backend
  mode tcp
  balance leastconn
  default-server inter 15s downinter 15s rise 2 fall 2 slowstart 60s maxconn 1000 maxqueue 256 weight 100
  option httpchk GET /healthz
  http-check expect status 200
{servers}""")


def start_balancer(kind: str, lab: topology.Lab) -> subprocess.Popen[bytes]:
    if kind == "lvscare":
        args = [sys.executable, "-m", "lvscare", "care", "--vs", f"{VIP}:{PORT}",
                "--metrics-address", "off", "--log-format", "json"]
        for b in lab.backends:
            args += ["--rs", b.address]
        return subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                stderr=(lab.workdir / "lvscare.log").open("w"))
    # keepalived and haproxy: the VIP local to the node as lvscare's route mode has it (a local
    # route whose source is the node's address: the apiservers have no route back to the VIP).
    subprocess.run(["ip", "route", "replace", "local", f"{VIP}/32", "dev", "lo", "src",
                    "10.200.1.1", "table", "local"], check=True)
    if kind == "keepalived":
        from failover import start_keepalived

        return start_keepalived(lab)
    conf = lab.workdir / "haproxy.cfg"
    haproxy_config(lab, conf)
    return subprocess.Popen(["haproxy", "-db", "-f", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def in_table(address: str) -> bool:
    out = subprocess.run(["ipvsadm", "-Ln"], capture_output=True, text=True, check=False).stdout
    return any(address in line and line.split()[-3] != "0" for line in out.splitlines()
               if line.strip().startswith("->"))


def daemon_lines(lab: topology.Lab, at: float) -> list[str]:
    """What lvscare logged from 5 s before a failure (monotonic ``at``) to 2 s after: its log
    says each change of state once, so these are the few lines that explain one."""
    logf = lab.workdir / "lvscare.log"
    if not logf.exists():
        return []
    wall = time.time() - (time.monotonic() - at)
    lines = []
    for line in logf.read_text().splitlines():
        try:
            e = json.loads(line)
            t = datetime.datetime.strptime(e["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                tzinfo=datetime.UTC).timestamp()
        except (ValueError, KeyError):
            continue
        if wall - 5 <= t <= wall + 2:
            lines.append(f"  {t - wall:+.2f}s lvscare: {line[:220]}")
    return lines


def run(kind: str, delay: float, real: bool,
        ) -> tuple[dict[str, int], list[dict[str, int]], list[str]]:
    global CLIENT_CERT, LONG
    from chaos import in_netns

    lab = topology.build(backends=3, server="apiserver", start=False)
    lab.backend_args = ["--shutdown-delay", f"{delay:g}"]
    balancer = None
    plane = None
    try:
        if real:
            from lvscare_rig import realplane

            plane = realplane.build(lab, shutdown_delay=delay)
            CLIENT_CERT = (str(plane.dir / "admin.crt"), str(plane.dir / "admin.key"))
            LONG = "/api/v1/namespaces?watch=1&timeoutSeconds=6"
        else:
            for b in lab.backends:
                lab.start(b)
        with in_netns(lab.node):
            balancer = start_balancer(kind, lab)
            settle = 35.0 if kind == "haproxy" else 15.0
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    get("/version", 1)
                    break
                except OSError:
                    time.sleep(0.2)
            time.sleep(6 if kind != "haproxy" else 32)  # every check has passed once
            clients = Clients()
            clients.start()
            time.sleep(3)
            marks = [time.monotonic()]
            sigterms: list[float] = []
            for b in lab.backends:
                sigterms.append(time.monotonic())
                if plane is not None:
                    plane.stop(b, signal.SIGTERM)
                    plane.start(b)
                    plane.wait_ready(b)
                else:
                    assert b.proc is not None
                    b.proc.send_signal(signal.SIGTERM)
                    b.proc.wait(timeout=delay + 90)
                    b.proc = None
                    lab.start(b)
                back = time.monotonic() + settle
                while time.monotonic() < back:
                    if kind != "haproxy" and in_table(b.address):
                        time.sleep(3)  # its rise, and some traffic on it
                        break
                    time.sleep(0.2)
                marks.append(time.monotonic())
            time.sleep(2)
            clients.finish()
        per_restart = []
        for start, end in itertools.pairwise(marks):
            per_restart.append({name: sum(start <= t < end for t in c.failed)
                                for name, c in (("new", clients.new), ("long", clients.long),
                                                ("standing", clients.standing))})
        # Each failure with its reason, and when: restart n, seconds after its SIGTERM.
        failures = []
        for name, c in (("new", clients.new), ("long", clients.long),
                        ("standing", clients.standing)):
            for at, reason in zip(c.failed, c.reasons, strict=True):
                # Counted in the restart whose window it began in; told against the nearest
                # SIGTERM (a request begun just before one is that one's).
                n = min(range(len(sigterms)), key=lambda k: abs(at - sigterms[k]))
                when = f"began {at - sigterms[n]:+.2f}s from restart {n + 1}'s SIGTERM"
                failures.append(f"{name} ({when}): {reason}")
                failures += daemon_lines(lab, at)
        totals = {"new": len(clients.new.failed), "new_of": clients.new.ok + len(clients.new.failed),
                  "long": len(clients.long.failed),
                  "long_of": clients.long.ok + len(clients.long.failed),
                  "standing": len(clients.standing.failed),
                  "standing_of": clients.standing.ok + len(clients.standing.failed)}
        return totals, per_restart, failures
    finally:
        if balancer is not None:
            balancer.send_signal(signal.SIGTERM)
            balancer.wait(15)
        if plane is not None:
            plane.close()
        lab.close()


def inside(delays: list[float], skip: set[str], real: bool) -> int:
    what = "real kube-apiservers (1.20)" if real else "apiserver stand-ins"
    print(f"rolling restart of 3 {what}, kernel {os.uname().release}", flush=True)
    for kind in ("lvscare", "keepalived", "haproxy"):
        if kind in skip or (kind != "lvscare" and not shutil.which(kind)):
            print(f"  {kind}: skipped" + ("" if kind in skip else f" (apt-get install {kind})"))
            continue
        for delay in delays:
            totals, per, failures = run(kind, delay, real)
            print(f"  {kind:10} delay {delay:>4g}s: new connections failed {totals['new']} of "
                  f"{totals['new_of']}, long requests cut {totals['long']} of {totals['long_of']}, "
                  f"standing client failed {totals['standing']} of {totals['standing_of']}; "
                  "per restart " + "; ".join(f"{p['new']}/{p['long']}/{p['standing']}"
                                            for p in per), flush=True)
            for line in failures:
                print(f"    {line}", flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--delays", default="0,10")
    ap.add_argument("--skip", default="", help="comma list: keepalived,haproxy")
    ap.add_argument("--real", action="store_true", help="real kube-apiservers instead of stand-ins")
    args = ap.parse_args()
    delays = [float(d) for d in args.delays.split(",") if d]
    if os.environ.get("LVSCARE_TEST_KERNEL") or testkernel.host_has_ipvs():
        from lvscare import log

        log.configure("warning")
        return inside(delays, set(filter(None, args.skip.split(","))), args.real)
    if args.real:
        from lvscare_rig import controlplane

        controlplane.build()
    return testkernel.boot([sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]],
                           timeout=3600, mem="3G")


if __name__ == "__main__":
    raise SystemExit(main())
