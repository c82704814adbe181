"""Which keys a reload applies: brushtaild/config/reload.py, and docs/CONFIG.md and the
Ansible role agreeing with it."""

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from brushtaild.config.load import parse_config
from brushtaild.config.model import Config, FastPath, Limits, Pool
from brushtaild.config.reload import KEYS, RELOADABLE, reloadable, restart_keys
from tests.unit.test_config import example

REPO = Path(__file__).resolve().parents[2]
CONFIG_MD = REPO / "docs" / "CONFIG.md"
ROLE = REPO / "ansible" / "roles" / "brushtail"

# One changed value per key, as written in the file. A key added to the model fails
# test_every_key_has_a_change until it is added here, and then needs a restart unless
# reload.py lists it.
CHANGES: dict[str, object] = {
    "site": "edge-b",
    "interface": "sub1",
    "server_id": "198.18.0.2",
    "pools": [{**example()["pools"][0], "lease_time": 7200}],
    "state_dir": "/srv/brushtail",
    "offer_hold": 10,
    "decline_hold": 60,
    "metrics_listen": "127.0.0.1:9968",
    "control_socket": "/run/brushtail-b/control.sock",
    "log_level": "debug",
    "fastpath.enabled": False,
    "fastpath.xdp_mode": "generic",
    "fastpath.pin_dir": "/sys/fs/bpf/other",
    "fastpath.max_subscribers": 2048,
    "fastpath.rate_limit": 5,
    "fastpath.rate_burst": 7,
    "fastpath.rate_limit_clients": 4096,
    "fastpath.relay_rate_limit": 500,
    "trusted_relays": ["198.19.0.1", "198.19.8.0/22"],
    "reservations": [{"mac": "52:54:00:00:00:01", "address": "198.18.0.10"}],
    "classes": [{"name": "iptv", "match": {"oui": "00:1a:2b"}, "lease_time": 600}],
    "limits.max_leases_per_circuit": 2,
    "limits.max_leases_per_remote_id": 3,
    "limits.max_leases_per_vlan": 4,
    "limits.max_offers_per_relay": 64,
    "limits.max_offers_per_circuit": 2,
    "limits.max_offers_per_vlan": 3,
    "replication": {"peers": [{"site": "edge-b", "address": "198.19.0.12"}]},
}
# What the daemon could swap in place before this list had a home (daemon/main.py and the
# role's vars): kept as the regression reference.
NEEDS_RESTART = {
    "replication",
    "site",
    "interface",
    "server_id",
    "state_dir",
    "metrics_listen",
    "control_socket",
    "fastpath.enabled",
    "fastpath.xdp_mode",
    "fastpath.pin_dir",
    "fastpath.max_subscribers",
    "fastpath.rate_limit_clients",
}


def changed(key: str) -> Config:
    raw: dict[str, Any] = example()
    block, _, inner = key.partition(".")
    if inner:
        raw[block] = {inner: CHANGES[key]}
    else:
        raw[key] = CHANGES[key]
    return parse_config(raw)


def test_every_key_has_a_change() -> None:
    assert set(CHANGES) == set(KEYS)


def test_reloadable_names_only_keys_of_the_model() -> None:
    assert set(RELOADABLE) <= set(KEYS)


@pytest.mark.parametrize("key", KEYS)
def test_a_change_needs_a_restart_exactly_when_not_reloadable(key: str) -> None:
    old, new = parse_config(example()), changed(key)
    assert old != new
    assert restart_keys(old, new) == ([] if reloadable(key) else [key])
    assert (key in NEEDS_RESTART) is not reloadable(key)


def test_restart_keys_are_listed_in_model_order() -> None:
    raw: dict[str, Any] = example()
    raw["fastpath"] = {"pin_dir": "/sys/fs/bpf/other", "rate_limit": 1}
    raw["interface"] = "sub1"
    raw["site"] = "edge-b"
    assert restart_keys(parse_config(example()), parse_config(raw)) == [
        "site",
        "interface",
        "fastpath.pin_dir",
    ]


def test_an_unchanged_file_reloads() -> None:
    assert restart_keys(parse_config(example()), parse_config(example())) == []


# -- docs/CONFIG.md ------------------------------------------------------------------------


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else None]


def _reload_lines(section: str) -> dict[str, str]:
    """`### key` heading -> the text of its `- Reload:` line."""
    found: dict[str, str] = {}
    for block in re.split(r"\n### ", section)[1:]:
        heading, _, body = block.partition("\n")
        key = re.fullmatch(r"`(\w+)`", heading)
        if key is None:  # a subsection that is not a key ("Always excluded addresses")
            continue
        line = re.search(r"^- Reload: (.*)$", body, re.M)
        assert line is not None, f"{key[1]} has no Reload: line"
        found[key[1]] = line[1]
    return found


def _fastpath_table(section: str) -> dict[str, str]:
    """The fastpath table's key column -> its reload column."""
    header = "| key | type | default | reload | meaning |"
    assert header in section
    rows = re.findall(r"^\| `(\w+)` \|[^|]*\|[^|]*\| (\w+) \|", section, re.M)
    return dict(rows)


def _documented_verdicts() -> dict[str, str]:
    text = CONFIG_MD.read_text()
    top = _reload_lines(_section(text, "Top-level keys"))
    pool = _reload_lines(_section(text, "Pool keys"))
    table = _fastpath_table(_section(text, "Top-level keys"))
    assert set(top) == {f.name for f in fields(Config)}, "top-level keys documented"
    assert set(pool) == {f.name for f in fields(Pool)}, "pool keys documented"
    assert set(table) == {f.name for f in fields(FastPath)}, "fastpath keys documented"
    assert top.pop("fastpath") == "per key, in the table below"
    # A pool key is applied with `pools`, so each must say what `pools` says.
    assert set(pool.values()) == {top["pools"]}, pool
    words = {"applied": "reload", "needs a restart": "restart"}
    verdicts = {key: words.get(line, line) for key, line in top.items()}
    # `limits` is applied as a whole: each of its keys says what it says.
    limits = verdicts.pop("limits")
    verdicts |= {f"limits.{f.name}": limits for f in fields(Limits)}
    verdicts |= {f"fastpath.{key}": words.get(v, v) for key, v in table.items()}
    return verdicts


def test_config_md_marks_each_key_as_the_reload_module_does() -> None:
    verdicts = _documented_verdicts()
    assert set(verdicts) == set(KEYS)
    expected = {key: "reload" if reloadable(key) else "restart" for key in KEYS}
    assert verdicts == expected


# -- the Ansible role ----------------------------------------------------------------------


def test_the_role_asks_brushtail_and_keeps_no_key_list() -> None:
    tasks = yaml.safe_load((ROLE / "tasks" / "configure.yml").read_text())
    argvs = [
        task["ansible.builtin.command"]["argv"]
        for block in tasks
        for task in block.get("block", [block])
        if "ansible.builtin.command" in task
    ]
    assert ["brushtail", "check-config", "--compare"] in [argv[:3] for argv in argvs]
    role_text = "\n".join(
        path.read_text() for path in (ROLE / "vars" / "main.yml", ROLE / "tasks" / "configure.yml")
    )
    # The verdict is taken from the command's output, never from key names in YAML.
    assert "stdout != 'reload'" in role_text
    for key in KEYS:
        name = key.rpartition(".")[2]
        assert not re.search(rf"[\[,]\s*{name}\s*[,\]]", role_text), f"{key} listed in the role"
