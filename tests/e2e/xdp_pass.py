"""XDP_TX on a veth is delivered only if the peer veth runs an XDP program too: the client
side gets this pass-everything program, as any XDP harness on veth pairs does.

`python -m tests.e2e.xdp_pass IFNAME [--generic]` attaches it to IFNAME in the current
network namespace (scripts/demo.sh runs it with `ip netns exec`); it needs BCC, so Debian's
python3.
"""

import argparse
import subprocess
import sys
from collections.abc import Sequence

from tests.e2e.daemon import PYTHON
from tests.e2e.netns import CLIENT_IF, Link

# linux/if_link.h
XDP_FLAGS_SKB_MODE = 1 << 1

_ATTACH = """
import sys
from bcc import BPF
b = BPF(text=b"int xdp_pass(struct xdp_md *ctx) { return XDP_PASS; }")
BPF.attach_xdp(sys.argv[1].encode(), b.load_func(b"xdp_pass", BPF.XDP), int(sys.argv[2]))
"""


def attach_argv(ifname: str, *, generic: bool = False, python: str = PYTHON) -> list[str]:
    """The command that attaches the pass program to `ifname` (native mode unless
    `generic`); the program stays attached after it exits, until the interface goes."""
    return [python, "-c", _ATTACH, ifname, str(XDP_FLAGS_SKB_MODE if generic else 0)]


def attach_client_pass(link: Link) -> None:
    link.run_in(link.client_ns, attach_argv(CLIENT_IF))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.xdp_pass", description=__doc__)
    parser.add_argument("ifname")
    parser.add_argument("--generic", action="store_true", help="generic (skb) mode")
    args = parser.parse_args(argv)
    command = attach_argv(args.ifname, generic=args.generic, python=sys.executable)
    return subprocess.run(command, check=False, timeout=60).returncode


if __name__ == "__main__":
    raise SystemExit(main())
