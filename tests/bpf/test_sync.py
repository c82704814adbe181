"""MapSync's whole-map operations against the real program: a reload's rebuild (new
templates, entries rewritten) and a restarted daemon adopting the pinned maps. After each,
the kernel answers exactly as the engine of the moment does."""

from dataclasses import replace

from brushtaild.dhcp.codec import encode
from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.engine.server import Server
from brushtaild.xdp import maps
from brushtaild.xdp.sync import MapSync
from tests.bpf.harness import (
    SERVER_MAC,
    XDP_TX,
    Fastpath,
    assert_same_reply,
    client_message,
)
from tests.engine_helpers import make_pool

CLIENTS = [bytes.fromhex(f"02b7000006{i:02x}") for i in range(1, 6)]
PRLS = [bytes([1, 3, 6]), bytes([1, 3, 6, 15, 28]), None, b"", bytes([1, 3, 6])]


def bind_all(fastpath: Fastpath) -> None:
    for mac, prl in zip(CLIENTS, PRLS, strict=True):
        options: dict[int, bytes] = {} if prl is None else {OptionCode.PARAMETER_REQUEST_LIST: prl}
        fastpath.bind(mac, options=options)


def assert_answers_like_the_engine(fastpath: Fastpath) -> None:
    for mac, prl in zip(CLIENTS, PRLS, strict=True):
        extra: dict[int, bytes] = {} if prl is None else {OptionCode.PARAMETER_REQUEST_LIST: prl}
        frame = fastpath.frame(
            encode(client_message(MessageType.DISCOVER, mac, extra=extra)), mac=mac
        )
        run = fastpath.run(frame)
        assert run.retval == XDP_TX
        assert_same_reply(run, frame, fastpath.slow_path(frame, apply=False))


def test_reload_rebuilds_templates_and_entries(fastpath: Fastpath) -> None:
    """A new config (other lease time, domain and DNS) is reconciled as the daemon's
    reload does: every entry then answers with the new options."""
    bind_all(fastpath)
    assert_answers_like_the_engine(fastpath)
    old = fastpath.config
    residential = replace(
        make_pool(lease_time=7200), domain="reloaded.example", dns_servers=(0xC6120035,)
    )
    fastpath.config = replace(old, pools=(residential, *old.pools[1:]))
    fastpath.server = fastpath.server.reconfigured(fastpath.config, fastpath.now)
    fastpath.sync.server = fastpath.server
    fastpath.sync.configure(fastpath.config, SERVER_MAC, 0, 0)
    written, removed = fastpath.sync.reconcile(fastpath.now)
    assert (written, removed) == (len(CLIENTS), 0)
    for mac in CLIENTS:
        entry = fastpath.entry(maps.Key(mac))
        assert entry is not None and entry.lease_time == 7200
    assert_answers_like_the_engine(fastpath)


def test_restarted_daemon_adopts_the_maps(fastpath: Fastpath) -> None:
    """A new engine loaded from the same leases (as from the store) and a new MapSync over
    the pinned maps: reconcile keeps every entry, and the kernel answers as the new engine.
    An entry no lease backs any more is removed."""
    bind_all(fastpath)
    stale = maps.Key(bytes.fromhex("02b7000006ff"))
    fastpath.put_entry(stale, fastpath.entry(maps.Key(CLIENTS[0])) or maps.LeaseEntry())
    fastpath.server = Server(fastpath.config, fastpath.server.leases(), fastpath.now)
    fastpath.sync = MapSync(fastpath.program, fastpath.server)
    fastpath.sync.configure(fastpath.config, SERVER_MAC, 0, 0)
    assert fastpath.sync.reconcile(fastpath.now) == (len(CLIENTS), 1)
    assert set(fastpath.entries()) == {maps.Key(mac) for mac in CLIENTS}
    assert_answers_like_the_engine(fastpath)
