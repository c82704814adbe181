"""The control socket: the `brushtail` command's way into the running daemon.

A UNIX stream socket served by the daemon's own loop, never blocking it: the listening
socket and every connection are non-blocking and registered in the loop's selector, and
each connection keeps its own input and output buffers. The protocol is newline-delimited
JSON: a request `{"command": NAME, "args": {...}}` per line, one answer line per request,
`{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`.

The daemon's rule holds here too: nothing a client sends stops or stalls the loop. A
request line is at most MAX_REQUEST bytes; at most MAX_CONNECTIONS clients are served at
once; each has TIMEOUT seconds to finish a request from connecting or from its previous
answer, and to read its answer (a client that drips bytes or never reads is closed); a
client with an answer pending is not read from, so one that never reads cannot grow its
buffer. Whatever a command raises is logged and answered as an error, except the
exceptions the daemon names `fatal` (a lease store that cannot commit stops the daemon).

The socket file is 0660 and group `brushtail` when that group exists (the package
creates it), else 0600: root only. A socket file left by a crashed daemon is replaced;
one that still answers belongs to another daemon and is left alone. The file is removed
at a clean stop.
"""

import contextlib
import errno
import grp
import json
import logging
import os
import selectors
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("brushtaild.control")

GROUP = "brushtail"
MAX_REQUEST = 4096  # bytes in one request line; commands take a few short arguments
MAX_CONNECTIONS = 16
TIMEOUT = 10.0  # seconds to finish a request, or to read an answer
BACKLOG = 16
PROBE_TIMEOUT = 1.0  # seconds to tell a stale socket file from a live one, at start

Args = dict[str, Any]
Handler = Callable[[Args], object]


class CommandError(Exception):
    """A request that cannot be carried out as asked: its message is the answer."""


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    deadline: float
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    # Set once the client has sent its last byte, or sent something it will not be
    # answered for: the connection closes when its output is written.
    closing: bool = False


class ControlServer:
    def __init__(
        self,
        path: Path,
        commands: dict[str, Handler],
        fatal: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.path = path
        self._commands = commands
        self._fatal = fatal
        self._listener: socket.socket | None = None
        self._inode: int | None = None
        self._selector: selectors.BaseSelector | None = None
        self._connections: set[_Connection] = set()

    # Lifecycle ----------------------------------------------------------------------------

    def open(self, selector: selectors.BaseSelector) -> None:
        """Binds the socket and registers it in `selector`; raises OSError if it cannot
        (the caller decides whether the daemon runs without it)."""
        self._remove_stale()
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            # Created 0600, so that not even for an instant may anyone else connect.
            previous = os.umask(0o177)
            try:
                listener.bind(str(self.path))
            finally:
                os.umask(previous)
            self._inode = os.stat(self.path).st_ino
            self._give_to_group()
            listener.listen(BACKLOG)
        except BaseException:
            listener.close()
            self._unlink()
            raise
        self._listener = listener
        self._selector = selector
        selector.register(listener, selectors.EVENT_READ, self)

    def _remove_stale(self) -> None:
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise OSError(errno.EEXIST, f"{self.path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # A listener too busy to accept within this is alive all the same.
        probe.settimeout(PROBE_TIMEOUT)
        try:
            probe.connect(str(self.path))
        except ConnectionRefusedError:
            log.info("removing the control socket %s a stopped daemon left", self.path)
            self.path.unlink()
            return
        except TimeoutError:
            pass
        finally:
            probe.close()
        raise OSError(errno.EADDRINUSE, f"{self.path} is another running daemon's socket")

    def _give_to_group(self) -> None:
        try:
            gid = grp.getgrnam(GROUP).gr_gid
        except KeyError:
            log.warning("no group %r: control socket %s is root's alone", GROUP, self.path)
            return
        try:
            os.chown(self.path, -1, gid)
        except PermissionError:
            # Neither CAP_CHOWN nor a member of the group (the unit makes us one).
            log.warning("cannot give control socket %s to group %r", self.path, GROUP)
            return
        os.chmod(self.path, 0o660)

    def close(self) -> None:
        for conn in list(self._connections):
            self._close(conn)
        if self._listener is not None:
            if self._selector is not None:
                self._selector.unregister(self._listener)
            self._listener.close()
            self._listener = None
            self._unlink()

    def _unlink(self) -> None:
        """Removes the socket file if it is still ours."""
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()

    # Serving ------------------------------------------------------------------------------

    def ready(self, data: object, events: int, now: float) -> None:
        """A selector event for the listening socket (`data` is this server) or for a
        connection (`data` is it)."""
        if data is self:
            self._accept(now)
        elif isinstance(data, _Connection) and data in self._connections:
            if events & selectors.EVENT_READ:
                self._read(data, now)
            if data in self._connections and events & selectors.EVENT_WRITE:
                self._write(data)

    def expire(self, now: float) -> None:
        """Closes the connections past their deadline; call every second or so."""
        for conn in [c for c in self._connections if c.deadline <= now]:
            self._close(conn)

    @property
    def connections(self) -> int:
        return len(self._connections)

    def _accept(self, now: float) -> None:
        assert self._listener is not None and self._selector is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: try again at the next event
                log.warning("control socket: accept failed: %s", exc)
                return
            sock.setblocking(False)
            if len(self._connections) >= MAX_CONNECTIONS:
                with contextlib.suppress(OSError):
                    sock.send(_answer_error("too many connections, try again"))
                sock.close()
                continue
            conn = _Connection(sock, now + TIMEOUT)
            self._connections.add(conn)
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: _Connection, now: float) -> None:
        try:
            # No more than one request's worth at a time: what one read can make the
            # connection answer, and so its output buffer, stays small.
            data = conn.sock.recv(MAX_REQUEST + 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        conn.inbuf += data
        if not data:
            # The client has said all it will: a last line without its newline counts.
            conn.closing = True
            if conn.inbuf:
                conn.inbuf += b"\n"
        while True:
            line, newline, rest = conn.inbuf.partition(b"\n")
            if not newline or len(line) > MAX_REQUEST:
                break
            conn.inbuf = bytearray(rest)
            conn.outbuf += self._answer(bytes(line))
            conn.deadline = now + TIMEOUT
        if len(conn.inbuf) > MAX_REQUEST:
            conn.inbuf.clear()
            conn.outbuf += _answer_error(f"request longer than {MAX_REQUEST} bytes")
            conn.closing = True
        self._update(conn)

    def _write(self, conn: _Connection) -> None:
        try:
            sent = conn.sock.send(conn.outbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        del conn.outbuf[:sent]
        self._update(conn)

    def _update(self, conn: _Connection) -> None:
        """Reads while nothing is waiting to be written, writes while something is."""
        assert self._selector is not None
        if conn.closing and not conn.outbuf:
            self._close(conn)
        elif conn.outbuf:
            self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
        else:
            self._selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def _close(self, conn: _Connection) -> None:
        self._connections.discard(conn)
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(conn.sock)
        conn.sock.close()

    # Requests -----------------------------------------------------------------------------

    def _answer(self, line: bytes) -> bytes:
        """The answer line to one request line."""
        try:
            request = json.loads(line)
        except ValueError:
            return _answer_error("not a JSON request")
        if not isinstance(request, dict):
            return _answer_error('a request is {"command": NAME, "args": {...}}')
        command, args = request.get("command"), request.get("args", {})
        handler = self._commands.get(command) if isinstance(command, str) else None
        if handler is None:
            return _answer_error(f"unknown command {command!r}; known: {', '.join(self._commands)}")
        if not isinstance(args, dict):
            return _answer_error("args must be an object")
        try:
            result = handler(args)
        except CommandError as exc:
            return _answer_error(str(exc))
        except self._fatal:
            raise
        except Exception as exc:
            log.exception("control socket: command %r failed", command)
            return _answer_error(f"internal error: {exc!r}")
        return _line({"ok": True, "result": result})


def _line(answer: dict[str, object]) -> bytes:
    return json.dumps(answer, separators=(",", ":")).encode() + b"\n"


def _answer_error(message: str) -> bytes:
    return _line({"ok": False, "error": message})
