"""The control socket (daemon/control.py) and its commands (daemon/commands.py), served by
a real engine and lease store inside the daemon of test_daemon_loop (fake packet socket)."""

import grp
import json
import logging
import os
import selectors
import socket
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from brushtaild.cli import main as cli_main
from brushtaild.daemon import clock, main
from brushtaild.daemon import control as control_module
from brushtaild.daemon.commands import select_leases
from brushtaild.daemon.control import MAX_CONNECTIONS, MAX_REQUEST, TIMEOUT, ControlServer
from brushtaild.daemon.main import Daemon, Signals
from brushtaild.dhcp.codec import parse
from brushtaild.dhcp.constants import MessageType
from brushtaild.dhcp.options import format_ip, format_mac
from brushtaild.engine.leases import Lease, LeaseState
from brushtaild.net.packet_io import Received
from brushtaild.store.lease_store import StoreError, read_snapshot
from brushtaild.xdp import maps
from brushtaild.xdp.fastpath import Renewal
from tests.engine_helpers import mac, request
from tests.unit.test_cli import EXAMPLE
from tests.unit.test_daemon_loop import FakeFastPath, FakeIO, daemon_config, frame

pytest_plugins = ["tests.unit.test_daemon_loop"]


class Served:
    """A ControlServer on its own selector, pumped by hand: the daemon's loop in small."""

    def __init__(self, server: ControlServer) -> None:
        self.server = server
        self.selector = selectors.DefaultSelector()
        server.open(self.selector)
        self.now = 0.0

    def pump(self) -> None:
        for _ in range(100):
            ready = self.selector.select(0)
            if not ready:
                return
            for key, events in ready:
                self.server.ready(key.data, events, self.now)

    def connect(self) -> socket.socket:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(self.server.path))
        client.settimeout(0.2)
        self.pump()
        return client

    def ask(self, client: socket.socket, payload: bytes) -> bytes:
        client.sendall(payload)
        self.pump()
        return _receive(client)

    def close(self) -> None:
        self.server.close()
        self.selector.close()


def _receive(client: socket.socket) -> bytes:
    data = b""
    try:
        while not data.endswith(b"\n"):
            chunk = client.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        pass
    return data


def _command(command: str, **args: Any) -> bytes:
    return json.dumps({"command": command, "args": args}).encode() + b"\n"


@pytest.fixture
def served(daemon: Daemon) -> Iterator[Served]:
    running = Served(daemon.control)
    yield running
    running.close()


def call(served: Served, command: str, **args: Any) -> Any:
    client = served.connect()
    try:
        return json.loads(served.ask(client, _command(command, **args)))
    finally:
        client.close()


def result(served: Served, command: str, **args: Any) -> Any:
    answer = call(served, command, **args)
    assert answer["ok"], answer
    return answer["result"]


def bind(daemon: Daemon, io: FakeIO, n: int) -> int:
    """DORA for client `n` through the daemon's batches; the address it was given."""
    io.batches.append(Received(frames=[frame(request(MessageType.DISCOVER, n))]))
    daemon._serve_batch()
    offered = parse(io.sent[-1][0]).yiaddr
    req = request(MessageType.REQUEST, n, requested=offered, server_id=daemon.config.server_id)
    io.batches.append(Received(frames=[frame(req)]))
    daemon._serve_batch()
    assert io.sent_types()[-1] is MessageType.ACK
    return offered


# -- commands --------------------------------------------------------------------------------


def test_status_shows_site_paths_pools_rates_and_peers(
    daemon: Daemon, io: FakeIO, served: Served
) -> None:
    bind(daemon, io, 1)
    daemon.rates.sample(clock.ticks() - 2.0, 0.0, 0.0)
    status = result(served, "status")
    assert status["site"] == "edge-a"
    assert status["fastpath"] == {"state": "disabled"}
    assert status["slowpath"] == {"state": "up"}
    assert status["pools"][0]["assigned"] == 1
    assert status["rates"]["interval"] == pytest.approx(2.0, abs=0.5)
    assert status["rates"]["slow"] == pytest.approx(2 / status["rates"]["interval"], abs=0.1)
    assert status["rates"]["fast"] == 0.0
    assert status["peers"]["peers"] == []
    assert status["last_reload"] is None


def test_pools_count_size_assigned_declined_free(
    daemon: Daemon, io: FakeIO, served: Served
) -> None:
    address = bind(daemon, io, 1)
    bind(daemon, io, 2)
    decline = request(MessageType.DECLINE, 1, requested=address, server_id=daemon.config.server_id)
    io.batches.append(Received(frames=[frame(decline)]))
    daemon._serve_batch()
    [pool] = result(served, "pools")
    assert pool == {
        "pool": "residential",
        "subnet": "198.18.0.0/16",
        "size": 10,
        "assigned": 2,
        "declined": 1,
        "free": 8,
        "utilization": 0.2,
    }


def test_leases_filter_and_count_every_match(daemon: Daemon, io: FakeIO, served: Served) -> None:
    addresses = [bind(daemon, io, n) for n in range(1, 5)]
    listed = result(served, "leases", limit=2)
    assert listed["matched"] == 4
    assert [row["address"] for row in listed["leases"]] == [format_ip(a) for a in addresses[:2]]
    by_mac = result(served, "leases", mac=format_mac(mac(3)))
    assert [row["address"] for row in by_mac["leases"]] == [format_ip(addresses[2])]
    by_address = result(served, "leases", address=format_ip(addresses[1]))
    assert by_address["leases"][0]["mac"] == format_mac(mac(2))
    assert result(served, "leases", state="released")["matched"] == 0
    assert result(served, "leases", pool="residential", state="bound")["matched"] == 4
    # Local clients: no relay, so no circuit-id stashed.
    assert result(served, "leases", circuit_id="eth0/1/2")["matched"] == 0
    assert result(served, "leases", site="edge-z")["matched"] == 0
    assert not call(served, "leases", state="sleeping")["ok"]
    assert not call(served, "leases", mac="zz")["ok"]
    assert not call(served, "leases", limit=0)["ok"]


def test_lease_release_revokes_on_disk_and_the_client_is_naked(
    daemon: Daemon, io: FakeIO, served: Served
) -> None:
    address = bind(daemon, io, 1)
    shown = result(served, "lease-show", target=format_mac(mac(1)))
    assert [row["state"] for row in shown] == ["bound"]
    assert result(served, "lease-release", target=format_ip(address)) == {
        "revoked": [format_ip(address)]
    }
    [stored] = read_snapshot(daemon.config.state_dir)
    assert stored.state is LeaseState.REVOKED
    renew = request(MessageType.REQUEST, 1, ciaddr=address)
    io.batches.append(Received(frames=[frame(renew)]))
    daemon._serve_batch()
    assert io.sent_types()[-1] is MessageType.NAK
    # Nothing left to revoke, by address or MAC.
    assert call(served, "lease-release", target=format_mac(mac(1)))["error"].startswith(
        "no bound lease"
    )
    assert not call(served, "lease-show", target="198.18.9.9")["ok"]


def test_lease_release_first_records_what_the_kernel_renewed(
    tmp_path: Path,
    io: FakeIO,
    detached: Any,
    signals: Signals,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A renewal the kernel answered just before the release extended what the client was
    told: the revoked lease keeps the address until then, not until its older end."""
    calls: list[str] = []
    fast = FakeFastPath(calls)
    monkeypatch.setattr(main, "FastPath", lambda config, server: fast)
    daemon = Daemon(daemon_config(tmp_path, fastpath=True), tmp_path / "x.yaml", signals)
    served = Served(daemon.control)
    try:
        daemon._start_complete()
        address = bind(daemon, io, 1)
        told = time.time() + 7200
        fast.pending.append(Renewal(maps.Key(mac(1)).packed(), address, told))
        result(served, "lease-release", target=format_ip(address))
        [stored] = read_snapshot(daemon.config.state_dir)
        assert (stored.state, stored.expires) == (LeaseState.REVOKED, told)
    finally:
        served.close()
        daemon.store.close()


def test_reload_answers_applied_or_refused_and_why(
    tmp_path: Path, daemon: Daemon, served: Served
) -> None:
    refused = result(served, "reload")  # the config file does not exist
    assert refused["applied"] is False and "brushtail.yaml" in refused["detail"]
    assert result(served, "status")["last_reload"] == refused


# -- protocol --------------------------------------------------------------------------------


def test_garbage_is_answered_and_the_connection_goes_on(served: Served) -> None:
    client = served.connect()
    try:
        for garbage, error in (
            (b"\xff\xfe not json\n", "not a JSON request"),
            (b"[1, 2]\n", "a request is"),
            (b'{"command": "format-disk"}\n', "unknown command 'format-disk'"),
            (b'{"command": "pools", "args": 3}\n', "args must be an object"),
        ):
            answer = json.loads(served.ask(client, garbage))
            assert answer["ok"] is False and answer["error"].startswith(error)
        assert json.loads(served.ask(client, _command("peers")))["ok"]
    finally:
        client.close()


def test_requests_in_one_write_are_answered_in_order(served: Served) -> None:
    client = served.connect()
    try:
        client.sendall(_command("peers") + _command("pools"))
        served.pump()
        served.pump()
        lines = b""
        while lines.count(b"\n") < 2:
            lines += _receive(client)
            served.pump()
        first, second = (json.loads(line) for line in lines.splitlines())
        assert "peers" in first["result"] and isinstance(second["result"], list)
    finally:
        client.close()


def test_an_overlong_request_is_refused_and_the_connection_closed(served: Served) -> None:
    client = served.connect()
    try:
        client.sendall(b"x" * (MAX_REQUEST + 10))
        served.pump()
        answer = _receive(client)
        assert json.loads(answer)["error"] == f"request longer than {MAX_REQUEST} bytes"
        assert served.server.connections == 0
    finally:
        client.close()


def test_a_request_never_finished_is_closed_after_the_timeout(served: Served) -> None:
    client = served.connect()
    try:
        client.sendall(b'{"command": "sta')
        served.pump()
        served.server.expire(TIMEOUT - 1)
        assert served.server.connections == 1
        served.server.expire(TIMEOUT)
        assert served.server.connections == 0
        assert client.recv(10) == b""
    finally:
        client.close()


def test_connections_beyond_the_limit_are_turned_away(served: Served) -> None:
    clients = [served.connect() for _ in range(MAX_CONNECTIONS)]
    extra = served.connect()
    try:
        assert json.loads(_receive(extra))["error"].startswith("too many connections")
        assert served.server.connections == MAX_CONNECTIONS
    finally:
        for client in (*clients, extra):
            client.close()


def test_a_failing_command_is_an_error_answer_and_a_fatal_one_propagates(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_args: dict[str, Any]) -> object:
        raise KeyError("bug")

    def store_gone(_args: dict[str, Any]) -> object:
        raise StoreError("disk full")

    served = Served(
        ControlServer(
            tmp_path / "c.sock", {"broken": broken, "store": store_gone}, fatal=(StoreError,)
        )
    )
    try:
        client = served.connect()
        with caplog.at_level(logging.ERROR, logger="brushtaild.control"):
            answer = json.loads(served.ask(client, _command("broken")))
        assert answer == {"ok": False, "error": "internal error: KeyError('bug')"}
        assert "command 'broken' failed" in caplog.text
        client.sendall(_command("store"))
        with pytest.raises(StoreError):
            served.pump()
        client.close()
    finally:
        served.close()


# -- the socket file ------------------------------------------------------------------------


def test_socket_file_mode_stale_file_replaced_live_one_kept_removed_at_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "run" / "control.sock"
    monkeypatch.setattr(control_module, "GROUP", "no-such-group-brushtail-test")
    first = Served(ControlServer(path, {}))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(OSError, match="another running daemon's socket"):
        ControlServer(path, {}).open(selectors.DefaultSelector())
    # A daemon that died without closing: its file stays, nobody listens.
    assert first.server._listener is not None
    first.server._listener.close()
    first.server._listener = None
    second = Served(ControlServer(path, {}))
    assert path.exists()
    second.close()
    assert not path.exists()
    path.write_text("not a socket")
    with pytest.raises(OSError, match="not a socket"):
        ControlServer(path, {}).open(selectors.DefaultSelector())
    first.selector.close()


def test_the_socket_belongs_to_the_brushtail_group_when_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root may give it any group; anyone else, one they are in.
    group = next(g.gr_gid for g in grp.getgrall() if g.gr_gid) if os.geteuid() == 0 else os.getgid()
    monkeypatch.setattr(control_module, "GROUP", grp.getgrgid(group).gr_name)
    served = Served(ControlServer(tmp_path / "c.sock", {}))
    try:
        info = os.stat(tmp_path / "c.sock")
        assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o660, group)
    finally:
        served.close()


def test_a_daemon_whose_socket_cannot_be_made_serves_without_it(
    tmp_path: Path, signals: Signals, io: FakeIO, caplog: pytest.LogCaptureFixture, detached: Any
) -> None:
    path = tmp_path / "taken"
    path.write_text("someone else's file")
    config = replace(daemon_config(tmp_path), control_socket=path)
    daemon = Daemon(config, tmp_path / "x.yaml", signals)
    try:
        with selectors.DefaultSelector() as selector, caplog.at_level(logging.ERROR):
            daemon._open_control(selector)
        assert "the brushtail command cannot reach this daemon" in caplog.text
    finally:
        daemon.store.close()


# -- the brushtail command against it --------------------------------------------------------


@pytest.fixture
def looping(served: Served) -> Iterator[Served]:
    """The server pumped by a thread, as the daemon's loop would, while the CLI blocks."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            served.pump()
            time.sleep(0.001)

    thread = threading.Thread(target=loop)
    thread.start()
    yield served
    stop.set()
    thread.join()


def cli(served: Served, *argv: str) -> int:
    return cli_main([*argv, "--socket", str(served.server.path)])


def test_cli_commands_render_tables_and_json(
    daemon: Daemon, io: FakeIO, looping: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    address = format_ip(bind(daemon, io, 1))
    assert cli(looping, "status") == 0
    screen = capsys.readouterr().out
    assert "site         edge-a, brushtaild" in screen
    assert "fast path    disabled" in screen
    assert "peers        none configured" in screen
    assert "POOL         SUBNET         SIZE  ASSIGNED  DECLINED  FREE   USED" in screen
    assert "residential  198.18.0.0/16    10         1         0     9  10.0%" in screen
    assert cli(looping, "leases") == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[1].startswith(f"{address}  bound") and listed[-1] == (
        "1 of 1 matching leases shown"
    )
    assert cli(looping, "leases", "--circuit-id", "7") == 0
    assert capsys.readouterr().out.splitlines()[-1] == "0 of 0 matching leases shown"
    assert cli(looping, "leases", "--vlan", "7") == 0
    assert capsys.readouterr().out.splitlines()[-1] == "0 of 0 matching leases shown"
    for argv in (("status",), ("pools",), ("peers",), ("leases", "--mac", format_mac(mac(1)))):
        assert cli(looping, *argv, "--json") == 0
        json.loads(capsys.readouterr().out)
    assert cli(looping, "lease", "show", address) == 0
    assert "bound" in capsys.readouterr().out
    assert cli(looping, "lease", "release", format_mac(mac(1))) == 0
    assert capsys.readouterr().out.startswith(f"revoked {address}: the client's next request")
    assert cli(looping, "lease", "release", address) == 1
    assert capsys.readouterr().err == f"brushtaild: no bound lease of {address}\n"
    assert cli(looping, "sites", "evict", "edge-b") == 1
    assert capsys.readouterr().err == (
        "brushtaild: eviction of edge-b refused: replication is not configured\n"
    )
    assert cli(looping, "peers") == 0
    assert capsys.readouterr().out == "none configured (no replication section in the config)\n"
    assert cli(looping, "reload") == 1  # no config file where the daemon looks
    assert capsys.readouterr().out.startswith("refused, the running config is kept: ")
    assert cli(looping, "reload", "--json") == 1
    assert json.loads(capsys.readouterr().out)["applied"] is False


@pytest.mark.parametrize(
    "argv",
    [
        ("status",),
        ("leases",),
        ("lease", "show", "198.18.1.1"),
        ("lease", "release", "198.18.1.1"),
        ("pools",),
        ("peers",),
        ("sites", "evict", "edge-b"),
        ("reload",),
    ],
)
def test_cli_without_a_daemon_says_so_and_exits_3(
    tmp_path: Path, argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "control.sock"
    config = tmp_path / "brushtail.yaml"
    config.write_text(EXAMPLE.read_text() + f"control_socket: {path}\n")
    assert cli_main([*argv, "--config", str(config)]) == 3
    assert capsys.readouterr().err == f"brushtaild is not running: nothing answers on {path}\n"


def test_leases_filter_by_vlan_outer_or_inner() -> None:
    def on(address: int, vlans: tuple[int, ...]) -> Lease:
        return Lease(address, b"\x01" + mac(address), mac(address), "residential",
                     LeaseState.BOUND, 2e9, 1e9, vlans=vlans)  # fmt: skip

    leases = [on(1, ()), on(2, (100,)), on(3, (100, 7)), on(4, (7,))]
    answer = select_leases(leases, {"vlan": 7}, 1e9, "edge-a")
    assert [row["vlans"] for row in answer["leases"]] == ["100.7", "7"]
    assert select_leases(leases, {"vlan": 100}, 1e9, "edge-a")["matched"] == 2


def test_leases_filter_by_the_stashed_circuit_id() -> None:
    def relayed(address: int, relay_info: bytes) -> Lease:
        return Lease(address, b"\x01" + mac(address), mac(address), "residential",
                     LeaseState.BOUND, 2e9, 1e9, relay_info=relay_info)  # fmt: skip

    leases = [
        relayed(1, b""),
        relayed(2, bytes.fromhex("0109") + b"olt1/1/3:" + bytes.fromhex("0203") + b"cpe"),
        relayed(3, bytes.fromhex("0102ff00")),
    ]
    answer = select_leases(leases, {"circuit_id": "olt1/1/3:"}, 1e9, "edge-a")
    assert [(row["circuit_id"], row["remote_id"]) for row in answer["leases"]] == [
        ("olt1/1/3:", "cpe")
    ]
    binary = select_leases(leases, {"circuit_id": "0xff00"}, 1e9, "edge-a")
    assert [row["circuit_id"] for row in binary["leases"]] == ["0xff00"]
    assert select_leases(leases, {}, 1e9, "edge-a")["leases"][0]["circuit_id"] == ""
