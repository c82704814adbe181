"""The kernel answers clients of a pool with every kind of configured option exactly as
the slow path does; a pool whose rendered options outgrow a template (192 bytes) is left
to the slow path."""

from dataclasses import replace

import pytest

from brushtaild.config.model import Config, option_set
from brushtaild.xdp import maps
from brushtaild.xdp.loader import Program
from tests.bpf.harness import (
    XDP_PASS,
    XDP_TX,
    Fastpath,
    RenewalLog,
    assert_same_reply,
    default_config,
)
from tests.bpf.test_differential import (
    KINDS,
    PRLS,
    LeaseSetup,
    Request,
    establish,
    request_frame,
)
from tests.engine_helpers import every_option


def with_options(config: Config, extra: dict[int, bytes] | None = None) -> Config:
    options = option_set({**every_option().as_dict(), **(extra or {})})
    pools = tuple(replace(pool, options=options) for pool in config.pools)
    return replace(config, pools=pools)


@pytest.mark.parametrize("prl", ["none", "dhclient", "udhcpc", "long"])
@pytest.mark.parametrize("network", ["direct", "relay A", "link B"])
@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
def test_every_option_answered_as_the_slow_path(
    program: Program, renewal_log: RenewalLog, kind: tuple[int, str], network: str, prl: str
) -> None:
    mtype, rfc_state = kind
    fastpath = Fastpath(program, renewal_log, with_options(default_config()))
    state = LeaseSetup("bound", "named", prl, network)
    lease = establish(fastpath, state)
    frame = request_frame(fastpath, state, lease, Request(mtype, rfc_state, xid=7))
    run = fastpath.run(frame)
    assert run.retval == XDP_TX
    reply = assert_same_reply(run, frame, fastpath.slow_path(frame, apply=False))
    wanted = PRLS[prl]
    configured = every_option().as_dict()
    sent = {code for code in configured if wanted is None or code in wanted}
    assert sent and sent <= set(reply.message.options)
    for code in sent:
        assert reply.message.options[code] == configured[code]


def test_options_beyond_a_template_leave_the_client_to_the_slow_path(
    program: Program, renewal_log: RenewalLog
) -> None:
    """No request list: every option, 100 bytes of code 224 included, more than the
    program copies. The lease gets no entry; the kernel passes (a miss) and the slow path
    answers with all of it."""
    config = with_options(default_config(), {224: bytes(100)})
    fastpath = Fastpath(program, renewal_log, config)
    state = LeaseSetup("bound", "named", "none", "direct")
    lease = establish(fastpath, state)
    assert lease is not None and fastpath.sync.entries == 0 and fastpath.sync.skipped >= 1
    frame = request_frame(fastpath, state, lease, Request(3, "renewing", xid=7))
    assert fastpath.results_of(frame) == {maps.Result.MISS: 1}
    assert fastpath.run(frame).retval == XDP_PASS
    decision = fastpath.slow_path(frame, apply=False)
    assert decision is not None and len(decision.replies) == 1
    assert decision.replies[0].message.options[224] == bytes(100)
