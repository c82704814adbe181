"""DTLS 1.2 between sites: one non-blocking UDP socket, one session per configured peer.

The replication core hands payloads to `send` and takes them from `on_readable`; this module
owns the socket and the sessions, and nothing of time but what the caller passes in. The
daemon's selector loop calls `on_readable(now)` when `fileno()` is readable and
`on_timer(now)` once `next_deadline()` has passed.

Every session is mutually authenticated: each side presents a certificate of the cluster CA
(the only trust anchor, never the system's), valid, not on the CRL, naming in its CN and a
SAN dNSName the site configured for the address it speaks from. There is no plaintext path
and no protocol older than DTLS 1.2. OpenSSL runs on memory BIOs (pyOpenSSL Connections
with no socket), so one socket serves every peer, demultiplexed by source address: a
datagram from any other address is dropped unanswered. A new ClientHello first gets a
stateless HelloVerifyRequest (DTLSv1_listen), whose cookie is an HMAC of its source address
under a secret rotated every COOKIE_ROTATION seconds: a spoofed source costs one 44-byte
answer and leaves no state.

pyOpenSSL 23.0 (Debian 12) lacks the DTLS timer calls; cryptography's binding has them, and
the three helpers below are the only users of pyOpenSSL's private members.
"""

import contextlib
import hashlib
import hmac
import logging
import os
import socket
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from brushtaild.config.model import Peer, Replication
from brushtaild.daemon.throttled_log import ThrottledLog
from brushtaild.net.buffers import grow_receive_buffer
from brushtaild.replication.pki import PkiError, certificate_site, load_crl

MTU = 1200  # UDP payload of every datagram: no IP fragmentation on any sane path
# One record per payload: AEAD overhead is 13 bytes of header, 8 of explicit nonce and 16
# of tag with AES-GCM, the ciphers CIPHERS allows.
MAX_PAYLOAD = MTU - 37
CIPHERS = b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256"
DTLS1_2 = 0xFEFD  # pyOpenSSL 23.0 has no constant for it
# A handshake not done by then is abandoned. OpenSSL retransmits a flight after 1, 3, 7 and
# 15 s, then only at 31 s: a fresh handshake, its timer back at 1 s, recovers sooner from a
# run of losses. (OpenSSL itself gives up after minutes.)
HANDSHAKE_TIMEOUT = 16.0
# The dialling side re-handshakes after this, so expiry and revocation are checked again
# against the files in force; the accepting side closes at twice it, in case it does not.
SESSION_LIFETIME = 3600.0
COOKIE_ROTATION = 60.0  # a cookie is good for one to two rotations
COOKIE_LENGTH = 16  # pyOpenSSL < 26 copies it into a 255-byte buffer unchecked: keep it short
QUEUE_LIMIT = 64  # payloads per peer held while its session is being set up
MAX_HANDSHAKES = 16  # handshakes in progress at once; sessions are bounded by the peers
READ_BATCH = 256  # datagrams read per wakeup, so one flood cannot hold the loop
LOG_INTERVAL = 60.0  # one line per peer and reason at most this often
_RECORD_HEADER = 13
_HANDSHAKE, _APPLICATION_DATA = 22, 23
_CLIENT_HELLO = 1

Address = tuple[str, int]
log = logging.getLogger(__name__)


class Refusal(StrEnum):
    """Why a handshake failed or a datagram was turned away (the metric's `reason`)."""

    FOREIGN_CA = "foreign_ca"  # the certificate does not chain to the cluster CA
    EXPIRED = "expired"  # not valid now (expired, or not yet valid)
    REVOKED = "revoked"  # on the CRL, at the handshake or after a reload
    NAME_MISMATCH = "name_mismatch"  # valid, but not the site configured for its address
    NO_CERTIFICATE = "no_certificate"  # the peer presented none
    BAD_COOKIE = "bad_cookie"  # a ClientHello with a cookie we did not give that address
    UNKNOWN_PEER = "unknown_peer"  # a datagram from an address no peer has
    PEER_REFUSED = "peer_refused"  # the peer's alert refused our certificate
    TIMEOUT = "timeout"  # no handshake within HANDSHAKE_TIMEOUT
    OTHER = "other"  # any other failure of a handshake


# X509_V_ERR_* codes, as the verify callback receives them.
_VERIFY_REFUSALS = {
    2: Refusal.FOREIGN_CA,  # unable to get issuer certificate
    7: Refusal.FOREIGN_CA,  # certificate signature failure
    18: Refusal.FOREIGN_CA,  # self-signed certificate
    19: Refusal.FOREIGN_CA,  # self-signed certificate in chain
    20: Refusal.FOREIGN_CA,  # unable to get local issuer certificate
    21: Refusal.FOREIGN_CA,  # unable to verify the first certificate
    9: Refusal.EXPIRED,  # certificate is not yet valid
    10: Refusal.EXPIRED,  # certificate has expired
    23: Refusal.REVOKED,  # certificate revoked
}


@dataclass(slots=True)
class TransportCounters:
    """What the transport did since it started; the daemon exports them (METRICS.md)."""

    refused: dict[Refusal, int] = field(default_factory=lambda: dict.fromkeys(Refusal, 0))
    handshakes: int = 0  # completed, both certificates accepted
    datagrams_sent: int = 0
    datagrams_received: int = 0
    bytes_sent: int = 0  # UDP payload bytes, handshakes included
    bytes_received: int = 0
    payloads_sent: int = 0
    payloads_received: int = 0
    payloads_dropped: int = 0  # queued for a peer whose session failed, or queue full
    send_errors: int = 0  # sendto failed (the datagram is lost; DTLS retransmits handshakes)


class TransportError(Exception):
    """The certificate, key, CA or CRL could not be used; nothing was changed."""


@dataclass(slots=True)
class _Tag:
    """What a Connection's callbacks need to know: where its datagrams come from, which
    site must be there, and why the verify callback refused, if it did."""

    address: Address
    site: str
    refusal: Refusal | None = None


@dataclass(slots=True, eq=False)
class _Session:
    peer: Peer
    address: Address
    conn: SSL.Connection
    dialled: bool  # we sent the ClientHello
    started: float
    established: float | None = None
    serial: int | None = None  # the peer certificate's, once established
    retransmit_at: float | None = None


# -- the only users of pyOpenSSL's private members -------------------------------------------


def _timer(conn: SSL.Connection) -> float | None:
    """Seconds until OpenSSL wants to retransmit, or None when no timer runs."""
    seconds, micros = _ffi.new("int64_t *"), _ffi.new("long *")
    if _lib.Cryptography_DTLSv1_get_timeout(conn._ssl, seconds, micros) != 1:
        return None
    return float(seconds[0]) + float(micros[0]) / 1e6


def _retransmit(conn: SSL.Connection) -> bool:
    """Let OpenSSL retransmit its last flight if its timer ran out; False once it gives up."""
    if _lib.DTLSv1_handle_timeout(conn._ssl) < 0:
        _lib.ERR_clear_error()  # else a later, unrelated call reports this error
        return False
    return True


def _pending(conn: SSL.Connection) -> int:
    """Bytes OpenSSL has written for the wire (reading an empty BIO raises instead)."""
    return int(_lib.BIO_ctrl_pending(conn._from_ssl))


# -- wire helpers -------------------------------------------------------------------------


def _datagrams(records: bytes) -> Iterator[bytes]:
    """OpenSSL's output cut into datagrams of whole records, at most MTU bytes each: a
    memory BIO keeps no datagram boundaries, so a flight comes out in one piece."""
    start = end = 0
    while end + _RECORD_HEADER <= len(records):
        size = _RECORD_HEADER + int.from_bytes(records[end + 11 : end + 13], "big")
        if end > start and end + size - start > MTU:
            yield records[start:end]
            start = end
        end += size
    if end > start:
        yield records[start:end]


def _is_client_hello(datagram: bytes) -> bool:
    """A ClientHello starting a new handshake: a handshake record of epoch 0."""
    return (
        len(datagram) > _RECORD_HEADER
        and datagram[0] == _HANDSHAKE
        and datagram[3:5] == b"\0\0"
        and datagram[_RECORD_HEADER] == _CLIENT_HELLO
    )


class DtlsTransport:
    """Sessions with the configured peers over one UDP socket (module docstring)."""

    def __init__(
        self, site: str, settings: Replication, now: float, sock: socket.socket | None = None
    ) -> None:
        """Bind `settings.listen` (or take `sock`, bound already) and load the files;
        raises TransportError or OSError."""
        self.site = site
        self.counters = TransportCounters()
        self._log = ThrottledLog(log, LOG_INTERVAL)
        self._peers = {peer.site: peer for peer in settings.peers}
        self._by_address = {(str(p.address), p.port): p for p in settings.peers}
        self._sessions: dict[str, _Session] = {}
        self._queues: dict[str, deque[bytes]] = {peer: deque() for peer in self._peers}
        self._secrets = [os.urandom(32), os.urandom(32)]  # current, previous
        self._rotate_at = now + COOKIE_ROTATION
        self._ctx = self._context(settings.ca, settings.certificate, settings.key, settings.crl)
        self._listener = self._connection(None)
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind((str(settings.listen[0]), settings.listen[1]))
            except OSError:
                sock.close()
                raise
        sock.setblocking(False)
        # Deltas are never retransmitted: one dropped here waits for anti-entropy (bench/
        # replication_lag.py lost thousands at the default buffer while A made 2,000/s).
        grow_receive_buffer(sock)
        self._sock = sock

    # -- the daemon's side ------------------------------------------------------------------

    def fileno(self) -> int:
        return self._sock.fileno()

    def peers_up(self) -> list[str]:
        """Sites with an established session, sorted."""
        return sorted(site for site, s in self._sessions.items() if s.established is not None)

    def handshaking(self) -> list[str]:
        """Sites a handshake is in progress with, sorted (at most MAX_HANDSHAKES)."""
        return sorted(site for site, s in self._sessions.items() if s.established is None)

    def on_readable(self, now: float) -> list[tuple[str, bytes]]:
        """Read what the socket holds (up to READ_BATCH datagrams); the payloads peers sent,
        as (site, payload), in arrival order."""
        delivered: list[tuple[str, bytes]] = []
        for _ in range(READ_BATCH):
            try:
                datagram, address = self._sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                # An ICMP error queued for the socket; the datagram it concerned is lost.
                continue
            self.counters.datagrams_received += 1
            self.counters.bytes_received += len(datagram)
            self._datagram(datagram, address, now, delivered)
        return delivered

    def send(self, peer_site: str, payload: bytes, now: float) -> bool:
        """Send `payload` (at most MAX_PAYLOAD bytes: one record, one datagram) to a peer;
        without a session, queue it (QUEUE_LIMIT) and start the handshake. False when the
        payload was dropped: the queue is full or the session failed. `peer_site` is a
        configured peer's (KeyError otherwise); a longer payload raises ValueError."""
        if len(payload) > MAX_PAYLOAD:
            raise ValueError(f"payload of {len(payload)} bytes; at most {MAX_PAYLOAD}")
        peer = self._peers[peer_site]
        session = self._sessions.get(peer_site)
        if session is not None and session.established is not None:
            return self._write(session, payload, now)
        queue = self._queues[peer_site]
        if len(queue) >= QUEUE_LIMIT:
            self.counters.payloads_dropped += 1
            return False
        queue.append(payload)
        if session is None:
            self._dial(peer, now)
        return True

    def disconnect(self, peer_site: str) -> None:
        """Close the session with a peer (close_notify); the next `send` dials again. For
        the replication core when a peer has gone silent."""
        session = self._sessions.get(peer_site)
        if session is not None:
            self._close(session)

    def next_deadline(self) -> float:
        """When `on_timer` has something to do."""
        deadlines = [self._rotate_at]
        for session in self._sessions.values():
            if session.established is None:
                deadlines.append(session.started + HANDSHAKE_TIMEOUT)
            else:
                deadlines.append(session.established + self._lifetime(session))
            if session.retransmit_at is not None:
                deadlines.append(session.retransmit_at)
        return min(deadlines)

    def on_timer(self, now: float) -> None:
        """Retransmit lost handshake flights, abandon handshakes past HANDSHAKE_TIMEOUT,
        re-handshake sessions past their lifetime, rotate the cookie secret."""
        if now >= self._rotate_at:
            self._secrets = [os.urandom(32), self._secrets[0]]
            self._rotate_at = now + COOKIE_ROTATION
        for session in list(self._sessions.values()):
            if session.established is None and now >= session.started + HANDSHAKE_TIMEOUT:
                self._fail(session, Refusal.TIMEOUT, now)
            elif session.established is not None and now >= session.established + (
                self._lifetime(session)
            ):
                self._close(session)
                if session.dialled:
                    self._dial(session.peer, now)
            elif session.retransmit_at is not None and now >= session.retransmit_at:
                if _retransmit(session.conn):
                    self._flush(session.conn, session.address)
                    self._arm(session, now)
                else:
                    self._fail(session, Refusal.TIMEOUT, now)

    def reload(self, ca: Path, certificate: Path, key: Path, crl: Path | None) -> list[str]:
        """Use these files for every handshake from now on, and close the sessions whose
        peer certificate the CRL revokes (counted as `revoked`); their sites, sorted. On
        TransportError the files in use stay."""
        ctx = self._context(ca, certificate, key, crl)
        revoked = self._revoked_serials(ca, crl)
        self._ctx = ctx
        self._listener = self._connection(None)
        closed = []
        for session in list(self._sessions.values()):
            if session.serial is not None and session.serial in revoked:
                self._close(session)
                self.counters.refused[Refusal.REVOKED] += 1
                closed.append(session.peer.site)
        return sorted(closed)

    def close(self) -> None:
        """Say goodbye to every peer and close the socket."""
        for session in list(self._sessions.values()):
            self._close(session)
        self._sock.close()

    # -- set-up -----------------------------------------------------------------------------

    def _context(self, ca: Path, certificate: Path, key: Path, crl: Path | None) -> SSL.Context:
        try:
            ctx = SSL.Context(SSL.DTLS_METHOD)
            ctx.set_min_proto_version(DTLS1_2)
            # The MTU is ours (set_ciphertext_mtu), there is nothing to renegotiate in place
            # (a new handshake replaces a session) and nothing to resume.
            ctx.set_options(
                SSL.OP_NO_QUERY_MTU
                | SSL.OP_NO_RENEGOTIATION
                | SSL.OP_NO_TICKET
                | SSL.OP_NO_COMPRESSION
            )
            ctx.set_cipher_list(CIPHERS)
            ctx.use_certificate_file(str(certificate))
            ctx.use_privatekey_file(str(key))
            ctx.check_privatekey()
            # The cluster CA and nothing else: never set_default_verify_paths().
            ctx.load_verify_locations(str(ca))
            if crl is not None:
                authority = x509.load_pem_x509_certificate(ca.read_bytes())
                store = ctx.get_cert_store()
                store.add_crl(crypto.CRL.from_cryptography(load_crl(crl, authority)))
                store.set_flags(crypto.X509StoreFlags.CRL_CHECK)
        except (SSL.Error, OSError, ValueError, PkiError) as exc:
            raise TransportError(f"cannot use {certificate}, {key}, {ca}: {exc}") from None
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        ctx.set_cookie_generate_callback(self._cookie)
        ctx.set_cookie_verify_callback(self._cookie_ok)
        return ctx

    @staticmethod
    def _revoked_serials(ca: Path, crl: Path | None) -> frozenset[int]:
        if crl is None:
            return frozenset()
        try:
            authority = x509.load_pem_x509_certificate(ca.read_bytes())
            return frozenset(r.serial_number for r in load_crl(crl, authority))
        except (OSError, ValueError, PkiError) as exc:
            raise TransportError(f"cannot use {crl}: {exc}") from None

    def _connection(self, tag: _Tag | None) -> SSL.Connection:
        conn = SSL.Connection(self._ctx, None)  # None: memory BIOs, no socket
        # Required with OP_NO_QUERY_MTU on a memory BIO, else the handshake dies.
        conn.set_ciphertext_mtu(MTU)
        conn.set_app_data(tag)
        if tag is None:
            conn.set_accept_state()
        else:
            conn.set_connect_state()
        return conn

    # -- callbacks (OpenSSL calls them inside do_handshake and DTLSv1_listen) ----------------

    def _verify(self, conn: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
        tag = cast(_Tag, conn.get_app_data())
        if not ok:
            tag.refusal = _VERIFY_REFUSALS.get(errno, Refusal.OTHER)
            return False
        if depth == 0 and certificate_site(cert.to_cryptography()) != tag.site:
            tag.refusal = Refusal.NAME_MISMATCH
            return False
        return True

    def _cookie_for(self, secret: bytes, address: Address) -> bytes:
        text = f"{address[0]}:{address[1]}".encode()
        return hmac.new(secret, text, hashlib.sha256).digest()[:COOKIE_LENGTH]

    def _cookie(self, conn: SSL.Connection) -> bytes:
        tag = cast(_Tag, conn.get_app_data())
        return self._cookie_for(self._secrets[0], tag.address)

    def _cookie_ok(self, conn: SSL.Connection, cookie: bytes) -> bool:
        tag = cast(_Tag, conn.get_app_data())
        if any(
            hmac.compare_digest(cookie, self._cookie_for(secret, tag.address))
            for secret in self._secrets
        ):
            return True
        self.counters.refused[Refusal.BAD_COOKIE] += 1
        return False

    # -- datagrams --------------------------------------------------------------------------

    def _datagram(
        self, datagram: bytes, address: Address, now: float, out: list[tuple[str, bytes]]
    ) -> None:
        peer = self._by_address.get(address)
        if peer is None:
            self.counters.refused[Refusal.UNKNOWN_PEER] += 1
            self._log.report(
                Refusal.UNKNOWN_PEER,
                f"replication: datagram from {address[0]}:{address[1]}, no peer's address, dropped",
                now,
            )
            return
        session = self._sessions.get(peer.site)
        if not _is_client_hello(datagram):
            if session is not None:
                self._feed(session, datagram, now, out)
            elif datagram[:1] == bytes([_APPLICATION_DATA]):
                # It holds a session we do not (we restarted): dial it, and its next
                # ClientHello check replaces its stale session.
                self._dial(peer, now)
            return
        if session is not None and session.established is None:
            if not session.dialled:
                # A retransmitted ClientHello of the handshake we are answering: OpenSSL
                # answers it with our flight again (a new session would then take the
                # peer's next flight for a stranger's).
                self._feed(session, datagram, now, out)
                return
            if self.site < peer.site:
                return  # both dialled at once: the lower site name keeps the client role
        # A new handshake: a peer we have no session with, or one that restarted or
        # re-keys. Only a ClientHello with our cookie for its address gets any state.
        self._accept(peer, address, datagram, now, out)

    def _accept(
        self,
        peer: Peer,
        address: Address,
        datagram: bytes,
        now: float,
        out: list[tuple[str, bytes]],
    ) -> None:
        if self._handshakes() >= MAX_HANDSHAKES:
            return
        listener = self._listener
        listener.set_app_data(_Tag(address, peer.site))
        listener.bio_write(datagram)
        try:
            listener.DTLSv1_listen()
        except SSL.WantReadError:
            self._flush(listener, address)  # a HelloVerifyRequest, or nothing for junk
            return
        except SSL.Error:
            self._listener = self._connection(None)
            self.counters.refused[Refusal.OTHER] += 1
            return
        self._listener = self._connection(None)
        # Whatever session the peer had with us (stale after its restart, or our own dial
        # it won the tie-break against) gives way; its queue is the peer's and stays.
        session = _Session(peer, address, listener, dialled=False, started=now)
        self._sessions[peer.site] = session
        self._advance(session, now, out)

    def _dial(self, peer: Peer, now: float) -> None:
        if self._handshakes() >= MAX_HANDSHAKES:
            return
        address = (str(peer.address), peer.port)
        session = _Session(
            peer, address, self._connection(_Tag(address, peer.site)), dialled=True, started=now
        )
        self._sessions[peer.site] = session
        self._advance(session, now, [])

    def _feed(
        self, session: _Session, datagram: bytes, now: float, out: list[tuple[str, bytes]]
    ) -> None:
        session.conn.bio_write(datagram)  # one whole datagram per write
        self._advance(session, now, out)

    def _advance(self, session: _Session, now: float, out: list[tuple[str, bytes]]) -> None:
        """Run the handshake or read payloads as far as the datagrams so far allow."""
        conn = session.conn
        try:
            if session.established is None:
                try:
                    conn.do_handshake()
                except SSL.WantReadError:
                    pass
                else:
                    self._established(session, now)
            while session.established is not None:
                try:
                    payload = conn.recv(65535)
                except SSL.WantReadError:
                    break
                self.counters.payloads_received += 1
                out.append((session.peer.site, payload))
        except SSL.ZeroReturnError:  # close_notify: the peer closed or re-keys
            self._flush(conn, session.address)
            self._forget(session)
            return
        except SSL.Error as exc:
            self._flush(conn, session.address)  # the alert that tells the peer why
            if session.established is None:
                self._fail(session, self._refusal(conn, exc), now)
            else:
                self._forget(session)
            return
        self._flush(conn, session.address)
        self._arm(session, now)

    def _established(self, session: _Session, now: float) -> None:
        # The verify callback has checked the chain, the CRL and the name.
        certificate = session.conn.get_peer_certificate()
        session.serial = certificate.get_serial_number() if certificate is not None else None
        session.established = now
        self.counters.handshakes += 1
        queue = self._queues[session.peer.site]
        while queue and session.established is not None:
            self._write(session, queue.popleft(), now)

    def _write(self, session: _Session, payload: bytes, now: float) -> bool:
        try:
            session.conn.send(payload)
        except SSL.Error:
            self._forget(session)
            self.counters.payloads_dropped += 1
            return False
        self.counters.payloads_sent += 1
        self._flush(session.conn, session.address)
        return True

    def _flush(self, conn: SSL.Connection, address: Address) -> None:
        size = _pending(conn)
        if not size:
            return
        for datagram in _datagrams(conn.bio_read(size)):
            try:
                self._sock.sendto(datagram, address)
            except OSError:
                self.counters.send_errors += 1
                continue
            self.counters.datagrams_sent += 1
            self.counters.bytes_sent += len(datagram)

    def _arm(self, session: _Session, now: float) -> None:
        delay = _timer(session.conn)
        session.retransmit_at = None if delay is None else now + delay

    # -- endings ----------------------------------------------------------------------------

    @staticmethod
    def _refusal(conn: SSL.Connection, exc: SSL.Error) -> Refusal:
        tag = cast(_Tag | None, conn.get_app_data())
        if tag is not None and tag.refusal is not None:
            return tag.refusal
        text = str(exc)
        if "did not return a certificate" in text:
            return Refusal.NO_CERTIFICATE
        if "alert" in text:
            return Refusal.PEER_REFUSED
        return Refusal.OTHER

    def _fail(self, session: _Session, refusal: Refusal, now: float) -> None:
        self.counters.refused[refusal] += 1
        peer = session.peer
        self._log.report(
            f"{peer.site} {refusal}",
            f"replication: handshake with {peer.site} ({session.address[0]}:"
            f"{session.address[1]}) failed: {refusal}",
            now,
        )
        dropped = self._queues[session.peer.site]
        self.counters.payloads_dropped += len(dropped)
        dropped.clear()
        self._forget(session)

    def _close(self, session: _Session) -> None:
        with contextlib.suppress(SSL.Error):
            session.conn.shutdown()
        self._flush(session.conn, session.address)
        self._forget(session)

    def _forget(self, session: _Session) -> None:
        if self._sessions.get(session.peer.site) is session:
            del self._sessions[session.peer.site]
        session.retransmit_at = None

    def _handshakes(self) -> int:
        return sum(1 for s in self._sessions.values() if s.established is None)

    @staticmethod
    def _lifetime(session: _Session) -> float:
        return SESSION_LIFETIME if session.dialled else 2 * SESSION_LIFETIME
