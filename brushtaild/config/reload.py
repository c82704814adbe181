"""Which configuration keys a reload (SIGHUP) applies to a running daemon.

This is the only list of them. The daemon refuses a reload that changes any other key;
`brushtail check-config --compare OLD NEW` prints the same verdict for the Ansible role, and
docs/CONFIG.md marks each key the same way (tests/unit/test_config_reload.py checks both).
"""

from dataclasses import fields, is_dataclass
from functools import reduce

from brushtaild.config.model import Config

# What a running daemon can swap in place: the engine is rebuilt with the new pools and holds,
# the fast path re-renders its templates and takes the new rate limit. Every other key names
# the daemon's identity, sockets, files or kernel maps. Written as the reloadable ones, so a
# key added to the model needs a restart until someone makes it reloadable and lists it here.
RELOADABLE = frozenset(
    {
        "pools",
        "offer_hold",
        "decline_hold",
        "log_level",
        "trusted_relays",
        "reservations",
        "classes",
        "fastpath.rate_limit",
        "fastpath.rate_burst",
        "fastpath.relay_rate_limit",
        "limits.max_leases_per_circuit",
        "limits.max_leases_per_remote_id",
        "limits.max_leases_per_vlan",
        "limits.max_offers_per_relay",
        "limits.max_offers_per_circuit",
        "limits.max_offers_per_vlan",
    }
)


def _key_paths(cls: type, prefix: str = "") -> tuple[str, ...]:
    paths: list[str] = []
    for f in fields(cls):
        # A nested settings block (`fastpath`) is compared key by key; a list (`pools`) and
        # everything else as one value.
        if isinstance(f.type, type) and is_dataclass(f.type):
            paths += _key_paths(f.type, f"{prefix}{f.name}.")
        else:
            paths.append(prefix + f.name)
    return tuple(paths)


# Every key a reload compares, in the model's order: `site`, ..., `fastpath.enabled`, ...
KEYS = _key_paths(Config)


def reloadable(key: str) -> bool:
    """Whether a reload applies a change of `key`, a path of KEYS such as `fastpath.pin_dir`."""
    return key in RELOADABLE


def _value(config: Config, key: str) -> object:
    return reduce(getattr, key.split("."), config)


def restart_keys(old: Config, new: Config) -> list[str]:
    """The keys that differ between `old` and `new` and only a restart applies; empty when a
    reload can take `new` as it is."""
    return [key for key in KEYS if not reloadable(key) and _value(old, key) != _value(new, key)]
