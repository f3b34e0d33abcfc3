"""Control-plane discovery: the kubeconfig, the Endpoints answer, the merge rules (never empty,
never from a broken answer), the state file, and the polling round with its once-per-episode
logs, against a fake fetch."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import random
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from lvscare_rig.topology import make_certificate
from structlog.testing import capture_logs

from lvscare import kubeconfig
from lvscare.config import Config, Endpoint, RealServer, VirtualServer, parse_endpoint
from lvscare.discovery import Discovery, state_path
from lvscare.errors import UserError
from lvscare.members import (
    State,
    Unusable,
    apply_members,
    decode_state,
    encode_state,
    parse_endpoints,
    seed_weights,
)

VS4 = VirtualServer(parse_endpoint("10.103.97.2:6443"), (
    RealServer(parse_endpoint("10.0.0.1:6443")), RealServer(parse_endpoint("10.0.0.2:6443"), 3)))
VS6 = VirtualServer(parse_endpoint("[fd00::97:2]:6443"), (RealServer(parse_endpoint("[fd00::1]:6443")),))


def ep(text: str) -> Endpoint:
    return parse_endpoint(text)


def endpoints(*ips: str, port: int = 6443, name: str | None = "https", **extra: Any) -> bytes:
    port_item: dict[str, Any] = {"port": port, "protocol": "TCP"}
    if name is not None:
        port_item["name"] = name
    subset = {"addresses": [{"ip": ip} for ip in ips], "ports": [port_item], **extra}
    return json.dumps({"kind": "Endpoints", "apiVersion": "v1",
                       "metadata": {"name": "kubernetes", "namespace": "default"},
                       "subsets": [subset] if ips or extra else []}).encode()


# -- the Endpoints answer ------------------------------------------------------------------------


def test_endpoints_give_the_ready_addresses_with_the_https_port() -> None:
    body = json.dumps({"kind": "Endpoints", "subsets": [
        {"addresses": [{"ip": "10.0.0.3"}, {"ip": "10.0.0.1"}],
         "notReadyAddresses": [{"ip": "10.0.0.9"}],
         "ports": [{"name": "metrics", "port": 9000}, {"name": "https", "port": 6443}]},
        {"addresses": [{"ip": "fd00::2"}], "ports": [{"name": "https", "port": 6443}]}]}).encode()
    assert [str(m) for m in parse_endpoints(body)] == ["10.0.0.1:6443", "10.0.0.3:6443", "[fd00::2]:6443"]
    # One unnamed port is the port (older clusters); two unnamed ones name nothing.
    assert [str(m) for m in parse_endpoints(endpoints("10.0.0.1", name=None, port=443))] == ["10.0.0.1:443"]


@pytest.mark.parametrize(("body", "reason"), [
    (b"", "decode"), (b"<html>", "decode"), (b"[]", "decode"), (b'{"kind": "Status"}', "decode"),
    (endpoints(), "empty"),
    (json.dumps({"kind": "Endpoints", "subsets": [{"notReadyAddresses": [{"ip": "10.0.0.1"}],
                                                   "ports": [{"name": "https", "port": 6443}]}]}).encode(),
     "empty"),
    (endpoints("10.0.0.1", port=0), "decode"), (endpoints("10.0.0.1", port=True), "decode"),
    (endpoints("not-an-ip"), "decode"), (endpoints("0.0.0.0"), "decode"), (endpoints("127.0.0.1"), "decode"),
    (json.dumps({"kind": "Endpoints", "subsets": "x"}).encode(), "decode"),
])
def test_a_broken_or_empty_answer_is_unusable(body: bytes, reason: str) -> None:
    with pytest.raises(Unusable) as exc:
        parse_endpoints(body)
    assert exc.value.reason == reason


# -- the merge rules -----------------------------------------------------------------------------


def test_members_replace_seeds_by_family_keeping_seed_weights() -> None:
    cfg = Config((VS4, VS6))
    new = apply_members(cfg, (ep("10.0.0.2:6443"), ep("10.0.0.4:6443")), seed_weights(cfg))
    v4, v6 = new.virtual_servers
    assert [(str(r.endpoint), r.weight) for r in v4.real_servers] == [
        ("10.0.0.2:6443", 3), ("10.0.0.4:6443", 1)]
    assert v6 == VS6  # no IPv6 member: its list stays


addresses = st.lists(st.one_of(
    st.ip_addresses(v=4, network="10.0.0.0/24"), st.ip_addresses(v=6, network="fd00::/120")), max_size=6)
bodies = st.one_of(st.binary(max_size=40), addresses.map(lambda ips: endpoints(*map(str, ips))),
                   st.just(endpoints()))


@given(st.lists(bodies, max_size=8))
def test_the_list_is_never_empty_and_a_broken_answer_never_changes_it(answers: list[bytes]) -> None:
    cfg = Config((VS4, VS6))
    seeds = seed_weights(cfg)
    for body in answers:
        try:
            members = parse_endpoints(body)
        except Unusable:
            continue  # what the daemon does: nothing
        new = apply_members(cfg, members, seeds)
        for old_vs, vs in zip(cfg.virtual_servers, new.virtual_servers, strict=True):
            assert vs.real_servers, "never empty"
            mine = {m for m in members if m.ip.version == vs.endpoint.ip.version}
            before = {r.endpoint for r in old_vs.real_servers}
            assert {r.endpoint for r in vs.real_servers} == (mine or before)
        cfg = new


# -- the state file ------------------------------------------------------------------------------


def test_state_round_trip_and_broken_files() -> None:
    state = State("ca:ab", "https://10.103.97.2:6443", 1.8e9, (ep("10.0.0.1:6443"), ep("[fd00::1]:6443")))
    data = encode_state(state)
    assert decode_state(data) == state
    assert json.loads(data)["readAtText"] == "2027-01-15T08:00:00Z"
    for broken in (b"", b"{}", b'{"version": 2}', data.replace(b"10.0.0.1", b"10.0.0.300"),
                   json.dumps({**json.loads(data), "members": []}).encode()):
        with pytest.raises(Unusable):
            decode_state(broken)


# -- the kubeconfig ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    cert, key = make_certificate(d)
    client = d / "client.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(client), "-out", str(d / "client.crt"), "-days", "2",
                    "-subj", "/O=system:nodes/CN=system:node:n1"], check=True, capture_output=True)
    client.write_bytes(client.read_bytes() + (d / "client.crt").read_bytes())  # kubelet's one-file pem
    other_cert, _ = make_certificate(d / "other" if (d / "other").mkdir() is None else d)
    return {"ca": cert, "key": key, "client": client, "other": other_cert}


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, cluster: dict[str, Any], user: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "k",
        "contexts": [{"name": "k", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": cluster}], "users": [{"name": "u", "user": user}]}))
    return str(path)


def test_kubelet_conf_with_files_and_admin_conf_with_embedded_data(
        pki: dict[str, Path], tmp_path: Path) -> None:
    kubelet = kubeconfig.load(write_kubeconfig(
        tmp_path / "kubelet.conf",
        {"server": "https://apiserver.cluster.local:6443", "certificate-authority-data":
         base64.b64encode(pki["ca"].read_bytes()).decode()},
        {"client-certificate": str(pki["client"]), "client-key": str(pki["client"])}))
    assert (kubelet.host, kubelet.port, kubelet.server_name) == ("apiserver.cluster.local", 6443,
                                                                 "apiserver.cluster.local")
    assert kubelet.ssl_context().verify_mode == ssl.CERT_REQUIRED
    (tmp_path / "ca.crt").write_bytes(pki["ca"].read_bytes())
    admin = kubeconfig.load(write_kubeconfig(
        tmp_path / "admin.conf",
        {"server": "https://10.103.97.2:6443", "certificate-authority": "ca.crt",
         "tls-server-name": "kubernetes"},
        {"client-certificate-data": b64(pki["client"].parent / "client.crt"),
         "client-key-data": b64(pki["client"])}))
    assert admin.server_name == "kubernetes" and admin.host == "10.103.97.2"
    # A relative CA path is relative to the kubeconfig's directory.
    assert admin.ca is not None and admin.ca.path == str(tmp_path / "ca.crt")
    # The cluster is told by its CA: the same CA read either way is the same cluster.
    assert admin.cluster_identity() == kubelet.cluster_identity() != "ca:" + "0" * 64
    insecure = kubeconfig.load(write_kubeconfig(
        tmp_path / "i.conf", {"server": "https://10.103.97.2:6443", "insecure-skip-tls-verify": True}, {}))
    assert insecure.ssl_context().verify_mode == ssl.CERT_NONE
    assert insecure.cluster_identity().startswith("server:")


@pytest.mark.parametrize(("cluster", "user", "message"), [
    ({"server": "http://10.0.0.1:6443"}, {}, "is not an https:// URL"),
    ({"server": "https://10.0.0.1:99999"}, {}, "is not an https:// URL"),
    ({"server": "https://10.0.0.1:6443", "certificate-authority-data": "!!"}, {}, "not base64"),
    ({"server": "https://10.0.0.1:6443", "certificate-authority": "/nonexistent/ca"}, {}, "No such file"),
    ({"server": "https://10.0.0.1:6443"}, {"client-certificate": "/x"}, "needs its key"),
    ({"server": "https://10.0.0.1:6443"}, {"token": "s3cret-token"}, "only client certificates"),
])
def test_bad_kubeconfigs_are_one_line_user_errors(tmp_path: Path, cluster: dict[str, Any],
                                                  user: dict[str, Any], message: str) -> None:
    path = write_kubeconfig(tmp_path / "k.conf", cluster, user)
    with pytest.raises(UserError) as exc:
        kubeconfig.load(path)
    text = str(exc.value)
    assert message in text and "\n" not in text and path in text
    assert "s3cret-token" not in text


def test_not_a_kubeconfig(tmp_path: Path) -> None:
    for text, message in (("a: [", "not YAML"), ("[]", "not a kubeconfig"), ("{}", "no current-context")):
        (tmp_path / "k").write_text(text)
        with pytest.raises(UserError, match=message):
            kubeconfig.load(str(tmp_path / "k"))


# -- one polling round, against a fake fetch ---------------------------------------------------


class FakeFetch:
    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}  # "server" or "ip:port" -> (status, body) or an exception
        self.asked: list[str] = []

    async def __call__(self, kc: kubeconfig.KubeConfig, address: Endpoint | None,
                       timeout: float) -> tuple[int, bytes]:
        where = "server" if address is None else str(address)
        self.asked.append(where)
        answer = self.answers.get(where, ConnectionRefusedError(111, "Connection refused"))
        if isinstance(answer, BaseException):
            raise answer
        return answer  # type: ignore[no-any-return]


def discovery(tmp_path: Path, fetch: FakeFetch, pki: dict[str, Path]) -> Discovery:
    kc = kubeconfig.load(write_kubeconfig(
        tmp_path / "kubelet.conf", {"server": "https://10.103.97.2:6443",
                                    "certificate-authority": str(pki["ca"])}, {}))
    cfg = Config((VS4,), discover_interval=30, state_dir=str(tmp_path / "state"))
    return Discovery(kc, cfg, fetch, rng=random.Random(1), wall=lambda: 1.8e9)


def test_a_round_logs_once_per_episode_counts_every_failure_and_backs_off(
        tmp_path: Path, pki: dict[str, Path]) -> None:
    fetch = FakeFetch()
    d = discovery(tmp_path, fetch, pki)
    known = [ep("10.0.0.1:6443"), ep("10.0.0.2:6443")]

    async def rounds(n: int) -> list[Any]:
        return [await d.poll(known) for _ in range(n)]

    fetch.answers["server"] = (403, b'{"kind":"Status"}')
    with capture_logs() as logs:
        results = asyncio.run(rounds(3))
    assert [r.members for r in results] == [None] * 3
    assert [(e["event"], e["reason"]) for e in logs] == [
        ("discovery failed: keeping the current real servers", "forbidden")]
    assert "Node authorizer" in logs[0]["hint"] and logs[0]["detail"] == "HTTP 403"
    assert d.failures == {"forbidden": 3}
    waits = [d.next_wait() for _ in range(50)]
    assert min(waits) >= 30 * 8 * 0.8 and max(waits) <= 30 * 8 * 1.2  # 3 in a row: 2**3
    fetch.answers["server"] = (200, endpoints())  # a new episode: empty subsets
    with capture_logs() as logs:
        asyncio.run(rounds(2))
    assert [e["reason"] for e in logs] == ["empty"]
    for _ in range(10):
        asyncio.run(rounds(1))
    assert max(d.next_wait() for _ in range(50)) <= 300 * 1.2  # capped at 5 minutes
    fetch.answers["server"] = (200, endpoints("10.0.0.1", "10.0.0.3"))
    with capture_logs() as logs:
        (ok,) = asyncio.run(rounds(1))
    assert [str(m) for m in ok.members] == ["10.0.0.1:6443", "10.0.0.3:6443"] and ok.via == "server"
    assert [e["event"] for e in logs] == ["discovery works again"]
    assert d.last_success == 1.8e9 and 24 <= d.next_wait() <= 36


def test_an_unreachable_server_is_bypassed_by_asking_the_members(
        tmp_path: Path, pki: dict[str, Path]) -> None:
    fetch = FakeFetch()
    d = discovery(tmp_path, fetch, pki)
    fetch.answers["10.0.0.2:6443"] = (200, endpoints("10.0.0.2", "10.0.0.5"))
    result = asyncio.run(d.poll([ep("10.0.0.1:6443"), ep("10.0.0.2:6443")]))
    assert fetch.asked == ["server", "10.0.0.1:6443", "10.0.0.2:6443"]
    assert result.via == "10.0.0.2:6443" and [str(m) for m in result.members or ()] == [
        "10.0.0.2:6443", "10.0.0.5:6443"]
    # A member whose certificate does not verify is an answer too, not "unreachable".
    fetch.asked.clear()
    fetch.answers["10.0.0.1:6443"] = ssl.SSLCertVerificationError(1, "certificate verify failed")
    result = asyncio.run(d.poll([ep("10.0.0.1:6443"), ep("10.0.0.2:6443")]))
    assert result.reason == "tls" and fetch.asked == ["server", "10.0.0.1:6443"]


def test_state_file_of_this_cluster_is_used_of_another_ignored(tmp_path: Path, pki: dict[str, Path]) -> None:
    fetch = FakeFetch()
    d = discovery(tmp_path, fetch, pki)
    assert d.load_state() is None  # none yet: nothing said
    d.save_state((ep("10.0.0.1:6443"), ep("10.0.0.7:6443")))
    assert Path(d.path) == Path(state_path(str(tmp_path / "state"), Config((VS4,))))
    assert not Path(d.path + ".tmp").exists()
    with capture_logs() as logs:
        assert [str(m) for m in d.load_state() or ()] == ["10.0.0.1:6443", "10.0.0.7:6443"]
    assert logs[0]["event"] == "members from the discovery state file"
    # The node was reset and joined to another cluster: same path, another CA.
    other = kubeconfig.load(write_kubeconfig(
        tmp_path / "other.conf", {"server": "https://10.103.97.2:6443",
                                  "certificate-authority": str(pki["other"])}, {}))
    d2 = Discovery(other, Config((VS4,), state_dir=str(tmp_path / "state")), fetch)
    with capture_logs() as logs:
        assert d2.load_state() is None
    assert [e["event"] for e in logs] == [
        "discovery state file is of another cluster (its CA differs): ignored"]
    Path(d.path).write_text("{broken")
    with capture_logs() as logs:
        assert d.load_state() is None
    assert [e["event"] for e in logs] == ["discovery state file unusable: ignored"]


def test_an_unwritable_state_dir_is_counted_and_discovery_goes_on(
        tmp_path: Path, pki: dict[str, Path]) -> None:
    fetch = FakeFetch()
    d = discovery(tmp_path, fetch, pki)
    (tmp_path / "state").write_text("a file where the directory should be")
    with capture_logs() as logs:
        d.save_state((ep("10.0.0.1:6443"),))
        d.save_state((ep("10.0.0.1:6443"),))
    assert len(logs) == 1 and d.failures == {"state": 2}


def test_the_state_file_follows_the_members_and_is_written_off_the_event_loop(
        tmp_path: Path, pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Written when the members change, not every round; and in a thread of its own, so that a
    disk that takes its time over the fsync stalls no probe (they share the event loop)."""
    d = discovery(tmp_path, FakeFetch(), pki)
    writes: list[tuple[str, str]] = []
    real_write = d._write_state

    def slow_write(state: State) -> None:
        time.sleep(0.3)  # a slow disk's fsync
        writes.append((threading.current_thread().name, ",".join(map(str, state.members))))
        real_write(state)

    monkeypatch.setattr(d, "_write_state", slow_write)
    one, two = (ep("10.0.0.1:6443"),), (ep("10.0.0.1:6443"), ep("10.0.0.7:6443"))

    async def rounds() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        for members in (one, one, two, two, one):
            await d.remember(members)
        task.cancel()
        return ticks

    ticks = asyncio.run(rounds())
    assert [m for _, m in writes] == ["10.0.0.1:6443", "10.0.0.1:6443,10.0.0.7:6443", "10.0.0.1:6443"]
    assert all(name == "lvscare-discovery" for name, _ in writes)
    assert ticks >= 45  # the loop kept running through 0.9 s of writes (10 ms ticks)
    assert [str(m) for m in d.load_state() or ()] == ["10.0.0.1:6443"]


def test_ipv6_members_address(tmp_path: Path) -> None:
    assert ipaddress.ip_address("fd00::2") in {m.ip for m in parse_endpoints(endpoints("fd00::2"))}
