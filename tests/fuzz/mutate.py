"""Fuzz inputs as choices: a byte string read as a sequence of decisions, and the mutations of
a DHCP payload those decisions pick. Coverage-guided fuzzers (atheris) and plain random
bytes drive the same code, and every failure is replayed from its bytes alone."""

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

OPTIONS_OFFSET = 240  # RFC 2131: fixed header and magic cookie
_PAD = 0
_END = 255


class Draw:
    """Reads choices off the front of `data`; once it runs out every choice is 0."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def exhausted(self) -> bool:
        return self.pos >= len(self.data)

    def below(self, n: int) -> int:
        """A number in [0, n): one byte for n up to 256, two above (n at most 65536)."""
        if n <= 1:
            return 0
        width = 1 if n <= 256 else 2
        chunk = self.data[self.pos : self.pos + width]
        self.pos += width
        return int.from_bytes(chunk, "big") % n if chunk else 0

    def chance(self, one_in: int) -> bool:
        return self.below(one_in) == 0

    def pick(self, choices: Sequence[T]) -> T:
        return choices[self.below(len(choices))]

    def raw(self, size: int) -> bytes:
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk.ljust(size, b"\0")


def option_bounds(payload: bytes | bytearray) -> list[tuple[int, int]]:
    """(start, end) of each option in the options field, pad and end excluded; a lenient
    walk that stops at the end option or where an option overruns the payload."""
    bounds: list[tuple[int, int]] = []
    pos = OPTIONS_OFFSET
    while pos < len(payload) and payload[pos] != _END:
        if payload[pos] == _PAD:
            pos += 1
            continue
        if pos + 1 >= len(payload):
            break
        end = pos + 2 + payload[pos + 1]
        if end > len(payload):
            break
        bounds.append((pos, end))
        pos = end
    return bounds


def _option(draw: Draw) -> bytes:
    code = draw.pick((draw.below(256), 50, 53, 54, 55, 57, 61, 82, 118, 52))
    value = draw.raw(draw.below(20))
    length = len(value) if not draw.chance(8) else draw.below(256)  # sometimes lying
    return bytes((code, length)) + value


def mutate(payload: bytes, draw: Draw, *, max_edits: int = 4) -> bytes:
    """`payload` with 1..max_edits edits: byte flips and writes, truncation, extension,
    options inserted, deleted, duplicated, rewritten or given a wrong length."""
    out = bytearray(payload)
    for _ in range(1 + draw.below(max_edits)):
        kind = draw.below(9)
        bounds = option_bounds(out) if kind >= 4 else []
        if kind == 0 and out:
            out[draw.below(len(out))] ^= 1 << draw.below(8)
        elif kind == 1 and out:
            out[draw.below(len(out))] = draw.below(256)
        elif kind == 2:
            del out[draw.below(len(out) + 1) :]
        elif kind == 3:
            out += draw.raw(draw.below(40))
        elif kind == 4:
            at = draw.pick([start for start, _ in bounds] or [len(out)])
            out[at:at] = _option(draw)
        elif bounds:
            start, end = draw.pick(bounds)
            if kind == 5:
                del out[start:end]
            elif kind == 6:
                out[start + 1] = draw.below(256)
            elif kind == 7:
                at = draw.pick([s for s, _ in bounds])
                out[at:at] = out[start:end]
            else:
                out[start + 2 : end] = draw.raw(end - start - 2)
    return bytes(out)
