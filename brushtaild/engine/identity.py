"""A client's identity in the lease table, and the client identifier it was made from.

In a pool that lists VLANs a client is its identifier on its VLANs (the same MAC on two
VLANs is two subscribers); what the client sends, and what a reservation or the kernel's
entry names, is the identifier alone. These two functions go from one to the other.
"""


def subscriber_identity(client_id: bytes, vlans: tuple[int, ...]) -> bytes:
    """A client's identity in a pool that lists VLANs: its client identifier on its VLANs.
    The VLAN ids and their count follow the identifier (2 bytes per VLAN and one), so the
    pair can be read back from the end (wire_identity) and no two pairs give the same
    identity."""
    return client_id + b"".join(vid.to_bytes(2, "big") for vid in vlans) + bytes((len(vlans),))


def wire_identity(identity: bytes, vlans: tuple[int, ...]) -> bytes:
    """The client identifier as the client sends it, for the identity of a client on
    `vlans` that may carry them (subscriber_identity): one that ends with those VLANs is
    taken to, so an identifier that happens to end so reads shorter."""
    if not vlans:
        return identity  # the common case, asked of every lease when the maps are filled
    trailer = subscriber_identity(b"", vlans)
    if vlans and len(identity) > len(trailer) and identity.endswith(trailer):
        return identity[: -len(trailer)]
    return identity
