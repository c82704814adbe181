"""The short fuzz run of the engine and the reply encoder (the long one: bench/fuzz.py).

Random inputs, each a sequence of requests that tests/fuzz/engine.py builds, mutates,
handles and checks; inputs that once failed are replayed on their own.
"""

import random

import pytest

from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import encode
from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.dhcp.message import Message
from brushtaild.engine.decisions import Ingress
from brushtaild.engine.server import Server
from tests.engine_helpers import SERVER, request
from tests.fuzz import engine

SHORT_RUN = 4000  # inputs, about two seconds
MAX_LEN = 512

# Inputs the long runs found (bench/fuzz.py), replayed from their bytes or rebuilt readably.
# This one stopped the engine with MessageTooLarge (review finding 2).
FINDING_2 = (
    "10c3246eab7f0bd4e32cdbf02d382ee033d2bccc0292b68b6b7a7decb319e1a4cc306934625fce2009b1"
    "3395b06175f88b7783df9c13ad27a19787f10043cc4ec7c850dfffea0b50d787d1d615f4d9befbc5a482"
    "2c9b4ab7c4a78d9d002f74dacbac1883a347729a52c6b07832589ac009f7ce5f63e0dca30bd065f805ea"
    "ed1a9e475b60b147d0a2c64f31f07f908ead25b00cc3ffa6404bd60712821961accbee86ccf33234165e"
    "7882135041fe05dbf3d0012db2449ce0d50241d9f405f46b74fcf9a9783fa6cbb9eeec8aca0f153f9ae6"
    "b2f4e583b8303b173a135883e3daee6a1b3acd1ae11504d92841386fa5aecb5f8d6b07a1a0bd79b91f39"
    "a5d60c7e79c039a4d1748641df2f5fdc08dd98080135b8ef642dda641dc93f"
)


def test_finding_2_input() -> None:
    engine.run(bytes.fromhex(FINDING_2))


def test_request_list_naming_an_option_twice_is_trimmed() -> None:
    """A relayed DISCOVER whose 255-byte option 82 leaves room only once the requested
    options are dropped, and whose option 55 asks for 28 twice (the engine once deleted 28
    twice from the reply: KeyError)."""
    circuit = opt.build_relay_agent_info([(1, bytes(253))])
    discover = request(
        MessageType.DISCOVER,
        1,
        giaddr=engine.RELAY_A,
        extra={
            OptionCode.PARAMETER_REQUEST_LIST: bytes([3, 6, 15, 28, 28]),
            OptionCode.RELAY_AGENT_INFO: circuit,
        },
    )
    state = engine.Run(Server(engine.CONFIG, [], engine.START))
    engine.step(state, encode(discover, 1500), Ingress(2, b"\x02" * 6, 0, 0), {})


def test_relay_information_longer_than_one_option_stays_in_the_options_field() -> None:
    """A relayed DISCOVER with 259 bytes of option 82 (two options on the wire, RFC 3396):
    the reply overloads, and the echo must not go into sname or file (RFC 3046 2.2; review
    finding 13)."""
    circuit = opt.build_relay_agent_info([(1, bytes(253)), (2, bytes(2))])
    discover = request(
        MessageType.DISCOVER,
        1,
        giaddr=engine.RELAY_A,
        extra={OptionCode.RELAY_AGENT_INFO: circuit},
    )
    state = engine.Run(Server(engine.CONFIG, [], engine.START))
    engine.step(state, encode(discover, 1500), Ingress(2, b"\x02" * 6, 0, 0), {})


def test_request_dropped_for_its_option_57_leaves_the_lease_alone() -> None:
    """A bound client asks for another address with an option 57 of one byte: the engine
    binds the new address and frees the old one, then finds 57 malformed and drops the
    request. The client, told nothing, keeps using the old address, now free to give."""
    state = engine.Run(Server(engine.CONFIG, [], engine.START))
    ingress = Ingress(2, b"\x02" * 6, 0, 0xFFFFFFFF)
    first, other = opt.parse_ip("198.18.1.0"), opt.parse_ip("198.18.1.3")
    select = request(MessageType.REQUEST, 1, requested=first, server_id=SERVER)
    counts: dict[str, int] = {}
    engine.step(state, encode(select), ingress, counts)
    assert counts == {"requests": 1, "reply:ack": 1}
    state.now += 3
    extra = {OptionCode.MAX_MESSAGE_SIZE: b"\x02"}
    move = request(MessageType.REQUEST, 1, requested=other, server_id=SERVER, extra=extra)
    engine.step(state, encode(move), ingress, counts)


def test_random_request_sequences_keep_the_rules() -> None:
    rng = random.Random(2026)
    requests = 0
    for _ in range(SHORT_RUN):
        data = rng.randbytes(rng.randrange(8, MAX_LEN))
        try:
            requests += engine.run(data).get("requests", 0)
        except Exception as exc:
            exc.add_note(f"fuzz input: {data.hex()}")
            raise
    assert requests > 2 * SHORT_RUN  # inputs are sequences, not single requests


# -- the checks themselves: each rule catches the reply that breaks it ------------------


def _offer_for(discover: Message) -> tuple[engine.Run, Message]:
    state = engine.Run(Server(engine.CONFIG, [], engine.START))
    decision = state.server.handle(discover, Ingress(2, b"\x02" * 6, 0, 0), state.now)
    [reply] = decision.replies
    return state, reply.message


def test_a_reply_the_engine_sends_passes() -> None:
    discover = request(MessageType.DISCOVER, 1)
    _, offer = _offer_for(discover)
    assert engine.check_reply(discover, encode(offer)).yiaddr == offer.yiaddr


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("xid", 99, "xid"),
        ("op", 1, "op"),
        ("yiaddr", SERVER, "OFFER of"),
        ("giaddr", 5, "giaddr"),
    ],
)
def test_a_broken_reply_is_caught(field: str, value: int, rule: str) -> None:
    discover = request(MessageType.DISCOVER, 1)
    _, offer = _offer_for(discover)
    setattr(offer, field, value)
    with pytest.raises(engine.RuleBroken, match=rule):
        engine.check_reply(discover, encode(offer))


def test_relay_information_not_last_is_caught() -> None:
    relay_info = b"\x01\x04port"
    discover = request(
        MessageType.DISCOVER,
        1,
        giaddr=engine.RELAY_A,
        extra={OptionCode.RELAY_AGENT_INFO: relay_info},
    )
    _, offer = _offer_for(discover)
    offer.options = {OptionCode.RELAY_AGENT_INFO: relay_info} | offer.options
    with pytest.raises(engine.RuleBroken, match="82 not last"):
        engine.check_reply(discover, encode(offer))


def test_an_address_acked_to_two_clients_is_caught() -> None:
    discover = request(MessageType.DISCOVER, 1)
    state, offer = _offer_for(discover)
    offer.options = dict(offer.options) | {OptionCode.MESSAGE_TYPE: bytes((MessageType.ACK,))}
    engine.record(state, request(MessageType.REQUEST, 1), offer)
    with pytest.raises(engine.RuleBroken, match="active for"):
        engine.record(state, request(MessageType.REQUEST, 2), offer)
