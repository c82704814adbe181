"""`brushtail`: the operator's command-line tool, separate from the daemon `brushtaild`.

Each subcommand is an `_add_<name>` function that registers its parser and sets `run` to
the function that carries it out; `main` only dispatches. Exit codes follow one rule across
subcommands: 0 success, 1 the input was read but is wrong, 2 usage errors or input that could
not be read at all (argparse uses 2 for usage errors too).
"""

import argparse
import contextlib
import ctypes
import os
import sys
from collections.abc import Callable
from pathlib import Path

from brushtaild import __version__
from brushtaild.config.load import DEFAULT_CONFIG, ConfigError, load_config
from brushtaild.config.model import Config
from brushtaild.config.reload import restart_keys
from brushtaild.daemon import clock
from brushtaild.dhcp.options import format_ip, format_mac
from brushtaild.engine.allocator import PoolAllocator
from brushtaild.engine.leases import Lease, LeaseState
from brushtaild.store.lease_store import StoreError, read_snapshot

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_UNREADABLE = 2

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
    leasable = sum(PoolAllocator(p, config.server_id).total for p in config.pools)
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
    try:
        return load_config(args.config)
    except (ConfigError, OSError) as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return None


def _leases(args: argparse.Namespace) -> int:
    state_dir: Path | None = args.state_dir
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
    if not args.all:
        leases = [lease for lease in leases if lease.active(now)]
    print(f"{'ADDRESS':<16} {'STATE':<9} {'EXPIRES IN':>10}  {'MAC':<17}  {'POOL':<12} CLIENT-ID")
    for lease in leases:
        remaining = f"{lease.expires - now:.0f}s" if lease.expires > now else "-"
        print(
            f"{format_ip(lease.address):<16} {_state_name(lease, now):<9} {remaining:>10}  "
            f"{format_mac(lease.hwaddr):<17}  {lease.pool:<12} {lease.client_id.hex() or '-'}"
        )
    return EXIT_OK


def _state_name(lease: Lease, now: float) -> str:
    # A bound lease past its expiry is expired even if the daemon has not rewritten it.
    if lease.state is LeaseState.BOUND and lease.expires <= now:
        return "expired"
    return lease.state.name.lower()


def _add_leases(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "leases",
        help="list the leases in the lease store",
        description="List leases from the lease store, read-only (safe while brushtaild "
        "runs). By default only bound leases and quarantined addresses; --all adds released "
        "and expired ones, which the server remembers to give clients their old address.",
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, metavar="FILE")
    parser.add_argument("--state-dir", type=Path, help="read this state dir, not the config's")
    parser.add_argument("--all", action="store_true", help="include released and expired")
    parser.set_defaults(run=_leases)


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
    pins = loader.PinDir(
        settings.pin_dir, loader.Limits(settings.max_subscribers, settings.rate_limit_clients)
    )
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
    _add_fastpath(commands)
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
