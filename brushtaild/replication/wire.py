"""The replication messages as bytes: a compact, versioned binary codec.

Every message is one DTLS record's payload, at most MAX_PAYLOAD bytes, so it never needs IP
fragmentation; `encode_delta` splits what does not fit. Sites and pools travel as their
index in the layout both sides share (the header carries the layout's digest, and a peer
with another layout is refused before anything is merged). Big-endian throughout.

    header   magic "BR" | version u8 | kind u8 | layout digest 8 | sender's HLC
    hlc      wall ms u64 | logical u32 | site u8
    DELTA    count u16, binding* | count u16, (block u32, ownership)*
    DIGEST   lo u32 | hi u64 (exclusive, up to 2^32) | count u16, (bucket u32, hash u64)*
    DETAIL   bucket u32 | lo u32 | hi u64 | has register u8 [block u32, ownership] |
             count u16, (address u32, hash u64)*
    REQUEST  count u16, bucket u32* | count u16, address u32*

Decoding hostile bytes raises DecodeError and nothing else.
"""

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from brushtaild.engine.leases import LeaseState
from brushtaild.replication.blocks import BlockLayout
from brushtaild.replication.hlc import Hlc
from brushtaild.replication.state import Binding, Ownership

MAGIC = b"BR"
VERSION = 1
# Cleartext per DTLS record: 1100 bytes plus DTLS and UDP/IP overhead stays under a
# 1280-byte path MTU.
MAX_PAYLOAD = 1100
MAX_HWADDR = 16
MAX_VLANS = 2
# Digest and detail entries per message: the header, the range, a register and the count
# leave room for 84.
DIGEST_ENTRIES = 80
REQUEST_ENTRIES = 125  # buckets, and as many addresses

_HLC = struct.Struct(">QIB")
_HEADER = struct.Struct(">2sBB8s")
_OWNER = struct.Struct(">IIBBQQ")
_DIGEST_RANGE = struct.Struct(">IQ")
_DIGEST_ENTRY = struct.Struct(">IQ")
_STATES = {int(s): s for s in LeaseState}


class Kind(IntEnum):
    DELTA = 1
    DIGEST = 2
    REQUEST = 3
    DETAIL = 4


class DecodeError(Exception):
    """The bytes are not a replication message we can safely interpret."""


@dataclass(frozen=True, slots=True)
class Delta:
    sent: Hlc
    bindings: tuple[Binding, ...] = ()
    owners: tuple[tuple[int, Ownership], ...] = ()


@dataclass(frozen=True, slots=True)
class Digest:
    """The sender's bucket hashes for every bucket it has in [lo, hi); a bucket in that
    range it does not list, it has nothing in."""

    sent: Hlc
    lo: int
    hi: int
    buckets: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Detail:
    """The sender's hash of each binding it has at an address in [lo, hi) of `bucket`
    (an address it does not list, it has nothing at), and the block's register if it has
    one (sent with the first part of a bucket only)."""

    sent: Hlc
    bucket: int
    lo: int
    hi: int
    owner: Ownership | None
    bindings: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Request:
    """Send me all you have in these buckets (I have nothing there), and your bindings of
    these addresses."""

    sent: Hlc
    buckets: tuple[int, ...] = ()
    addresses: tuple[int, ...] = ()


Message = Delta | Digest | Detail | Request


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise DecodeError("truncated")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def unpack(self, fmt: struct.Struct) -> tuple[Any, ...]:
        return fmt.unpack(self.take(fmt.size))

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def short(self, limit: int = 255) -> bytes:
        n = self.u8()
        if n > limit:
            raise DecodeError(f"field of {n} bytes, at most {limit}")
        return self.take(n)

    def end(self) -> None:
        if self._pos != len(self._data):
            raise DecodeError(f"{len(self._data) - self._pos} bytes past the end")


def _short(value: bytes) -> bytes:
    if len(value) > 255:
        raise ValueError(f"field of {len(value)} bytes does not fit")
    return bytes((len(value),)) + value


def _entries(entries: tuple[tuple[int, int], ...]) -> bytes:
    packed = b"".join(_DIGEST_ENTRY.pack(k, h) for k, h in entries)
    return len(entries).to_bytes(2, "big") + packed


def _ids(ids: tuple[int, ...]) -> bytes:
    return len(ids).to_bytes(2, "big") + b"".join(k.to_bytes(4, "big") for k in ids)


def _read_ids(r: _Reader) -> tuple[int, ...]:
    return tuple(int.from_bytes(r.take(4)) for _ in range(r.u16()))


def _read_range(r: _Reader) -> tuple[int, int]:
    lo, hi = r.unpack(_DIGEST_RANGE)
    if not lo <= hi <= 1 << 32:
        raise DecodeError(f"range [{lo}, {hi})")
    return lo, hi


def _read_entries(r: _Reader) -> tuple[tuple[int, int], ...]:
    return tuple((k, h) for k, h in (r.unpack(_DIGEST_ENTRY) for _ in range(r.u16())))


class Codec:
    def __init__(self, layout: BlockLayout) -> None:
        self.layout = layout

    # Encoding -----------------------------------------------------------------------------

    def _hlc(self, stamp: Hlc) -> bytes:
        return _HLC.pack(stamp.wall, stamp.logical, self.layout.site_index[stamp.site])

    def _header(self, kind: Kind, sent: Hlc) -> bytes:
        return _HEADER.pack(MAGIC, VERSION, kind, self.layout.digest) + self._hlc(sent)

    def binding(self, b: Binding) -> bytes:
        """One binding's bytes (also what the anti-entropy digests hash)."""
        if len(b.hwaddr) > MAX_HWADDR or len(b.vlans) > MAX_VLANS:
            raise ValueError(f"binding of {b.address:#x} does not fit the codec")
        prl = b"\0" if b.prl is None else b"\1" + _short(b.prl)
        return b"".join(
            (
                b.address.to_bytes(4, "big"),
                self._hlc(b.tenure),
                _short(b.client_id),
                self._hlc(b.stamp),
                _short(b.hwaddr),
                self.layout.pool_index[b.pool].to_bytes(2, "big"),
                bytes((b.state,)),
                b.expires_ms.to_bytes(8, "big"),
                b.owner_expires_ms.to_bytes(8, "big"),
                bytes((len(b.vlans),)),
                b"".join(v.to_bytes(2, "big") for v in b.vlans),
                _short(b.relay_info),
                prl,
            )
        )

    def owner(self, block: int, o: Ownership) -> bytes:
        index = self.layout.site_index
        return _OWNER.pack(
            block, o.epoch, index[o.owner], index[o.previous], o.summary, o.ready_at_ms
        )

    def encode(self, message: Message) -> bytes:
        if isinstance(message, Delta):
            return self._delta(
                message.sent,
                [self.binding(b) for b in message.bindings],
                [self.owner(k, o) for k, o in message.owners],
            )
        if isinstance(message, Digest):
            return b"".join(
                (
                    self._header(Kind.DIGEST, message.sent),
                    _DIGEST_RANGE.pack(message.lo, message.hi),
                    _entries(message.buckets),
                )
            )
        if isinstance(message, Detail):
            owner = b"\0" if message.owner is None else b"\1" + self.owner(0, message.owner)
            return b"".join(
                (
                    self._header(Kind.DETAIL, message.sent),
                    message.bucket.to_bytes(4, "big"),
                    _DIGEST_RANGE.pack(message.lo, message.hi),
                    owner,
                    _entries(message.bindings),
                )
            )
        return b"".join(
            (
                self._header(Kind.REQUEST, message.sent),
                _ids(message.buckets),
                _ids(message.addresses),
            )
        )

    def _delta(self, sent: Hlc, bindings: Sequence[bytes], owners: Sequence[bytes]) -> bytes:
        return b"".join(
            (
                self._header(Kind.DELTA, sent),
                len(bindings).to_bytes(2, "big"),
                *bindings,
                len(owners).to_bytes(2, "big"),
                *owners,
            )
        )

    def encode_delta(
        self,
        sent: Hlc,
        bindings: Sequence[Binding],
        owners: Sequence[tuple[int, Ownership]] = (),
    ) -> list[bytes]:
        """The delta as as few messages as fit MAX_PAYLOAD each (none if it is empty)."""
        overhead = _HEADER.size + _HLC.size + 4
        messages: list[bytes] = []
        chunk: tuple[list[bytes], list[bytes]] = ([], [])
        size = overhead
        items = [(0, self.binding(b)) for b in bindings] + [
            (1, self.owner(k, o)) for k, o in owners
        ]
        for which, item in items:
            if size + len(item) > MAX_PAYLOAD:
                messages.append(self._delta(sent, *chunk))
                chunk, size = ([], []), overhead
            chunk[which].append(item)
            size += len(item)
        if chunk[0] or chunk[1]:
            messages.append(self._delta(sent, *chunk))
        return messages

    # Decoding -----------------------------------------------------------------------------

    def decode(self, data: bytes) -> Message:
        """The message in `data`; DecodeError for anything else, including a message made
        for another layout."""
        try:
            return self._decode(_Reader(data))
        except DecodeError:
            raise
        except (struct.error, ValueError, IndexError, KeyError) as e:
            raise DecodeError(str(e)) from e

    def _decode(self, r: _Reader) -> Message:
        magic, version, kind, layout = r.unpack(_HEADER)
        if magic != MAGIC:
            raise DecodeError("not a replication message")
        if version != VERSION:
            raise DecodeError(f"version {version}, this site speaks {VERSION}")
        if layout != self.layout.digest:
            raise DecodeError("made for another layout of sites and blocks")
        sent = self._read_hlc(r)
        message: Message
        if kind == Kind.DELTA:
            bindings = tuple(self._read_binding(r) for _ in range(r.u16()))
            owners = tuple(self._read_owner(r) for _ in range(r.u16()))
            message = Delta(sent, bindings, owners)
        elif kind == Kind.DIGEST:
            lo, hi = _read_range(r)
            message = Digest(sent, lo, hi, _read_entries(r))
        elif kind == Kind.DETAIL:
            bucket = int.from_bytes(r.take(4))
            lo, hi = _read_range(r)
            flag = r.u8()
            if flag > 1:
                raise DecodeError("bad register flag")
            owner = self._read_owner(r)[1] if flag else None
            message = Detail(sent, bucket, lo, hi, owner, _read_entries(r))
        elif kind == Kind.REQUEST:
            message = Request(sent, _read_ids(r), _read_ids(r))
        else:
            raise DecodeError(f"unknown message kind {kind}")
        r.end()
        return message

    def _site(self, index: int) -> str:
        if index >= len(self.layout.sites):
            raise DecodeError(f"site {index} is not in the layout")
        return self.layout.sites[index]

    def _read_hlc(self, r: _Reader) -> Hlc:
        wall, logical, site = r.unpack(_HLC)
        return Hlc(wall, logical, self._site(site))

    def _read_binding(self, r: _Reader) -> Binding:
        address = int.from_bytes(r.take(4))
        tenure = self._read_hlc(r)
        client_id = r.short()
        stamp = self._read_hlc(r)
        hwaddr = r.short(MAX_HWADDR)
        pool_index = r.u16()
        if pool_index >= len(self.layout.pools):
            raise DecodeError(f"pool {pool_index} is not in the layout")
        state = _STATES.get(r.u8())
        if state is None:
            raise DecodeError("unknown lease state")
        expires_ms = int.from_bytes(r.take(8))
        owner_expires_ms = int.from_bytes(r.take(8))
        count = r.u8()
        if count > MAX_VLANS:
            raise DecodeError(f"{count} VLAN ids")
        vlans = tuple(r.u16() for _ in range(count))
        relay_info = r.short()
        flag = r.u8()
        if flag > 1:
            raise DecodeError("bad parameter list flag")
        prl = r.short() if flag else None
        return Binding(
            address,
            tenure,
            client_id,
            stamp,
            hwaddr,
            self.layout.pools[pool_index],
            state,
            expires_ms,
            owner_expires_ms,
            vlans,
            relay_info,
            prl,
        )

    def _read_owner(self, r: _Reader) -> tuple[int, Ownership]:
        block, epoch, owner, previous, summary, ready_at = r.unpack(_OWNER)
        return block, Ownership(epoch, self._site(owner), self._site(previous), summary, ready_at)
