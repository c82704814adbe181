"""A pool's configured options in the engine's replies: which ones go, in which order, and
which leases the fast path's templates can carry."""

from dataclasses import replace

from brushtaild.dhcp import options as opt
from brushtaild.dhcp.constants import OPTIONS_OFFSET, MessageType, OptionCode
from brushtaild.engine.server import Server
from brushtaild.xdp import maps
from brushtaild.xdp.sync import MapSync, Planner
from tests.engine_helpers import (
    INGRESS,
    SERVER,
    every_option,
    make_config,
    make_pool,
    only_reply,
    option_set,
    request,
)
from tests.unit.test_xdp_maps import NOW, FakeProgram, bind

POOL = replace(make_pool(), options=every_option())
# What every reply carries whatever the client asked for, in the order the codec writes it.
LEASE_OPTIONS = [
    OptionCode.MESSAGE_TYPE,
    OptionCode.SERVER_ID,
    OptionCode.LEASE_TIME,
    OptionCode.RENEWAL_TIME,
    OptionCode.REBINDING_TIME,
    OptionCode.SUBNET_MASK,
]


def offer(server: Server, prl: bytes | None) -> dict[int, bytes]:
    extra = {OptionCode.PARAMETER_REQUEST_LIST: prl} if prl is not None else {}
    decision = server.handle(request(MessageType.DISCOVER, 1, extra=extra), INGRESS, 0.0)
    return only_reply(decision).options


def test_a_client_without_a_request_list_gets_every_option_in_code_order() -> None:
    options = offer(Server(make_config(POOL), [], 0.0), None)
    configured = [3, 6, 15, 26, 42, 43, 119, 121, 224]
    assert list(options) == [*LEASE_OPTIONS, OptionCode.BROADCAST_ADDRESS, *configured]
    assert options[OptionCode.NTP_SERVERS] == opt.ips([SERVER, SERVER + 1])
    assert options[OptionCode.DOMAIN_SEARCH] == b"\x03isp\x07example\x00\x07example\x03net\x00"
    assert options[OptionCode.CLASSLESS_STATIC_ROUTE] == bytes.fromhex("00c612000118cb0071c6120003")
    assert options[OptionCode.VENDOR_SPECIFIC] == bytes.fromhex("0104c6120001") + b"\x02\x03sip"
    assert options[OptionCode.INTERFACE_MTU] == b"\x05\xd4"
    assert options[224] == b"\x0a\x0b"


def test_a_request_list_gets_what_it_names_in_its_order() -> None:
    """RFC 2131 4.3.1: the requested options the server has, and no others beyond the
    lease's own; a code named twice is sent once, a code not configured not at all."""
    prl = bytes([121, 42, 1, 119, 121, 224, 250, 43, 26])
    options = offer(Server(make_config(POOL), [], 0.0), prl)
    assert list(options) == [*LEASE_OPTIONS, 121, 42, 119, 224, 43, 26]


def test_pool_options_override_nothing_the_server_owns() -> None:
    """The pool's own keys and `options:` give different codes by construction (the loader
    puts 3, 6 and 15 in the keys); the lease's and server's options stay the server's."""
    options = offer(Server(make_config(POOL), [], 0.0), None)
    assert options[OptionCode.ROUTERS] == opt.ip(SERVER)
    assert options[OptionCode.DOMAIN_NAME] == b"example.net"
    assert options[OptionCode.SERVER_ID] == opt.ip(SERVER)


def test_the_templates_the_fast_path_copies_are_the_slow_paths_bytes() -> None:
    """The fast path writes a template's bytes where the slow path writes its options."""
    server = Server(make_config(POOL), [], 0.0)
    for n, prl in enumerate((None, bytes([1, 3, 6, 15, 26, 42, 119, 121])), start=1):
        template = server.template(POOL.name, MessageType.OFFER, prl)
        extra = {OptionCode.PARAMETER_REQUEST_LIST: prl} if prl is not None else {}
        decision = server.handle(request(MessageType.DISCOVER, n, extra=extra), INGRESS, 0.0)
        payload = decision.replies[0].payload
        end = OPTIONS_OFFSET + len(template.wire)
        assert payload[OPTIONS_OFFSET:end] == template.wire and payload[end] == 0xFF
        assert len(template.wire) <= maps.TEMPLATE_MAX


def test_a_pool_whose_options_outgrow_a_template_stays_on_the_slow_path() -> None:
    """The program copies at most TEMPLATE_MAX bytes of options: a pool whose rendered
    options are longer gets no kernel entry, so the slow path answers its clients; a
    client whose request list leaves the long option out still gets one."""
    fat = replace(POOL, options=option_set({**every_option().as_dict(), 224: bytes(100)}))
    server = Server(make_config(fat), [], NOW)
    program = FakeProgram()
    sync = MapSync(program, server)
    sync.apply([bind(server, 1, prl=None), bind(server, 2, prl=bytes([1, 3, 6, 121]))], NOW)
    assert len(server.template(fat.name, MessageType.ACK, None).wire) > maps.TEMPLATE_MAX
    assert sync.entries == 1 and sync.skipped == 1
    planner = Planner()
    plan = planner.plan(server, NOW, 10, lambda: None)
    assert len(plan) == 1 and planner.skipped == 1
    assert all(len(wire) <= maps.TEMPLATE_MAX for wire in planner.writes.values())
