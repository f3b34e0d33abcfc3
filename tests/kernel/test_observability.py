"""Metrics, /healthz, /status, `lvscare status` and logs of a daemon in the real kernel."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lvscare_rig.topology import Lab

from .helpers import Care, wait

ADDR = "127.0.0.1:10262"  # loopback of the lab's node namespace


def get(lab: Lab, path: str) -> tuple[int, str]:
    proc = lab.run("curl", "-s", "-o", "-", "-w", "\n%{http_code}", f"http://{ADDR}{path}",
                   check=False)
    body, _, code = proc.stdout.rpartition("\n")
    return int(code or 0), body.strip()


def samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def metric(text: str, metric_name: str, **labels: str) -> float | None:
    for key, value in samples(text).items():
        if not key.startswith(metric_name + "{") and key != metric_name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', key))
        if all(found.get(k) == v for k, v in labels.items()):
            return value
    return None


def promtool_check(text: str) -> None:
    proc = subprocess.run(["promtool", "check", "metrics"], input=text + "\n", capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.smoke
def test_metrics_follow_a_failover(lab: Lab) -> None:
    care = Care(lab, "--metrics-address", ADDR).start()
    try:
        b = lab.backends[2].address
        vs = "10.103.97.2:6443"
        wait(lambda: get(lab, "/metrics")[0] == 200, 10, care)
        _, text = get(lab, "/metrics")
        promtool_check(text)
        assert metric(text, "lvscare_real_server_up", vs=vs, rs=b) == 1
        assert metric(text, "lvscare_real_server_kernel_weight", vs=vs, rs=b) == 1
        assert metric(text, "lvscare_virtual_server_healthy_real_servers", vs=vs) == 3
        assert metric(text, "lvscare_sysctl", name="net.ipv4.vs.expire_nodest_conn") == 1
        assert metric(text, "lvscare_build_info") == 1
        assert (metric(text, "lvscare_last_reconcile_timestamp_seconds") or 0) > time.time() - 10
        lab.kill(lab.backends[2])
        wait(lambda: metric(get(lab, "/metrics")[1], "lvscare_real_server_up", vs=vs, rs=b) == 0,
             10, care)
        _, text = get(lab, "/metrics")
        promtool_check(text)
        assert metric(text, "lvscare_real_server_kernel_weight", vs=vs, rs=b) == -1
        assert metric(text, "lvscare_real_server_transitions_total", vs=vs, rs=b,
                      state="down") == 1
        assert sum(metric(text, "lvscare_probes_total", vs=vs, rs=b, outcome=o) or 0
                   for o in ("refused", "reset")) >= 1
        assert metric(text, "lvscare_virtual_server_healthy_real_servers", vs=vs) == 2
        # Traffic through the VIP shows up as IPVS connection counts (sampled at each reconcile;
        # closed connections stay in InActConn for the TIME_WAIT of IPVS, 2 minutes).
        lab.requests("10.103.97.2", count=4)

        def conns() -> float:
            text = get(lab, "/metrics")[1]
            return sum((metric(text, f"lvscare_real_server_{kind}_connections", vs=vs, rs=x.address) or 0)
                       for x in lab.backends[:2] for kind in ("active", "inactive"))

        wait(lambda: conns() >= 1, 10, care)
    finally:
        care.stop()


def test_status_endpoint_and_command(lab: Lab) -> None:
    care = Care(lab, "--metrics-address", ADDR).start()
    try:
        lab.backends[1].set_fault("500")
        wait(lambda: any(r["state"] == "down" for r in json.loads(get(lab, "/status")[1])
                         ["virtualServers"][0]["realServers"]), 10, care)
        data = json.loads(get(lab, "/status")[1])
        (vs,) = data["virtualServers"]
        by = {r["address"]: r for r in vs["realServers"]}
        down = by[lab.backends[1].address]
        assert down["kernelWeight"] == 0 and down["configuredWeight"] == 1
        assert down["lastProbe"]["outcome"] == "http_status" and down["lastProbe"]["status"] == 500
        assert by[lab.backends[0].address]["state"] == "healthy"
        out = lab.run(sys.executable, "-m", "lvscare", "status", "--address", ADDR).stdout
        assert lab.backends[1].address in out and "down" in out and "0/1" in out
        js = lab.run(sys.executable, "-m", "lvscare", "status", "-o", "json", "--address",
                     ADDR).stdout
        assert json.loads(js)["virtualServers"][0]["address"] == "10.103.97.2:6443"
    finally:
        care.stop()
    missing = lab.lvscare("status", "--address", ADDR)
    assert missing.returncode == 1 and "no lvscare daemon answers" in missing.stderr


def test_healthz_turns_503_when_reconciling_stalls(lab: Lab) -> None:
    lab.run("ip", "addr", "add", "10.200.9.9/32", "dev", "lo")
    care = Care(lab, "--metrics-address", ADDR, "--ip", "10.200.9.9").start()
    try:
        assert get(lab, "/healthz") == (200, "ok")
        # The route's source address disappears: every reconcile now fails.
        lab.run("ip", "addr", "del", "10.200.9.9/32", "dev", "lo")
        lab.run("ip", "route", "flush", "table", "local", "proto", "76")
        wait(lambda: get(lab, "/healthz")[0] == 503, 30, care)
        _, reason = get(lab, "/healthz")
        assert "last successful reconcile" in reason and "10.200.9.9" in reason
        assert len(care.events("reconcile failed, will retry")) == 1  # logged once, not per try
        _, text = get(lab, "/metrics")
        assert sum(v for k, v in samples(text).items()
                   if k.startswith("lvscare_reconcile_errors_total")) >= 2
        lab.run("ip", "addr", "add", "10.200.9.9/32", "dev", "lo")
        wait(lambda: get(lab, "/healthz")[0] == 200, 40, care)
        assert care.events("reconcile recovered")
    finally:
        care.stop()


def test_logs_are_json_and_quiet_when_healthy(lab: Lab) -> None:
    care = Care(lab).start()
    try:
        # Start-up says things once (the first probe of each real server may take seconds
        # in a loaded kernel): the steady state begins when the log has been still for 2 s.
        settled, still_since, deadline = -1, time.monotonic(), time.monotonic() + 30
        while time.monotonic() < deadline and time.monotonic() - still_since < 2:
            n = len(care.events())
            if n != settled:
                settled, still_since = n, time.monotonic()
            time.sleep(0.2)
        time.sleep(8)  # eight intervals of a healthy steady state
        events = care.events()
        assert events[settled:] == []
        for e in events:
            assert {"event", "level", "timestamp"} <= set(e)
        lab.kill(lab.backends[0])
        wait(lambda: care.events("real server down"), 10, care)
        down = care.events("real server down")[0]
        assert down["level"] == "info" and down["rs"] == lab.backends[0].address
        assert down["probe"] in ("refused", "reset") and down["reason"]
    finally:
        care.stop()


FLOOD = r"""
import socket, sys, time
held = []
for _ in range(int(sys.argv[1])):
    try:
        held.append(socket.create_connection(("127.0.0.1", 10262), timeout=1))
    except OSError:
        pass
print(len(held), flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_flood_of_idle_web_clients_cannot_starve_the_probes(lab: Lab) -> None:
    """1,500 idle connections to the metrics port of a daemon whose file limit is 512 soft,
    1,024 hard (as container runtimes start it): it raises the soft limit, keeps at most a few
    dozen web connections, and its probes go on: healthy apiservers stay in, a killed one
    goes out."""
    care = Care(lab, "--metrics-address", ADDR, wrap=("prlimit", "--nofile=512:1024")).start()
    try:
        assert care.proc is not None
        pid = care.proc.pid  # ip netns exec and prlimit exec the daemon: the same process
        limits = Path(f"/proc/{pid}/limits").read_text()
        assert re.search(r"Max open files\s+1024\s+1024", limits), limits
        flood = subprocess.Popen(lab.node_cmd("prlimit", "--nofile=4096:4096", sys.executable, "-c",
                                              FLOOD, "1500", "12"), stdout=subprocess.PIPE, text=True)
        try:
            assert flood.stdout is not None
            assert int(flood.stdout.readline()) > 0
            time.sleep(2)
            fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
            assert fds < 150, fds
            b = lab.backends[2]
            lab.kill(b)
            wait(lambda: b.address not in lab.ipvsadm(), 10, care)
            downs = [e["rs"] for e in care.events("real server down")]
            assert downs == [b.address], care.events("real server down")
        finally:
            flood.kill()
            flood.wait()
        wait(lambda: get(lab, "/healthz") == (200, "ok"), 10, care)
        assert not [e for e in care.events() if "Too many open files" in json.dumps(e)]
    finally:
        care.stop()
