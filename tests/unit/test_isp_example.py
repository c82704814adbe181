"""docs/examples/isp.yaml stays valid, and its classes keep the order docs/CONFIG.md ("A
complete ISP example") explains: the subscribers whose class the MAC and VLANs decide are
the kernel's, the set-top boxes (option 60) the slow path's. Served end to end by
tests/e2e/test_isp_example.py."""

from pathlib import Path

import pytest

from brushtaild.cli import main
from brushtaild.config.load import load_config
from brushtaild.engine.classes import UNDECIDED, class_of_lease

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "isp.yaml"


def test_check_config_accepts_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLE)]) == 0
    # native 14 * 256 - 1, residential 126 * 256, walled garden 245, business and
    # business-2 241 each, and the reserved address outside every range (198.19.129.5).
    assert capsys.readouterr() == (f"{EXAMPLE}: OK (5 pools, 36567 addresses)\n", "")


@pytest.mark.parametrize(
    ("mac", "vlans", "expected"),
    [
        ("02:00:00:00:01:01", (100,), "residential"),
        ("02:00:00:00:01:01", (300, 17), "residential"),
        ("02:0b:ad:00:00:01", (100,), "quarantine"),
        ("02:1a:2b:00:00:01", (), UNDECIDED),
    ],
    ids=["N:1", "QinQ", "quarantine", "set-top box"],
)
def test_the_lease_alone_tells_the_class_of_the_kernel_s_subscribers(
    mac: str, vlans: tuple[int, ...], expected: object
) -> None:
    classes = load_config(EXAMPLE).classes
    cls = class_of_lease(classes, bytes.fromhex(mac.replace(":", "")), vlans)
    assert (cls if cls is UNDECIDED or cls is None else cls.name) == expected
