"""`brushtail`: the operator's command-line tool, separate from the daemon `brushtaild`.

Each subcommand is an `_add_<name>` function that registers its parser and sets `run` to
the function that carries it out; `main` only dispatches. Exit codes follow one rule across
subcommands: 0 success, 1 the input was read but is wrong (or the daemon refused the
request), 2 usage errors or input that could not be read at all (argparse uses 2 for usage
errors too), 3 the daemon is not running (nothing answers on its control socket).

The commands that talk to the running daemon (status, leases, lease, pools, peers, sites, reload)
send one request over its control socket (daemon/control.py) and render the JSON answer:
aligned tables for people, the answer itself with --json.
"""

import argparse
import contextlib
import ctypes
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from brushtaild import __version__
from brushtaild.config.load import DEFAULT_CONFIG, ConfigError, load_config
from brushtaild.config.model import DEFAULT_CONTROL_SOCKET, Config
from brushtaild.config.reload import restart_keys
from brushtaild.daemon import clock
from brushtaild.daemon.commands import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    STATES,
    describe_fastpath,
    select_leases,
)
from brushtaild.daemon.control import CommandError
from brushtaild.engine.allocator import pool_allocators
from brushtaild.store.lease_store import StoreError, read_snapshot

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_UNREADABLE = 2
EXIT_NOT_RUNNING = 3
# A reload rebuilds every lease and rewrites the kernel's maps: seconds at a million.
ANSWER_TIMEOUT = 120.0

Handler = Callable[[argparse.Namespace], int]


def _read(path: Path, label: str = "") -> Config | int:
    """The file's configuration, or the exit status after saying on standard error why there
    is none. `label` goes before each problem when more than one file is read."""
    try:
        return load_config(path)
    except ConfigError as exc:
        for where, reason in exc.errors:
            print(f"{label}{where}: {reason}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_UNREADABLE


def _warnings(config: Config, leasable: int) -> list[tuple[str, str]]:
    """What the daemon accepts but an operator most likely did not mean."""
    found: list[tuple[str, str]] = []
    settings = config.fastpath
    if settings.enabled and leasable > settings.max_subscribers:
        found.append(
            (
                "fastpath.max_subscribers",
                f"the pools hold {leasable} addresses and the kernel map holds "
                f"{settings.max_subscribers} entries; leases beyond it are served by the "
                "slow path",
            )
        )
    return found


def _check_config(args: argparse.Namespace) -> int:
    if args.compare is not None:
        return _compare(*args.compare)
    path: Path = args.file
    config = _read(path)
    if isinstance(config, int):
        return config
    # Counted by the allocator itself, so the number matches what the daemon can lease.
    leasable = sum(a.total for a in pool_allocators(config).values())
    print(f"{path}: OK ({len(config.pools)} pools, {leasable} addresses)")
    for where, reason in _warnings(config, leasable):
        print(f"warning: {where}: {reason}", file=sys.stderr)
    return EXIT_OK


def _compare(old_path: Path, new_path: Path) -> int:
    """`reload` when a reload applies NEW to a daemon running with OLD, else `restart: KEYS`;
    the same verdict the daemon reaches on SIGHUP."""
    old = _read(old_path, f"{old_path}: ")
    new = _read(new_path, f"{new_path}: ")
    if isinstance(old, int) or isinstance(new, int):
        return max(code for code in (old, new) if isinstance(code, int))
    keys = restart_keys(old, new)
    print(f"restart: {', '.join(keys)}" if keys else "reload")
    return EXIT_OK


def _add_check_config(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "check-config",
        help="validate a configuration file the way the daemon does",
        description="Validate FILE exactly as brushtaild does at start-up and on SIGHUP. "
        "Exit 0 if valid, 1 if invalid (every problem is listed), 2 if unreadable. "
        "With --compare, validate both files and print `reload` if a reload (SIGHUP) of a "
        "daemon running with OLD applies NEW, or `restart: KEYS` naming the keys only a "
        "restart applies; exit 0 for either.",
    )
    files = parser.add_mutually_exclusive_group(required=True)
    files.add_argument("file", type=Path, nargs="?", metavar="FILE")
    files.add_argument("--compare", type=Path, nargs=2, metavar=("OLD", "NEW"))
    parser.set_defaults(run=_check_config)


def _config_of(args: argparse.Namespace) -> Config | None:
    """The --config file of a command that only reads settings from it; None, with the
    reason on standard error, if it cannot be used."""
    path = args.config if args.config is not None else DEFAULT_CONFIG
    try:
        return load_config(path)
    except (ConfigError, OSError) as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return None


def _store_leases(args: argparse.Namespace) -> int:
    state_dir: Path | None = args.state_dir
    config = None
    if state_dir is None:
        config = _config_of(args)
        if config is None:
            return EXIT_UNREADABLE
        state_dir = config.state_dir
    try:
        leases = read_snapshot(state_dir)
    except StoreError as exc:
        print(exc, file=sys.stderr)
        return EXIT_UNREADABLE
    now = clock.wall()
    if not args.all and args.state is None:
        leases = [lease for lease in leases if lease.active(now)]
    site = config.site if args.state_dir is None and config is not None else None
    try:
        answer = select_leases(leases, _lease_filters(args), now, site or args.site or "")
    except CommandError as exc:
        print(f"brushtail leases: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if args.json:
        _print_json(answer)
        return EXIT_OK
    return _render_leases(answer)


def _print_leases(rows: list[dict[str, Any]]) -> None:
    _print_table(
        ("ADDRESS", "STATE", ">EXPIRES IN", "MAC", "POOL", "CLIENT-ID", "CIRCUIT-ID"),
        [
            (
                row["address"],
                row["state"],
                f"{row['expires_in']}s" if row["expires_in"] else "-",
                row["mac"],
                row["pool"],
                row["client_id"] or "-",
                row.get("circuit_id") or "-",
            )
            for row in rows
        ],
    )


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Columns as wide as their widest cell; a header written `>NAME` is right-aligned,
    and a table whose headers are all empty has no header line."""
    right = [h.startswith(">") for h in headers]
    header = [[h.lstrip(">") for h in headers]] if any(headers) else []
    cells = [*header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        line = "  ".join(
            cell.rjust(width) if r else cell.ljust(width)
            for cell, width, r in zip(row, widths, right, strict=True)
        )
        print(line.rstrip())


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2))


def _add_leases(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "leases",
        help="list leases, from the running daemon or (--store) the lease store",
        description="List the running daemon's leases in address order, LIMIT of them, "
        "and how many matched. Filters combine. --vlan matches leases on that VLAN id, outer "
        "or inner. --circuit-id matches the relay agent circuit id stashed with the lease "
        "when it was bound (its text, or 0x and hex); --site matches only this site "
        "until replication exists. With --store (or --state-dir), read the lease store "
        "instead, read-only: works without the daemon; by default only bound leases and "
        "quarantined addresses, --all adds released, revoked and expired ones.",
    )
    _daemon_options(parser)
    parser.add_argument("--mac", help="client hardware address, aa:bb:cc:dd:ee:ff")
    parser.add_argument("--address", help="leased IPv4 address")
    parser.add_argument("--pool", help="pool name")
    parser.add_argument("--state", choices=STATES)
    parser.add_argument("--circuit-id", help="relay agent circuit id: text, or 0x + hex")
    parser.add_argument("--vlan", type=int, help="VLAN id, outer or inner")
    parser.add_argument("--site", help="site name (this site only: leases do not record theirs)")
    parser.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        help=f"list at most this many (default {DEFAULT_LIMIT}, at most {MAX_LIMIT})",
    )
    store = parser.add_argument_group("reading the lease store instead")
    store.add_argument("--store", action="store_true", help="read the lease store")
    store.add_argument("--state-dir", type=Path, help="read this state dir (implies --store)")
    store.add_argument("--all", action="store_true", help="include released and expired")
    parser.set_defaults(run=_leases)


def _lease_filters(args: argparse.Namespace) -> dict[str, Any]:
    filters = {
        "mac": args.mac,
        "address": args.address,
        "pool": args.pool,
        "state": args.state,
        "circuit_id": args.circuit_id,
        "vlan": args.vlan,
        "site": args.site,
        "limit": args.limit,
    }
    return {k: v for k, v in filters.items() if v is not None}


def _leases(args: argparse.Namespace) -> int:
    if args.store or args.state_dir is not None:
        return _store_leases(args)
    return _daemon_command(args, "leases", _lease_filters(args), _render_leases)


def _render_leases(answer: dict[str, Any]) -> int:
    _print_leases(answer["leases"])
    print(f"{len(answer['leases'])} of {answer['matched']} matching leases shown")
    for note in answer["notes"]:
        print(f"note: {note}")
    return EXIT_OK


# -- talking to the daemon ------------------------------------------------------------------


def _daemon_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"take control_socket (and for --store, state_dir) from FILE "
        f"(default {DEFAULT_CONFIG})",
    )
    parser.add_argument("--socket", type=Path, metavar="PATH", help="the daemon's control socket")
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")


def _socket_path(args: argparse.Namespace) -> Path | int:
    """--socket; else the control_socket of --config; else that of the default config
    file if it can be read (it may not be, for a member of the brushtail group), else
    the default path."""
    if args.socket is not None:
        return Path(args.socket)
    if args.config is not None:
        config = _config_of(args)
        return EXIT_UNREADABLE if config is None else config.control_socket
    try:
        return load_config(DEFAULT_CONFIG).control_socket
    except (ConfigError, OSError):
        return DEFAULT_CONTROL_SOCKET


def _ask(args: argparse.Namespace, command: str, request_args: dict[str, Any]) -> Any:
    """The daemon's result for one request, or the exit status after saying why there is
    none."""
    path = _socket_path(args)
    if isinstance(path, int):
        return path
    request = json.dumps({"command": command, "args": request_args}).encode() + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(ANSWER_TIMEOUT)
            conn.connect(str(path))
            # A daemon that turns us away (too many connections) answers and closes
            # before reading: its answer is still there to read.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                conn.sendall(request)
            answer = _read_line(conn)
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"brushtaild is not running: nothing answers on {path}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except PermissionError:
        print(
            f"{path}: permission denied (the control socket is for root and group brushtail)",
            file=sys.stderr,
        )
        return EXIT_UNREADABLE
    except TimeoutError:
        print(f"brushtaild did not answer on {path} within {ANSWER_TIMEOUT:.0f}s", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except OSError as exc:
        print(f"{path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    if not answer:
        print(f"brushtaild closed {path} without answering", file=sys.stderr)
        return EXIT_NOT_RUNNING
    try:
        decoded = json.loads(answer)
        ok, value = decoded["ok"], decoded["result"] if decoded["ok"] else decoded["error"]
    except (ValueError, KeyError, TypeError):
        print(f"{path}: not an answer brushtail understands: {answer[:200]!r}", file=sys.stderr)
        return EXIT_INVALID
    if not ok:
        print(f"brushtaild: {value}", file=sys.stderr)
        return EXIT_INVALID
    return value


def _daemon_command(
    args: argparse.Namespace,
    command: str,
    request: dict[str, Any],
    render: Callable[[Any], int],
) -> int:
    """One request to the daemon; its answer as JSON (--json) or rendered for people. The
    exit status is the renderer's: it runs with --json too, printing nowhere."""
    answer = _ask(args, command, request)
    if isinstance(answer, int):
        return answer
    if not args.json:
        return render(answer)
    _print_json(answer)
    with contextlib.redirect_stdout(None):
        return render(answer)


def _read_line(conn: socket.socket) -> bytes:
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = conn.recv(1 << 16)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{n}{unit}" for n, unit in parts if n]
    return " ".join(shown[:2]) or "0s"


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _render_status(status: dict[str, Any]) -> int:
    rates = status["rates"]
    slow_rate = fast_rate = "rate not measured yet"
    if rates is not None:
        window = f"answers/s over the last {rates['interval']:.0f}s"
        slow_rate, fast_rate = f"{rates['slow']:.1f} {window}", f"{rates['fast']:.1f} {window}"
    fastpath = status["fastpath"]
    last = status["last_reload"]
    reload_line = "none since start"
    if last is not None:
        verdict = "applied" if last["applied"] else "REFUSED"
        reload_line = f"{_when(last['at'])}: {verdict}: {last['detail'].splitlines()[0]}"
    _print_table(
        ("", ""),
        [
            ("site", f"{status['site']}, brushtaild {status['version']}, up "
                     f"{_duration(status['uptime'])}"),
            ("serving", f"{status['interface']} as {status['server_id']}"),
            ("slow path", f"up, {slow_rate}"),
            ("fast path", describe_fastpath(fastpath)
             + (f", {fast_rate}" if fastpath["state"] == "up" else "")),
            ("peers", _peers_line(status["peers"])),
            ("last reload", reload_line),
        ],
    )  # fmt: skip
    print()
    _print_pools(status["pools"])
    return EXIT_OK


def _print_pools(pools: list[dict[str, Any]]) -> None:
    _print_table(
        ("POOL", "SUBNET", ">SIZE", ">ASSIGNED", ">DECLINED", ">FREE", ">USED"),
        [
            (
                p["pool"],
                p["subnet"],
                p["size"],
                p["assigned"],
                p["declined"],
                p["free"],
                f"{100 * p['utilization']:.1f}%",
            )
            for p in pools
        ],
    )


def _render_pools(pools: list[dict[str, Any]]) -> int:
    _print_pools(pools)
    return EXIT_OK


def _peers_line(answer: dict[str, Any]) -> str:
    if not answer["peers"]:
        return str(answer["note"])
    return ", ".join(f"{p['site']} {'up' if p['up'] else 'DOWN'}" for p in answer["peers"])


def _render_peers(answer: dict[str, Any]) -> int:
    if not answer["peers"]:
        print(answer["note"])
        return EXIT_OK
    _print_table(
        ("PEER", "ADDRESS", "STATE", "SESSION", ">LAST HEARD"),
        [
            (
                p["site"],
                p["address"],
                "up" if p["up"] else "DOWN",
                p["session"],
                "never" if p["last_heard_ago"] is None else f"{p['last_heard_ago']:.0f}s ago",
            )
            for p in answer["peers"]
        ],
    )
    print()
    owned = f"{answer['owned_blocks']} of {answer['blocks']} blocks owned and allocating"
    if answer["recovering_until"] is not None:
        owned += f" (recovering: none before {_when(answer['recovering_until'])})"
    print(f"site {answer['site']}: {owned}")
    print(f"wire: {answer['bytes_sent']} bytes sent, {answer['bytes_received']} received")
    return EXIT_OK


def _render_evicted(answer: dict[str, Any]) -> int:
    print(f"{answer['evicted']} evicted: {answer['blocks']} blocks handed to the other sites")
    return EXIT_OK


def _sites(args: argparse.Namespace) -> int:
    return _daemon_command(args, "sites-evict", {"site": args.site}, _render_evicted)


def _render_reload(outcome: dict[str, Any]) -> int:
    if outcome["applied"]:
        print(f"applied: {outcome['detail']}")
        return EXIT_OK
    print(f"refused, the running config is kept: {outcome['detail']}")
    return EXIT_INVALID


def _render_shown(rows: list[dict[str, Any]]) -> int:
    _print_leases(rows)
    return EXIT_OK


def _render_released(answer: dict[str, Any]) -> int:
    print(
        f"revoked {', '.join(answer['revoked'])}: the client's next request for it is "
        "NAKed; no one else gets it before the lease would have ended"
    )
    return EXIT_OK


def _lease(args: argparse.Namespace) -> int:
    if args.action == "show":
        return _daemon_command(args, "lease-show", {"target": args.target}, _render_shown)
    return _daemon_command(args, "lease-release", {"target": args.target}, _render_released)


def _add_daemon_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    renderers: tuple[tuple[str, Callable[[Any], int], str, str], ...] = (
        (
            "status",
            _render_status,
            "the running daemon at a glance",
            "One screen: site and uptime, the slow and fast paths (mode, kernel entries, "
            "hit rate, or why the fast path is down), answers per second of each, peers, "
            "the last reload, and the pools.",
        ),
        (
            "pools",
            _render_pools,
            "pool size, assigned, declined, free, utilization",
            "Per pool: addresses it can lease (SIZE), in use (ASSIGNED: leased, offered, "
            "quarantined or revoked), quarantined after a DECLINE, FREE, and USED.",
        ),
        (
            "peers",
            _render_peers,
            "replication peers: up or down, last heard, session, bytes, owned blocks",
            "Each replication peer: up (a DTLS session, and heard from within three "
            "anti-entropy rounds) or DOWN, its session (established, handshaking, none), "
            "when it was last heard from; this site's owned blocks and bytes on the wire.",
        ),
        (
            "reload",
            _render_reload,
            "re-read the configuration, as SIGHUP",
            "Ask the daemon to reload its configuration file, as `systemctl reload` does, "
            "and say whether it was applied or refused and why. Exit 1 if refused.",
        ),
    )
    for name, render, help_text, description in renderers:
        parser = commands.add_parser(name, help=help_text, description=description)
        _daemon_options(parser)
        parser.set_defaults(
            run=lambda args, name=name, render=render: _daemon_command(args, name, {}, render)
        )
    parser = commands.add_parser(
        "lease",
        help="show or revoke one subscriber's lease",
        description="show: every lease record of an address or a MAC address. release: "
        "revoke the bound lease(s) of TARGET now (forced release): written to the lease "
        "store, withdrawn from the kernel's map, and the client's next request for it is "
        "NAKed, so it starts over with a DISCOVER; the address is not given to anyone "
        "else before the old lease would have ended. Exit 1 if there is nothing to show "
        "or revoke.",
    )
    parser.add_argument("action", choices=("show", "release"))
    parser.add_argument("target", metavar="ADDRESS|MAC")
    _daemon_options(parser)
    parser.set_defaults(run=_lease)
    parser = commands.add_parser(
        "sites",
        help="the cluster's sites: evict a site lost for good",
        description="evict NAME: hand every address block of the lost site NAME to the "
        'other sites (docs/OPERATIONS.md, "A site lost for good"). Refused, with the '
        "time left, until NAME has been silent for lost_after. Exit 1 if refused.",
    )
    parser.add_argument("action", choices=("evict",))
    parser.add_argument("site", metavar="NAME")
    _daemon_options(parser)
    parser.set_defaults(run=_sites)


def _fastpath(args: argparse.Namespace) -> int:
    config = _config_of(args)
    if config is None:
        return EXIT_UNREADABLE
    if args.action == "detach":
        return _fastpath_detach(config)
    return _fastpath_status(config)


def _fastpath_detach(config: Config) -> int:
    """Takes the program off, records the renewals its rings held in the lease store (as
    brushtaild would have), then removes the pins. The store is opened first, so one that
    cannot be written leaves everything in place."""
    # Imported here: `check-config` and `leases` must work where BCC is not installed.
    from brushtaild.engine.server import Server
    from brushtaild.store.lease_store import LeaseStore
    from brushtaild.xdp import fastpath, loader

    def record(store: LeaseStore | None, renewals: list[fastpath.Renewal]) -> tuple[int, int]:
        """(recorded, refused: the lease changed since)."""
        if store is None:
            return 0, 0
        now = clock.wall()
        accepted, refused = fastpath.recorded(Server(config, store.load(), now), renewals, now)
        store.apply(accepted.lease_writes, [])
        return len(accepted.lease_writes), len(refused)

    pin_dir = config.fastpath.pin_dir
    # Only a ring can hold renewals: without one, the store is not needed.
    queued = any(version.queues() for version in fastpath.pinned(config))
    try:
        with contextlib.ExitStack() as stack:
            store = stack.enter_context(LeaseStore.open(config.state_dir)) if queued else None
            taken = fastpath.take_down(config, lambda renewals: record(store, renewals))
    except (loader.LoadError, StoreError, OSError) as exc:
        print(f"pinned maps left in place: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if taken is None:
        print(f"nothing pinned under {pin_dir}: no fast path to remove")
        return EXIT_OK
    down, (recorded, refused) = taken
    removed = ", ".join(down.interfaces) or "no interface"
    print(
        f"XDP program removed from {removed}; {recorded} renewals it answered recorded in "
        f"{config.state_dir} ({refused} refused: the lease changed since); "
        f"{pin_dir} unpinned"
    )
    return EXIT_OK


def _fastpath_status(config: Config) -> int:
    from brushtaild.xdp import libbpf, loader, maps

    settings = config.fastpath
    mode = loader.attached_mode(config.interface)
    print(f"interface {config.interface}: {'XDP ' + mode if mode else 'no XDP program'}")
    pins = loader.PinDir.of(settings)
    for version in pins.others():
        print(f"maps of another layout: {version.path} (recorded and removed at the next start)")
    if not (pins.current.path / "leases").exists():
        print(f"maps: none pinned under {settings.pin_dir} for this configuration")
        return EXIT_OK if mode is None else EXIT_INVALID
    fds = {name: libbpf.obj_get(str(pins.current.path / name)) for name in ("leases", "results")}
    try:
        entries = libbpf.count_keys(fds["leases"], ctypes.sizeof(maps.ClientKey))
        counts = libbpf.percpu_u64_sums(fds["results"], maps.RESULTS)
    finally:
        for fd in fds.values():
            os.close(fd)
    print(f"maps: {pins.current.path}, {entries} lease entries")
    for result in maps.Result:
        if result is not maps.Result.NOT_DHCP and counts[result]:
            print(f"  {result.label:<18} {counts[result]}")
    return EXIT_OK


def _add_fastpath(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "fastpath",
        help="show or remove the XDP fast path",
        description="status: the interface's XDP program, the pinned lease entries and the "
        "program's counters (read from the pinned maps, so it works while brushtaild is "
        "stopped). detach: with brushtaild stopped, remove the program and its pinned maps, "
        "after recording in the lease store the renewals it answered; the fast path stays "
        "answering renewals after brushtaild stops until this is run. Exit 1 (and nothing "
        "removed) while brushtaild runs or if the lease store cannot be written.",
    )
    parser.add_argument("action", choices=("status", "detach"))
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, metavar="FILE")
    parser.set_defaults(run=_fastpath)


def _pki(args: argparse.Namespace) -> int:
    # Imported here, as the fast path's modules are: only this command needs cryptography.
    from datetime import UTC, datetime

    from brushtaild.replication import pki

    now = datetime.now(UTC).replace(tzinfo=None)
    ca_dir: Path = args.ca_dir
    days: int = args.days or (3650 if args.action == "init" else 825)
    if args.action in ("issue", "revoke") and args.site is None:
        print(f"brushtail pki {args.action}: name the site", file=sys.stderr)
        return EXIT_UNREADABLE
    try:
        if args.action == "init":
            pki.create_ca(ca_dir, args.name, days, now)
            print(f"CA {args.name!r} created in {ca_dir}: keep {ca_dir / pki.CA_KEY} private")
            return EXIT_OK
        ca = pki.Ca.load(ca_dir)
        if args.action == "issue":
            out: Path = args.out or ca_dir / "sites" / args.site
            certificate = ca.issue(args.site, days, out, now)
            print(f"{args.site}: serial {certificate.serial_number:x}, in {out}")
        elif args.action == "list":
            _print_table(
                ("SITE", "SERIAL", "NOT AFTER (UTC)", "STATE"),
                [
                    (i.site, f"{i.serial:x}", f"{i.not_after:%Y-%m-%d %H:%M}", i.state(now))
                    for i in ca.issued()
                ],
            )
        else:
            for revoked in ca.revoke(args.site, now):
                print(f"{revoked.site}: serial {revoked.serial:x} revoked")
            print(f"{ca_dir / pki.CA_CRL} re-signed: install it on every site and reload")
    except (pki.PkiError, OSError) as exc:
        print(f"brushtail pki: {exc}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


def _add_pki(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "pki",
        help="the cluster CA and site certificates, without Ansible",
        description="init: create the cluster CA (ECDSA P-256) in --ca-dir: ca.key (0600), "
        "ca.crt and an empty CRL ca.crl. issue SITE: a new P-256 key and a certificate "
        "naming SITE (CN and SAN), for both TLS roles, written as site.key (0600), site.crt "
        "and ca.crt into --out (default CA-DIR/sites/SITE), the names of /etc/brushtail/pki. "
        "list: the certificates issued, with their state. revoke SITE|SERIAL: revoke them "
        "and re-sign ca.crl. Never overwrites a key or certificate. Exit 1 on failure.",
    )
    parser.add_argument("action", choices=("init", "issue", "list", "revoke"))
    parser.add_argument("site", nargs="?", metavar="SITE|SERIAL", help="for issue and revoke")
    parser.add_argument("--ca-dir", type=Path, required=True, metavar="DIR")
    parser.add_argument("--name", default="brushtail cluster CA", help="CA's CN (init)")
    parser.add_argument("--days", type=int, default=None, help="validity (init 3650, issue 825)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="where issue writes the files")
    parser.set_defaults(run=_pki)


def _add_trace(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from brushtaild.xdp import trace

    trace.add_parser(commands)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brushtail", description="Operate a brushtail DHCPv4 server."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_check_config(commands)
    _add_leases(commands)
    _add_daemon_commands(commands)
    _add_fastpath(commands)
    _add_pki(commands)
    _add_trace(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run: Handler = args.run
    try:
        return run(args)
    except BrokenPipeError:
        # `brushtail leases | head`: the reader has all it wanted. Point stdout at /dev/null
        # so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
