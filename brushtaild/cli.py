"""`brushtail`: the operator's command-line tool, separate from the daemon `brushtaild`.

Each subcommand is an `_add_<name>` function that registers its parser and sets `run` to
the function that carries it out; `main` only dispatches. Exit codes follow one rule across
subcommands: 0 success, 1 the input was read but is wrong, 2 usage errors or input that could
not be read at all (argparse uses 2 for usage errors too).
"""

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from brushtaild import __version__
from brushtaild.engine.allocator import PoolAllocator
from brushtaild.engine.config import ConfigError, load_config

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_UNREADABLE = 2

Handler = Callable[[argparse.Namespace], int]


def _check_config(args: argparse.Namespace) -> int:
    path: Path = args.file
    try:
        config = load_config(path)
    except ConfigError as exc:
        for where, reason in exc.errors:
            print(f"{where}: {reason}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    # Counted by the allocator itself, so the number matches what the daemon can lease.
    leasable = sum(PoolAllocator(p, config.server_id).total for p in config.pools)
    print(f"{path}: OK ({len(config.pools)} pools, {leasable} addresses)")
    return EXIT_OK


def _add_check_config(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "check-config",
        help="validate a configuration file the way the daemon does",
        description="Validate FILE exactly as brushtaild does at start-up and on SIGHUP. "
        "Exit 0 if valid, 1 if invalid (every problem is listed), 2 if unreadable.",
    )
    parser.add_argument("file", type=Path, metavar="FILE")
    parser.set_defaults(run=_check_config)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brushtail", description="Operate a brushtail DHCPv4 server."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_check_config(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run: Handler = args.run
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
