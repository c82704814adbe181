"""Server.kernel_answers, which fills the maps deciding what a lease's pool, relay and
VLANs decide once per such shape, answers for every lease exactly as kernel_answer does,
over the example configurations and the VLAN pools of the unit tests."""

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brushtaild.config.load import load_config
from brushtaild.config.model import Config, VlanRange
from brushtaild.engine.leases import Lease, LeaseState
from brushtaild.engine.server import Server
from tests.engine_helpers import make_config, make_pool

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
NOW = 1_000_000.0


def _configs() -> dict[str, Config]:
    configs = {
        name: load_config(EXAMPLES / name)
        for name in sorted(p.name for p in EXAMPLES.glob("*.yaml"))
    }
    subscribers = replace(
        make_pool("subscribers", "100.64.0.0/16", "100.64.1.0", "100.64.1.9"),
        vlans=(VlanRange(100, 199),),
    )
    configs["plain"] = make_config()
    configs["vlans"] = make_config(make_pool(), subscribers)
    return configs


CONFIGS = _configs()


def _narrowed(config: Config) -> Config:
    pools = tuple(
        replace(pool, ranges=tuple(replace(r, last=r.first + 1) for r in pool.ranges))
        for pool in config.pools
    )
    return replace(config, pools=pools)


def _leases(config: Config) -> st.SearchStrategy[list[Lease]]:
    addresses = [r.first + i for pool in config.pools for r in pool.ranges for i in range(4)]
    names = [pool.name for pool in config.pools] + ["gone"]
    lease = st.builds(
        Lease,
        address=st.sampled_from(addresses),
        client_id=st.integers(0, 5).map(lambda n: b"\x01\x02\x00\x00\x00\x00" + bytes([n])),
        hwaddr=st.integers(0, 5).map(lambda n: b"\x02\x00\x00\x00\x00" + bytes([n])),
        pool=st.sampled_from(names),
        state=st.sampled_from(list(LeaseState)),
        expires=st.sampled_from([NOW - 1, NOW, NOW + 100, NOW + 4000]),
        updated=st.just(NOW - 10),
        prl=st.sampled_from([None, b"\x01\x03\x06"]),
        vlans=st.sampled_from([(), (100,), (150, 7), (300, 4000), (4000,)]),
        relay_info=st.sampled_from([b"", b"\x01\x08olt1/1/1"]),
        relay=st.sampled_from([0, 0x64400001]),
    )
    return st.lists(lease, max_size=12)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_kernel_answers_is_kernel_answer_for_every_lease(name: str, data: st.DataObject) -> None:
    config = CONFIGS[name]
    given_leases = data.draw(_leases(config))
    server = Server(config, given_leases, NOW - 20)
    if data.draw(st.booleans()):
        # A reload that narrows every pool: some records lie outside their pool now.
        server.reconfigured(_narrowed(config), NOW - 10)
    # The table's own records, and the given ones it may not hold (a client's older
    # record, a lease it dropped): each must be answered as kernel_answer answers it.
    leases = server.leases() + given_leases
    bulk = list(server.kernel_answers(leases, NOW))
    assert [lease for lease, _ in bulk] == leases
    assert [answer for _, answer in bulk] == [server.kernel_answer(lease, NOW) for lease in leases]
