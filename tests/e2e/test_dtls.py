"""The replication transport (brushtaild/net/dtls.py) with real DTLS between network
namespaces: site `a` on 198.18.0.1 (the link's server end), its peers on 198.18.0.2 and up
(the client end). Each transport's socket is opened inside its namespace; one thread drives
them all with select, as the daemon's loop will."""

import contextlib
import os
import random
import select
import shutil
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from OpenSSL import SSL

from brushtaild.config.model import Peer, Replication
from brushtaild.net.buffers import RCVBUF_BYTES
from brushtaild.net.dtls import (
    HANDSHAKE_TIMEOUT,
    MAX_PAYLOAD,
    MTU,
    QUEUE_LIMIT,
    SESSION_LIFETIME,
    DtlsTransport,
    Refusal,
    TransportError,
)
from brushtaild.replication import pki
from tests.e2e import netns

PORT = 7000
A_IP = netns.SERVER_IP  # 198.18.0.1
# Peers of `a`, each on an address of its own on the client end, and the certificate each
# presents: the good peer, then one refusal reason each.
PEER_IPS = {
    "b": "198.18.0.2",
    "c": "198.18.0.3",  # presents a certificate of another CA
    "d": "198.18.0.4",  # presents an expired certificate
    "e": "198.18.0.5",  # presents a revoked certificate
    "f": "198.18.0.6",  # presents a valid certificate naming another site
}
STRANGER_IP = "198.18.0.7"  # no peer of `a`


@dataclass
class Pki:
    root: Path
    ca: pki.Ca

    def site(self, name: str) -> Path:
        return self.root / name


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    now = datetime.now(UTC).replace(tzinfo=None)
    ca = pki.create_ca(root / "ca", "cluster", 30, now)
    for site in ("a", "b", "e"):
        ca.issue(site, 5, root / site, now)
    ca.issue("d", 1, root / "d", now - timedelta(days=10))
    ca.issue("impostor", 5, root / "f", now)
    foreign = pki.create_ca(root / "foreign-ca", "cluster", 30, now)
    foreign.issue("c", 5, root / "c", now)
    ca.revoke("e", now)
    for site in "cdef":
        # Every attacker trusts the real CA, so it is `a`, not the attacker, that refuses.
        (root / site / "ca.crt").unlink()
        shutil.copy(root / "ca" / "ca.crt", root / site / "ca.crt")
    return Pki(root, ca)


def settings(
    certs: Pki, site: str, peers: dict[str, str], *, port: int = PORT, crl: bool = True
) -> Replication:
    files = certs.site(site)
    return Replication(
        peers=tuple(Peer(name, IPv4Address(ip), PORT) for name, ip in peers.items()),
        listen=(IPv4Address("0.0.0.0"), port),
        ca=files / "ca.crt",
        certificate=files / "site.crt",
        key=files / "site.key",
        crl=certs.root / "ca" / "ca.crl" if crl else None,
    )


@pytest.fixture
def link() -> Iterator[netns.Link]:
    reason = netns.available()
    if reason is not None:
        pytest.skip(reason)
    with netns.Link(client_ip=PEER_IPS["b"]) as created:
        for ip in [*list(PEER_IPS.values())[1:], STRANGER_IP]:
            netns.ip("-n", created.client_ns, "addr", "add", f"{ip}/16", "dev", netns.CLIENT_IF)
        yield created


class LossySocket(socket.socket):
    """Drops the datagrams it is told to, by their number (from 1): lost flights."""

    lose: frozenset[int] = frozenset()
    sent = 0

    def sendto(self, data: bytes, address: object) -> int:  # type: ignore[override]
        self.sent += 1
        return len(data) if self.sent in self.lose else super().sendto(data, address)


def bound(ns: str, ip: str, lose: Sequence[int] = ()) -> LossySocket:
    with netns.in_netns(ns):
        sock = LossySocket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((ip, PORT))
    sock.lose = frozenset(lose)
    return sock


def transport(
    ns: str, site: str, ip: str, replication: Replication, lose: Sequence[int] = ()
) -> DtlsTransport:
    return DtlsTransport(site, replication, time.monotonic(), sock=bound(ns, ip, lose))


def site_a(link: netns.Link, certs: Pki) -> DtlsTransport:
    return transport(link.server_ns, "a", A_IP, settings(certs, "a", PEER_IPS))


def site_b(link: netns.Link, certs: Pki, lose: Sequence[int] = ()) -> DtlsTransport:
    return transport(link.client_ns, "b", PEER_IPS["b"], settings(certs, "b", {"a": A_IP}), lose)


Delivered = dict[str, list[tuple[str, bytes]]]


def pump(transports: Sequence[DtlsTransport], until: float, done: object = None) -> Delivered:
    """Drive every transport for `until` seconds at most, or until `done()` holds."""
    delivered: Delivered = {t.site: [] for t in transports}
    end = time.monotonic() + until
    while time.monotonic() < end and not (callable(done) and done(delivered)):
        now = time.monotonic()
        wait = min([t.next_deadline() for t in transports] + [end]) - now
        readable, _, _ = select.select(transports, [], [], max(0.0, min(wait, 0.05)))
        now = time.monotonic()
        for t in transports:
            if t in readable:
                delivered[t.site] += t.on_readable(now)
            if now >= t.next_deadline():
                t.on_timer(now)
    return delivered


def closing(*transports: DtlsTransport) -> None:
    for t in transports:
        t.close()


def test_mutual_handshake_and_payloads_both_ways(link: netns.Link, certs: Pki) -> None:
    a, b = site_a(link, certs), site_b(link, certs)
    try:
        # Deltas are never retransmitted: a burst must wait in the buffer, not be dropped
        # (the kernel reports twice what was set).
        with socket.socket(fileno=os.dup(a.fileno())) as sock:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 2 * RCVBUF_BYTES
        started = time.monotonic()
        assert a.send("b", b"from a", started)
        got = pump([a, b], 10, lambda d: d["b"])
        handshake = time.monotonic() - started
        assert got["b"] == [("a", b"from a")]
        assert a.peers_up() == ["b"] and b.peers_up() == ["a"]
        largest = bytes(range(256)) * 4 + b"x" * (MAX_PAYLOAD - 1024)
        for payload in (b"from b", largest):
            assert b.send("a", payload, time.monotonic())
        got = pump([a, b], 5, lambda d: len(d["a"]) == 2)
        assert got["a"] == [("b", b"from b"), ("b", largest)]
        with pytest.raises(ValueError):
            b.send("a", largest + b"!", time.monotonic())
        # One record per payload, one datagram per record, within the MTU.
        before = b.counters.bytes_sent, b.counters.datagrams_sent
        b.send("a", b"x" * 1000, time.monotonic())
        pump([a, b], 5, lambda d: d["a"])
        overhead = b.counters.bytes_sent - before[0] - 1000
        assert b.counters.datagrams_sent == before[1] + 1
        assert overhead == MTU - MAX_PAYLOAD
        assert a.counters.handshakes == b.counters.handshakes == 1
        assert not any(a.counters.refused.values()) and not any(b.counters.refused.values())
        print(f"handshake and first payload {1000 * handshake:.1f} ms, {overhead} B a message")
    finally:
        closing(a, b)


def test_refused_certificates_deliver_nothing_and_are_counted(
    link: netns.Link, certs: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    a = site_a(link, certs)
    attackers = [
        transport(
            link.client_ns,
            name,
            PEER_IPS[name],
            settings(certs, name, {"a": A_IP}, crl=False),
        )
        for name in "cdef"
    ]
    try:
        for attacker in attackers:
            assert attacker.send("a", b"forged lease", time.monotonic())
        got = pump(
            [a, *attackers],
            10,
            lambda _: (
                sum(a.counters.refused.values()) >= 4
                and not any(t.handshaking() for t in attackers)
            ),
        )
        assert got["a"] == []
        assert a.peers_up() == [] and a.handshaking() == []
        refused = {reason: n for reason, n in a.counters.refused.items() if n}
        assert refused == {
            Refusal.FOREIGN_CA: 1,
            Refusal.EXPIRED: 1,
            Refusal.REVOKED: 1,
            Refusal.NAME_MISMATCH: 1,
        }
        # The journal names each, once per peer and reason.
        reasons = ("foreign_ca", "expired", "revoked", "name_mismatch")
        for name, reason in zip("cdef", reasons, strict=True):
            line = f"handshake with {name} ({PEER_IPS[name]}:{PORT}) failed: {reason}"
            assert caplog.text.count(line) == 1
        # Each attacker heard why (an alert) and dropped what it had queued.
        for attacker in attackers:
            assert attacker.peers_up() == []
            assert attacker.counters.refused[Refusal.PEER_REFUSED] == 1
            assert attacker.counters.payloads_dropped == 1
        # Nor does `a` accept them when it dials.
        for name in "cdef":
            a.send(name, b"lease", time.monotonic())
        pump(
            [a, *attackers],
            10,
            lambda _: sum(a.counters.refused.values()) >= 8 and not a.handshaking(),
        )
        assert a.peers_up() == []
        assert {reason: n for reason, n in a.counters.refused.items() if n} == {
            reason: 2 for reason in refused
        }
    finally:
        closing(a, *attackers)


def client_hello(cookie_from: bytes | None = None) -> tuple[SSL.Connection, bytes]:
    """A DTLS client's first ClientHello (no certificate needed to say hello)."""
    conn = SSL.Connection(SSL.Context(SSL.DTLS_METHOD), None)
    conn.set_ciphertext_mtu(MTU)
    conn.set_connect_state()
    with pytest.raises(SSL.WantReadError):
        conn.do_handshake()
    return conn, conn.bio_read(65535)


def test_spoofed_sources_get_a_cookie_and_leave_no_state(link: netns.Link, certs: Pki) -> None:
    a = site_a(link, certs)
    # Sockets on peers' addresses that never run DTLS: a spoofer, as far as `a` can tell.
    spoof_b = bound(link.client_ns, PEER_IPS["b"])
    spoof_c = bound(link.client_ns, PEER_IPS["c"])
    stranger = bound(link.client_ns, STRANGER_IP)
    try:
        spoof_b.settimeout(5)
        conn, hello = client_hello()
        spoof_b.sendto(hello, (A_IP, PORT))
        pump([a], 0.5)
        verify_request = spoof_b.recv(65535)
        assert len(verify_request) < len(hello) / 2  # no amplification
        assert a.handshaking() == [] and a.peers_up() == []
        # Echoed from another peer's address, the cookie is refused, and no state is made.
        conn.bio_write(verify_request)
        with pytest.raises(SSL.WantReadError):
            conn.do_handshake()
        with_cookie = conn.bio_read(65535)
        spoof_c.sendto(with_cookie, (A_IP, PORT))
        hello_header = b"\x16\xfe\xfd\0\0" + bytes(8) + b"\x01"
        for garbage in (hello_header + b"\xff" * 60, b"\x17" + b"\xff" * 40, b"junk"):
            spoof_c.sendto(garbage, (A_IP, PORT))
        stranger.sendto(hello, (A_IP, PORT))
        pump([a], 0.5)
        assert a.counters.refused[Refusal.BAD_COOKIE] == 1
        assert a.counters.refused[Refusal.UNKNOWN_PEER] == 1
        # The datagram of type 23 made `a` dial c (it may hold a session `a` forgot):
        # that is the one handshake in progress, and `a` sent nothing to the stranger.
        assert a.handshaking() == ["c"]
        assert a.counters.handshakes == 0
    finally:
        closing(a)
        for sock in (spoof_b, spoof_c, stranger):
            sock.close()


def test_lost_flights_are_retransmitted_on_timer(link: netns.Link, certs: Pki) -> None:
    # a's ClientHello is lost; then b's first datagram after its HelloVerifyRequest, part of
    # its certificate flight: both ends must retransmit, driven by on_timer alone.
    a = transport(link.server_ns, "a", A_IP, settings(certs, "a", PEER_IPS), lose=[1])
    b = site_b(link, certs, lose=[2])
    try:
        started = time.monotonic()
        a.send("b", b"despite loss", started)
        got = pump([a, b], 20, lambda d: d["b"])
        assert got["b"] == [("a", b"despite loss")]
        assert time.monotonic() - started > 1.0  # not before OpenSSL's first timeout
        assert a.peers_up() == ["b"]
    finally:
        closing(a, b)


def test_a_reloaded_crl_closes_the_revoked_peer(
    link: netns.Link, certs: Pki, tmp_path: Path
) -> None:
    a, b = site_a(link, certs), site_b(link, certs)
    try:
        a.send("b", b"hello", time.monotonic())
        pump([a, b], 10, lambda d: d["b"])
        assert a.peers_up() == ["b"]
        # A CA of its own, so revoking b here leaves the module's CA as it was.
        shutil.copytree(certs.root / "ca", tmp_path / "ca")
        crl = pki.Ca.load(tmp_path / "ca")
        crl.revoke("b", datetime.now(UTC).replace(tzinfo=None))
        files = certs.site("a")
        closed = a.reload(
            files / "ca.crt", files / "site.crt", files / "site.key", tmp_path / "ca" / "ca.crl"
        )
        assert closed == ["b"] and a.peers_up() == []
        assert a.counters.refused[Refusal.REVOKED] == 1
        pump([a, b], 1)
        assert b.peers_up() == []  # its close_notify arrived
        b.send("a", b"still here", time.monotonic())
        got = pump([a, b], 10, lambda _: a.counters.refused[Refusal.REVOKED] == 2)
        assert got["a"] == [] and a.peers_up() == []
    finally:
        closing(a, b)


def test_both_dialling_at_once_make_one_session(link: netns.Link, certs: Pki) -> None:
    a, b = site_a(link, certs), site_b(link, certs)
    try:
        now = time.monotonic()
        a.send("b", b"from a", now)
        b.send("a", b"from b", now)
        got = pump([a, b], 10, lambda d: d["a"] and d["b"])
        assert got == {"a": [("b", b"from b")], "b": [("a", b"from a")]}
        assert a.peers_up() == ["b"] and b.peers_up() == ["a"]
        assert a.counters.handshakes == b.counters.handshakes == 1
    finally:
        closing(a, b)


@pytest.mark.parametrize("first", ["survivor", "restarted"])
@pytest.mark.parametrize("restarted", ["a", "b"])
def test_a_restarted_peer_is_back_at_the_next_message(
    link: netns.Link, certs: Pki, restarted: str, first: str
) -> None:
    sites = {"a": site_a(link, certs), "b": site_b(link, certs)}
    try:
        sites["a"].send("b", b"hello", time.monotonic())
        pump(list(sites.values()), 10, lambda d: d["b"])
        # Killed: no close_notify, so the survivor still holds its session.
        sites[restarted]._sock.close()
        sites[restarted] = site_a(link, certs) if restarted == "a" else site_b(link, certs)
        survivor = sites["b" if restarted == "a" else "a"]
        reborn = sites[restarted]
        transports = list(sites.values())
        if first == "survivor":
            # Its record reaches a site with no session: lost (the replication core
            # resends), but that site dials back at once.
            survivor.send(reborn.site, b"lost", time.monotonic())
            got = pump(transports, 10, lambda _: survivor.peers_up() and reborn.peers_up())
            assert got[reborn.site] == []
        # The restarted site's ClientHello replaces the survivor's stale session.
        for sender, receiver in ((reborn, survivor), (survivor, reborn)):
            sender.send(receiver.site, b"after restart", time.monotonic())
            got = pump(transports, 10, lambda d, r=receiver: d[r.site])
            assert got[receiver.site] == [(sender.site, b"after restart")]
        assert sites["a"].peers_up() == ["b"] and sites["b"].peers_up() == ["a"]
    finally:
        closing(*sites.values())


def test_sessions_are_renewed_after_their_lifetime(link: netns.Link, certs: Pki) -> None:
    a, b = site_a(link, certs), site_b(link, certs)
    try:
        a.send("b", b"hello", time.monotonic())
        pump([a, b], 10, lambda d: d["b"])
        # The dialling side's timer, an hour on: it closes and dials again at once.
        later = time.monotonic() + SESSION_LIFETIME + 1
        assert a.next_deadline() <= later
        a.on_timer(later)
        assert a.handshaking() == ["b"]
        pump([a, b], 10, lambda _: a.peers_up() == ["b"] and b.peers_up() == ["a"])
        assert a.counters.handshakes == b.counters.handshakes == 2
        b.send("a", b"on the new session", time.monotonic())
        assert pump([a, b], 10, lambda d: d["a"])["a"] == [("b", b"on the new session")]
    finally:
        closing(a, b)


def test_an_absent_peer_bounds_the_queue_and_times_out(link: netns.Link, certs: Pki) -> None:
    a = site_a(link, certs)  # nobody runs b
    try:
        now = time.monotonic()
        sent = [a.send("b", b"%d" % i, now) for i in range(QUEUE_LIMIT + 3)]
        assert sent == [True] * QUEUE_LIMIT + [False] * 3
        assert a.handshaking() == ["b"]
        a.on_timer(now + HANDSHAKE_TIMEOUT)
        assert a.handshaking() == [] and a.peers_up() == []
        assert a.counters.refused[Refusal.TIMEOUT] == 1
        assert a.counters.payloads_dropped == QUEUE_LIMIT + 3
    finally:
        closing(a)


def test_a_reload_with_unusable_files_keeps_the_old_ones(
    link: netns.Link, certs: Pki, tmp_path: Path
) -> None:
    a, b = site_a(link, certs), site_b(link, certs)
    try:
        files = certs.site("a")
        with pytest.raises(TransportError):
            a.reload(files / "ca.crt", files / "site.crt", tmp_path / "missing.key", None)
        with pytest.raises(TransportError):
            # b's key is not the key of a's certificate.
            a.reload(files / "ca.crt", files / "site.crt", certs.site("b") / "site.key", None)
        a.send("b", b"still a", time.monotonic())
        assert pump([a, b], 10, lambda d: d["b"])["b"] == [("a", b"still a")]
    finally:
        closing(a, b)


def raw_handshake(a: DtlsTransport, sock: socket.socket, ctx: SSL.Context) -> str:
    """Run a handshake with `a` from a bare pyOpenSSL client on `sock`; how it ended."""
    conn = SSL.Connection(ctx, None)
    conn.set_ciphertext_mtu(MTU)
    conn.set_connect_state()
    sock.setblocking(False)
    end = time.monotonic() + 5
    while time.monotonic() < end:
        try:
            conn.do_handshake()
        except SSL.WantReadError:
            pass
        except SSL.Error as exc:
            return f"refused: {exc}"
        else:
            return "completed"
        with contextlib.suppress(SSL.WantReadError):
            sock.sendto(conn.bio_read(65535), (A_IP, PORT))
        pump([a], 0.2)
        with contextlib.suppress(BlockingIOError):
            while True:
                conn.bio_write(sock.recv(65535))
    return "no answer"


def bare_context(max_version: int | None = None) -> SSL.Context:
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.set_options(SSL.OP_NO_QUERY_MTU)
    if max_version is not None:
        ctx.set_max_proto_version(max_version)
        ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    return ctx


def test_a_peer_without_a_certificate_or_with_dtls_1_0_is_refused(
    link: netns.Link, certs: Pki
) -> None:
    a = site_a(link, certs)
    sock = bound(link.client_ns, PEER_IPS["b"])
    try:
        # It does not check a's certificate; a refuses it for having none.
        assert "alert handshake failure" in raw_handshake(a, sock, bare_context())
        assert a.counters.refused[Refusal.NO_CERTIFICATE] == 1
        dtls_1_0 = 0xFEFF
        assert "alert protocol version" in raw_handshake(a, sock, bare_context(dtls_1_0))
        assert a.counters.refused[Refusal.OTHER] == 1
        assert a.peers_up() == [] and a.counters.handshakes == 0
    finally:
        closing(a)
        sock.close()


class RandomLoss(LossySocket):
    """Drops a fifth of what it sends, in an order its seed fixes."""

    rng = random.Random(0)

    def sendto(self, data: bytes, address: object) -> int:  # type: ignore[override]
        if self.rng.random() < 0.2:
            return len(data)
        return socket.socket.sendto(self, data, address)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(3))
def test_handshakes_complete_under_a_fifth_lost_each_way(
    link: netns.Link, certs: Pki, seed: int
) -> None:
    def lossy(ns: str, site: str, ip: str, peers: dict[str, str]) -> DtlsTransport:
        with netns.in_netns(ns):
            sock = RandomLoss(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((ip, PORT))
        sock.rng = random.Random(f"{seed} {site}")
        return DtlsTransport(site, settings(certs, site, peers), time.monotonic(), sock=sock)

    a = lossy(link.server_ns, "a", A_IP, {"b": PEER_IPS["b"]})
    b = lossy(link.client_ns, "b", PEER_IPS["b"], {"a": A_IP})
    try:
        # As the replication core will: send again whenever no handshake is under way. A
        # run of losses can outlast HANDSHAKE_TIMEOUT; the next attempt starts afresh.
        end = time.monotonic() + 4 * HANDSHAKE_TIMEOUT
        while not (a.peers_up() and b.peers_up()) and time.monotonic() < end:
            if not a.handshaking():
                a.send("b", b"x", time.monotonic())
            pump([a, b], 1.0, lambda _: a.peers_up() and b.peers_up())
        assert a.peers_up() == ["b"] and b.peers_up() == ["a"]
        refused = {r: n for r, n in (a.counters.refused | b.counters.refused).items() if n}
        assert set(refused) <= {Refusal.TIMEOUT}
    finally:
        closing(a, b)
