"""A node and its apiservers, as network namespaces inside a kernel that has IPVS.

Layout, for backend i (1-based), all inside namespaces this module creates:

    netns <node>:  veth <tag>b<i>  10.200.<i>.1/24  fd00:200:<i>::1/64
    netns <be_i>:  eth0            10.200.<i>.2/24  fd00:200:<i>::2/64
                   route 10.200.0.0/16 and fd00:200::/32 via the node, and nothing else
    netns <pod>:   eth0            10.200.99.2/24, default via the node (Lab.add_pod, on demand)

Like real apiservers, the backends can reach every node address but have no route back to the
VIP. A "local" backend listens on the node's own address, inside the node namespace, as the
apiserver of a control-plane node does.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

_counter = itertools.count(1)
BACKEND = str(Path(__file__).with_name("backend.py"))
H2BACKEND = str(Path(__file__).with_name("h2backend.py"))
APISERVER = str(Path(__file__).with_name("apiserver.py"))
# What a backend runs: our stdlib HTTP/1.1 server (with the tls-hang fault), hypercorn with ALPN
# h2 (as kube-apiserver) or ALPN http/1.1 only, or the stand-in that follows kube-apiserver's
# graceful shutdown and GOAWAYs (apiserver.py; lab.backend_args for its delay and chance).
SERVERS = ("stdlib", "h2", "h2-http1", "apiserver")
CLIENT = str(Path(__file__).with_name("client.py"))


def sh(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


@dataclass
class Backend:
    name: str
    netns: str
    ip4: str
    ip6: str
    port: int
    fault_file: Path
    local: bool = False
    proc: subprocess.Popen[bytes] | None = None
    listen_v6: bool = False
    server: str = "stdlib"

    @property
    def count_file(self) -> Path:
        return self.fault_file.with_name(f"count-{self.name}")

    def requests(self) -> dict[str, int]:
        """Requests this backend served, by path (hypercorn backends only)."""
        try:
            lines = self.count_file.read_text().splitlines()
        except FileNotFoundError:
            return {}
        return {p: int(n) for p, n in (line.split() for line in lines if line.strip())}

    @property
    def address(self) -> str:
        return f"[{self.ip6}]:{self.port}" if self.listen_v6 else f"{self.ip4}:{self.port}"

    def set_fault(self, mode: str) -> None:
        self.fault_file.write_text(mode)


@dataclass
class Lab:
    node: str
    tag: str
    workdir: Path
    cert: Path
    key: Path
    backends: list[Backend] = field(default_factory=list)
    extra_netns: list[str] = field(default_factory=list)
    backend_args: list[str] = field(default_factory=list)  # more arguments for every backend

    # -- commands in the node ------------------------------------------------------------------

    def node_cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.node, *args]

    def run(self, *args: str, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return sh(*self.node_cmd(*args), check=check, timeout=timeout)

    def lvscare(self, *args: str, check: bool = False, env: dict[str, str] | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
        return subprocess.run(self.node_cmd(sys.executable, "-m", "lvscare", *args),
                              capture_output=True, text=True, timeout=timeout, check=check,
                              env=full_env)

    def ipvsadm(self) -> str:
        return self.run("ipvsadm", "-L", "--numeric").stdout

    def requests(self, host: str, port: int = 6443, count: int = 9,
                 timeout: float = 2.0) -> dict[str, object]:
        import json

        out = self.run(sys.executable, CLIENT, "--host", host, "--port", str(port),
                       "--count", str(count), "--timeout", str(timeout),
                       timeout=count * timeout + 60).stdout
        result: dict[str, object] = json.loads(out)
        return result

    def add_pod(self) -> str:
        """A namespace behind the node, as a pod on it: 10.200.99.2, default route via the node
        (which forwards, as a Kubernetes node does). Returns the namespace's name."""
        ns = f"{self.tag}-pod"
        sh("ip", "netns", "add", ns)
        self.extra_netns.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", f"{self.tag}p", "netns", self.node, "type", "veth",
           "peer", "name", "eth0", "netns", ns)
        sh("ip", "-n", self.node, "link", "set", f"{self.tag}p", "up")
        sh("ip", "-n", self.node, "addr", "add", "10.200.99.1/24", "dev", f"{self.tag}p")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "addr", "add", "10.200.99.2/24", "dev", "eth0")
        sh("ip", "-n", ns, "route", "add", "default", "via", "10.200.99.1")
        self.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        return ns

    # -- backends ------------------------------------------------------------------------------

    def start(self, backend: Backend) -> None:
        if backend.proc is not None and backend.proc.poll() is None:
            return
        listen = f"[{backend.ip6}]:{backend.port}" if backend.listen_v6 else \
            f"{backend.ip4}:{backend.port}"
        extra = [] if backend.server == "stdlib" else ["--count-file", str(backend.count_file)]
        if backend.server == "h2-http1":
            extra.append("--http1-only")
        program = {"stdlib": BACKEND, "apiserver": APISERVER}.get(backend.server, H2BACKEND)
        backend.proc = subprocess.Popen(
            ["ip", "netns", "exec", backend.netns, sys.executable, program, "--listen", listen,
             "--name", backend.name, "--cert", str(self.cert), "--key", str(self.key),
             "--fault-file", str(backend.fault_file), *extra, *self.backend_args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        assert backend.proc.stdout is not None
        line = backend.proc.stdout.readline()
        if b"listening" not in line:
            raise RuntimeError(f"backend {backend.name} did not start")

    def kill(self, backend: Backend, sig: int = signal.SIGKILL) -> None:
        if backend.proc is not None and backend.proc.poll() is None:
            os.killpg(backend.proc.pid, sig)
            backend.proc.wait(timeout=10)
        backend.proc = None

    def blackhole(self, backend: Backend, on: bool = True) -> float:
        """Drop every packet the backend sends or receives, as a powered-off or partitioned
        host behind a switch: its link stays up, so nothing tells the node. Returns the
        monotonic time at which the fault began: the first rule (IPv4 INPUT) already stops
        everything the node sends it, though all four take a few hundred ms here."""
        if backend.local:
            raise ValueError("cannot blackhole the node's own address")
        verb = "-I" if on else "-D"
        began: float | None = None
        for tool in ("iptables-legacy", "ip6tables-legacy"):
            for chain in ("INPUT", "OUTPUT"):
                sh("ip", "netns", "exec", backend.netns, tool, "-w", "5", verb, chain,
                   "-j", "DROP")
                if began is None:
                    began = time.monotonic()
        assert began is not None
        return began

    # -- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        for backend in self.backends:
            self.kill(backend)
        for ns in [self.node, *self.extra_netns]:
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _address_backend(netns: str, i: int) -> None:
    sh("ip", "-n", netns, "link", "set", "eth0", "up")
    sh("ip", "-n", netns, "addr", "replace", f"10.200.{i}.2/24", "dev", "eth0")
    sh("ip", "-n", netns, "addr", "replace", f"fd00:200:{i}::2/64", "dev", "eth0", "nodad")
    sh("ip", "-n", netns, "route", "replace", "10.200.0.0/16", "via", f"10.200.{i}.1")
    sh("ip", "-n", netns, "-6", "route", "replace", "fd00:200::/32", "via", f"fd00:200:{i}::1")


def make_certificate(workdir: Path) -> tuple[Path, Path]:
    cert, key = workdir / "apiserver.crt", workdir / "apiserver.key"
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
       "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=apiserver",
       "-addext", "subjectAltName=DNS:kubernetes,DNS:apiserver.cluster.local,IP:10.103.97.2")
    return cert, key


def build(backends: int = 3, local: bool = False, port: int = 6443, listen_v6: bool = False,
          start: bool = True, server: str = "stdlib") -> Lab:
    """Create the namespaces (and start the backends unless ``start`` is False).

    With ``local``, the last backend listens on the node's own address instead of in a namespace.
    """
    n = next(_counter)
    tag = f"l{os.getpid() % 1000}x{n}"
    workdir = Path(tempfile.mkdtemp(prefix=f"lab-{tag}-"))
    node = f"{tag}-node"
    sh("ip", "netns", "add", node)
    lab = Lab(node=node, tag=tag, workdir=workdir, cert=workdir / "c", key=workdir / "k")
    try:
        lab.cert, lab.key = make_certificate(workdir)
        sh("ip", "-n", node, "link", "set", "lo", "up")
        remote = backends - 1 if local else backends
        for i in range(1, backends + 1):
            if i <= remote:
                ns = f"{tag}-be{i}"
                sh("ip", "netns", "add", ns)
                lab.extra_netns.append(ns)
                sh("ip", "-n", ns, "link", "set", "lo", "up")
                sh("ip", "link", "add", f"{tag}b{i}", "netns", node, "type", "veth",
                   "peer", "name", "eth0", "netns", ns)
                sh("ip", "-n", node, "link", "set", f"{tag}b{i}", "up")
                sh("ip", "-n", node, "addr", "add", f"10.200.{i}.1/24", "dev", f"{tag}b{i}")
                sh("ip", "-n", node, "addr", "add", f"fd00:200:{i}::1/64", "dev", f"{tag}b{i}",
                   "nodad")
                _address_backend(ns, i)
                lab.backends.append(Backend(f"backend-{i}", ns, f"10.200.{i}.2",
                                            f"fd00:200:{i}::2", port, workdir / f"fault-{i}",
                                            listen_v6=listen_v6, server=server))
            else:
                # The node's own address: on the veth towards backend 1, as a NIC address.
                lab.backends.append(Backend(f"backend-{i}", node, "10.200.1.1", "fd00:200:1::1",
                                            port, workdir / f"fault-{i}", local=True,
                                            listen_v6=listen_v6, server=server))
        if start:
            for b in lab.backends:
                lab.start(b)
    except BaseException:
        lab.close()
        raise
    return lab


def wait_for(predicate, timeout: float, interval: float = 0.05) -> float:  # type: ignore[no-untyped-def]
    """Seconds until ``predicate()`` is true; raises TimeoutError after ``timeout``."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"condition not met in {timeout}s")
        time.sleep(interval)
