"""The `replication:` section: parsed values and defaults, each refusal naming its key, and
the files the daemon checks before it starts (load_daemon_config)."""

import os
from datetime import UTC, datetime
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
import yaml

from brushtaild.config.load import ConfigError, load_daemon_config, parse_config
from brushtaild.config.model import Peer, Replication, ReplicationTuning
from brushtaild.daemon.main import EX_CONFIG
from brushtaild.daemon.main import main as daemon_main
from brushtaild.replication import pki
from tests.unit.test_config import errors_of, example


def with_replication(section: object) -> dict[str, Any]:
    raw = example()
    raw["replication"] = section
    return raw


def peers(*names: str) -> list[dict[str, Any]]:
    return [{"site": name, "address": f"198.19.0.{i + 12}"} for i, name in enumerate(names)]


def test_absent_is_a_single_site() -> None:
    assert parse_config(example()).replication is None


def test_defaults_are_the_pki_roles_files() -> None:
    replication = parse_config(with_replication({"peers": peers("edge-b")})).replication
    assert replication == Replication(
        peers=(Peer("edge-b", IPv4Address("198.19.0.12"), 6767),),
        listen=(IPv4Address("0.0.0.0"), 6767),
        ca=Path("/etc/brushtail/pki/ca.crt"),
        certificate=Path("/etc/brushtail/pki/site.crt"),
        key=Path("/etc/brushtail/pki/site.key"),
        crl=None,
        tuning=ReplicationTuning(block_size=256, extension_bound=600, anti_entropy_interval=30),
    )


def test_every_key_is_read() -> None:
    section = {
        "listen": "198.19.0.11:7000",
        "ca": "/srv/pki/ca.pem",
        "certificate": "/srv/pki/me.pem",
        "key": "/srv/pki/me.key",
        "crl": "/srv/pki/ca.crl",
        "peers": [*peers("edge-b"), {"site": "edge-c", "address": "198.19.0.13", "port": 7001}],
        "tuning": {"block_size": 64, "extension_bound": 120, "anti_entropy_interval": 5},
    }
    replication = parse_config(with_replication(section)).replication
    assert replication is not None
    assert replication.listen == (IPv4Address("198.19.0.11"), 7000)
    assert (replication.ca, replication.crl) == (Path("/srv/pki/ca.pem"), Path("/srv/pki/ca.crl"))
    assert replication.peers[1] == Peer("edge-c", IPv4Address("198.19.0.13"), 7001)
    assert replication.tuning == ReplicationTuning(64, 120, 5)


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({}, [("replication.peers", "required key missing")]),
        ({"peers": []}, [("replication.peers", "must not be empty")]),
        ([], [("replication", "expected mapping, got list")]),
        (
            {"peers": peers("edge-b"), "peer": 1},
            [("replication.peer", "unknown key; did you mean 'peers'?")],
        ),
        (
            {"peers": peers("edge-a")},
            [("replication.peers[0].site", "'edge-a' is this site (`site`), not a peer")],
        ),
        (
            {"peers": peers("edge-b", "edge-b")},
            [
                (
                    "replication.peers[1].site",
                    "duplicate peer 'edge-b', already used by replication.peers[0]",
                )
            ],
        ),
        (
            {"peers": [*peers("edge-b"), {"site": "edge-c", "address": "198.19.0.12"}]},
            [
                (
                    "replication.peers[1].address",
                    "198.19.0.12:6767 is already replication.peers[0]; one peer per address "
                    "and port",
                )
            ],
        ),
        (
            {"peers": [{"site": "Edge_B", "address": "224.0.0.1", "port": 0}]},
            [
                (
                    "replication.peers[0].site",
                    "'Edge_B' must be 1-63 characters of a-z, 0-9 and '-'",
                ),
                ("replication.peers[0].port", "0 is out of range 1..65535"),
                ("replication.peers[0].address", "224.0.0.1 is not a unicast address"),
            ],
        ),
        (
            {"peers": [{"site": "edge-b"}]},
            [("replication.peers[0].address", "required key missing")],
        ),
        (
            {"peers": peers("edge-b"), "listen": "[::]:6767"},
            [("replication.listen", "'[::]:6767' is not 'a.b.c.d:port' (port 1-65535)")],
        ),
        (
            {"peers": peers("edge-b"), "key": "site.key"},
            [("replication.key", "'site.key' is not an absolute path")],
        ),
        (
            {"peers": peers("edge-b"), "tuning": {"block_size": 8, "anti_entropy": 1}},
            [
                (
                    "replication.tuning.anti_entropy",
                    "unknown key; did you mean 'anti_entropy_interval'?",
                ),
                ("replication.tuning.block_size", "8 is out of range 16..65536"),
            ],
        ),
        (
            {"peers": peers("edge-b"), "tuning": {"extension_bound": "10m"}},
            [
                (
                    "replication.tuning.extension_bound",
                    "expected integer (seconds), got string",
                )
            ],
        ),
    ],
)
def test_each_refusal_names_its_key(section: object, expected: list[tuple[str, str]]) -> None:
    assert errors_of(with_replication(section)) == expected


# -- the files, checked at start-up and reload ---------------------------------------------


@pytest.fixture
def site_files(tmp_path: Path) -> Path:
    now = datetime.now(UTC).replace(tzinfo=None)
    ca = pki.create_ca(tmp_path / "ca", "cluster", 30, now)
    ca.issue("edge-a", 10, tmp_path / "pki", now)
    return tmp_path / "pki"


def write_config(tmp_path: Path, files: Path) -> Path:
    section = {
        "peers": peers("edge-b"),
        "ca": str(files / "ca.crt"),
        "certificate": str(files / "site.crt"),
        "key": str(files / "site.key"),
    }
    path = tmp_path / "brushtail.yaml"
    path.write_text(yaml.safe_dump(with_replication(section)))
    return path


def test_the_daemon_takes_good_files(site_files: Path, tmp_path: Path) -> None:
    assert load_daemon_config(write_config(tmp_path, site_files)).replication is not None


def test_the_daemon_refuses_a_key_others_can_read(site_files: Path, tmp_path: Path) -> None:
    os.chmod(site_files / "site.key", 0o644)
    with pytest.raises(ConfigError) as info:
        load_daemon_config(write_config(tmp_path, site_files))
    assert info.value.errors == [
        (
            "replication.key",
            f"{site_files / 'site.key'}: mode 0644 gives group or others access to the "
            "private key; chmod 600 it",
        )
    ]


def test_the_daemon_refuses_missing_files(site_files: Path, tmp_path: Path) -> None:
    (site_files / "site.crt").unlink()
    with pytest.raises(ConfigError) as info:
        load_daemon_config(write_config(tmp_path, site_files))
    assert info.value.errors == [
        ("replication.certificate", f"{site_files / 'site.crt'}: No such file or directory")
    ]


def test_brushtaild_will_not_start_with_a_readable_key(
    site_files: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    os.chmod(site_files / "site.key", 0o640)
    assert daemon_main(["--config", str(write_config(tmp_path, site_files))]) == EX_CONFIG
    assert "replication.key: " in caplog.text and "chmod 600 it" in caplog.text
