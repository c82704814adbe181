"""Socket receive buffers: a burst the loop has not read yet waits here, not on the floor."""

import socket

SO_RCVBUFFORCE = 33  # asm-generic/socket.h; Python's socket module does not name it
RCVBUF_BYTES = 4 << 20


def grow_receive_buffer(sock: socket.socket, size: int = RCVBUF_BYTES) -> None:
    """Ask for `size` bytes of receive buffer: past net.core.rmem_max as root (the daemon
    has CAP_NET_ADMIN), else as much as that allows."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
