"""Numbered reasons why a packet is dropped rather than answered.

The numbers are part of the metrics and log vocabulary (and, with the XDP fast path, of
bpf/shared.h): never renumber one, and retire an unused one by leaving its number unused.
"""

from enum import IntEnum


class DropReason(IntEnum):
    # Malformed on the wire (raised by the codec or the frame parser).
    TRUNCATED = 1
    BAD_OP = 2
    BAD_HLEN = 3
    BAD_COOKIE = 4
    OPTION_OVERRUN = 5
    NO_MESSAGE_TYPE = 6
    UNKNOWN_MESSAGE_TYPE = 7
    BAD_OPTION = 8
    BAD_FRAME = 9
    # Well formed, but not ours to answer.
    OTHER_SERVER = 20
    NO_SUBNET = 21
    POOL_EXHAUSTED = 22
    NO_RECORD = 23
    NOT_FROM_CLIENT = 24
    UNEXPECTED_MESSAGE = 25
    NO_MATCHING_LEASE = 26

    @property
    def label(self) -> str:
        return self.name.lower()


class MalformedPacket(Exception):
    """The bytes are not a DHCP message we can safely interpret."""

    def __init__(self, reason: DropReason, detail: str = "") -> None:
        super().__init__(f"{reason.label}: {detail}" if detail else reason.label)
        self.reason = reason
        self.detail = detail
