"""Numbered reasons why a packet is dropped rather than answered.

The numbers are part of the metrics and log vocabulary (and, with the XDP fast path, of
bpf/shared.h): never renumber one, and retire an unused one by leaving its number unused.
"""

from enum import IntEnum


class DropReason(IntEnum):
    # Malformed on the wire: BAD_FRAME by the frame parser (below UDP), the rest by the codec.
    TRUNCATED = 1
    BAD_OP = 2
    BAD_HLEN = 3
    BAD_HTYPE = 13  # not Ethernet: numbered after the rest, numbers are never reused
    BAD_COOKIE = 4
    OPTION_OVERRUN = 5
    NO_MESSAGE_TYPE = 6
    UNKNOWN_MESSAGE_TYPE = 7
    BAD_OPTION = 8
    BAD_FRAME = 9
    # The daemon could not finish with a well-formed request (its edges, not the engine).
    SEND_FAILED = 10  # the reply could not be sent (unreachable relay, full queue, link down)
    STALE = 11  # waited in the socket queue longer than a client waits for an answer
    INTERNAL_ERROR = 12  # a bug: the request is dropped, the loop goes on
    # A DISCOVER that waited in the socket queue past main.MAX_DISCOVER_AGE: shed under a
    # backlog, so the exchanges under way are answered while their clients still wait.
    BACKLOG = 33
    # Well formed, but not ours to answer.
    OTHER_SERVER = 20
    NO_SUBNET = 21
    POOL_EXHAUSTED = 22
    NO_RECORD = 23
    NOT_FROM_CLIENT = 24
    UNEXPECTED_MESSAGE = 25
    NO_MATCHING_LEASE = 26
    REPLY_TOO_LARGE = 27  # the reply cannot fit the client's maximum message size
    STALE_RENEWAL = 28  # a kernel renewal of a lease the engine no longer holds so
    NO_CLIENT_ADDRESS = 29  # an INFORM without ciaddr (RFC 2131 4.3.5)
    NO_CLASS_POOL = 30  # the client's class names none of its network's pools
    LEASE_LIMIT = 31  # a new lease would put its access line past a configured `limits` bound
    OFFER_LIMIT = 32  # a new offer would put its access line past its bound of pending offers
    # Multi-site replication (60-69).
    # A peer's binding at an address none of our pools hands out (or without a client):
    # not installed (Server.absorb; Decision.skipped counts them).
    REPLICATED_ELSEWHERE = 60

    @property
    def label(self) -> str:
        return self.name.lower()


class MalformedPacket(Exception):
    """The bytes are not a DHCP message we can safely interpret."""

    def __init__(self, reason: DropReason, detail: str = "") -> None:
        super().__init__(f"{reason.label}: {detail}" if detail else reason.label)
        self.reason = reason
        self.detail = detail
