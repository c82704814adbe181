"""XDP_TX on a veth is delivered only if the peer veth runs an XDP program too: the client
side gets this pass-everything program, as any XDP harness on veth pairs does."""

from tests.e2e.daemon import PYTHON
from tests.e2e.netns import CLIENT_IF, Link

_ATTACH = f"""
from bcc import BPF
b = BPF(text=b"int xdp_pass(struct xdp_md *ctx) {{ return XDP_PASS; }}")
BPF.attach_xdp(b"{CLIENT_IF}", b.load_func(b"xdp_pass", BPF.XDP), 0)
"""


def attach_client_pass(link: Link) -> None:
    """The program stays attached after this process exits, until the veth goes away."""
    link.run_in(link.client_ns, [PYTHON, "-c", _ATTACH])
