"""Address blocks: the cut, the lookup, and the owner every site computes alike."""

import pytest

from brushtaild.replication.blocks import BlockLayout, LayoutError

RANGES = [("p", 100, 119), ("q", 200, 204)]


def test_ranges_are_cut_into_blocks_and_each_address_finds_its_own() -> None:
    layout = BlockLayout(["b", "a"], RANGES, block_size=8)
    assert [(b.first, b.last, b.pool) for b in layout.blocks()] == [
        (100, 107, "p"),
        (108, 115, "p"),
        (116, 119, "p"),
        (200, 204, "q"),
    ]
    for block in layout.blocks():
        for address in range(block.first, block.last + 1):
            assert layout.block_of(address) == block
    assert layout.block_of(99) is None
    assert layout.block_of(120) is None
    assert layout.block_of(205) is None


def test_every_site_computes_the_same_owners_whatever_the_order_of_its_list() -> None:
    one = BlockLayout(["a", "b", "c"], RANGES, 4)
    two = BlockLayout(["c", "a", "b"], RANGES, 4)
    assert one.digest == two.digest
    assert [one.initial_owner(b) for b in one.blocks()] == [
        two.initial_owner(b) for b in two.blocks()
    ]


def test_removing_a_site_moves_only_its_blocks() -> None:
    layout = BlockLayout([f"s{n}" for n in range(10)], [("p", 0, 9999)], 16)
    for block in layout.blocks():
        owner = layout.initial_owner(block)
        lost = "s3"
        successor = layout.successor(block, frozenset({lost}))
        assert successor == owner if owner != lost else successor != lost
    owners = {layout.initial_owner(b) for b in layout.blocks()}
    assert owners == set(layout.sites)  # 625 blocks spread over all ten


def test_the_digest_differs_when_the_layout_does() -> None:
    base = BlockLayout(["a", "b"], RANGES, 8).digest
    assert BlockLayout(["a", "b", "c"], RANGES, 8).digest != base
    assert BlockLayout(["a", "b"], RANGES, 4).digest != base
    assert BlockLayout(["a", "b"], RANGES[:1], 8).digest != base


@pytest.mark.parametrize("sites", [[], ["x" * 64], [str(n) for n in range(256)]])
def test_unusable_site_lists_are_refused(sites: list[str]) -> None:
    with pytest.raises(LayoutError):
        BlockLayout(sites, RANGES, 8)
