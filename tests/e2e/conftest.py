"""Fixtures for end-to-end tests: namespaces, veth links, and a sweep of stale ones."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import netns
from tests.environment import unavailable

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session", autouse=True)
def _sweep_stale_namespaces() -> None:
    # A run killed mid-test (timeout, ^C twice) leaves its namespaces behind; later runs
    # would otherwise accumulate them. Namespaces of live runs are left alone.
    if netns.available() is None:
        netns.sweep_stale()


def _require_netns() -> None:
    reason = netns.available()
    if reason is not None:
        unavailable(reason)


@pytest.fixture
def link() -> Iterator[netns.Link]:
    """Server `sub0` 198.18.0.1/16 and client `cli0` with no address."""
    _require_netns()
    with netns.Link() as created:
        yield created


@pytest.fixture
def relay_link() -> Iterator[netns.Link]:
    """Like `link`, with 198.18.0.2/16 on `cli0` so the client side can act as a relay."""
    _require_netns()
    with netns.Link(client_ip=netns.RELAY_IP) as created:
        yield created
