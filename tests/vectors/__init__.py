"""Byte vectors for the codec tests: one hex file per packet, described in SOURCES.md."""

from pathlib import Path

_DIR = Path(__file__).parent

# The clients whose packets were captured (SOURCES.md): each has <client>_discover and
# <client>_request.
CLIENTS = ("dhclient", "udhcpc", "perfdhcp", "dhcrelay_udhcpc")
CAPTURED = tuple(f"{client}_{kind}" for client in CLIENTS for kind in ("discover", "request"))


def load_vector(name: str) -> bytes:
    """The bytes in `<name>.hex`: whitespace is ignored and `#` starts a comment."""
    text = (_DIR / f"{name}.hex").read_text()
    return bytes.fromhex("".join(line.partition("#")[0] for line in text.splitlines()))
