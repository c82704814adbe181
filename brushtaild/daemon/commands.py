"""What each control socket command answers (daemon/control.py carries the bytes).

Read-only commands read the engine and the daemon's own state. `lease-release` asks the
engine for a decision (Server.revoke), which the daemon commits, applies to the fast path
and logs like any other; `reload` is the daemon's SIGHUP reload. Answers are JSON values:
the `brushtail` command renders them for people and prints them as they are with --json.
The rendering helpers shared by both ends (lease rows, the fast path line) live here too,
so the daemon's STATUS= line, `brushtail status` and `brushtail leases --store` agree.
"""

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from brushtaild import __version__
from brushtaild.daemon import clock
from brushtaild.daemon.control import Args, CommandError
from brushtaild.dhcp.constants import RelayAgentSubOption
from brushtaild.dhcp.options import format_ip, format_mac, parse_ip
from brushtaild.engine.leases import Lease, LeaseState
from brushtaild.engine.server import Server
from brushtaild.replication.policy import EvictionRefused

if TYPE_CHECKING:
    from brushtaild.daemon.main import Daemon

DEFAULT_LIMIT = 100
# An answer is built in memory and written by the loop: a few megabytes at most. A whole
# million-lease table is for `brushtail leases --store`.
MAX_LIMIT = 10_000
NO_PEERS = "none configured (no replication section in the config)"
STATES = ("bound", "revoked", "released", "expired", "declined")


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """The outcome of the last reload, by SIGHUP or by `brushtail reload`."""

    at: float  # Unix seconds
    applied: bool
    detail: str  # why it was refused, or where the config came from


class RateWindow:
    """Answers per second of each path over the last few seconds: from the daemon's
    latest sample of its counters (taken every few seconds) to the counters now, or from
    the sample before when the latest is too recent to say much."""

    MIN_SPAN = 1.0

    def __init__(self) -> None:
        self._previous: tuple[float, float, float] | None = None
        self._last: tuple[float, float, float] | None = None

    def sample(self, now: float, slow: float, fast: float) -> None:
        self._previous, self._last = self._last, (now, slow, fast)

    def rates(self, now: float, slow: float, fast: float) -> dict[str, float] | None:
        base = self._last
        if base is None or now - base[0] < self.MIN_SPAN:
            base = self._previous
        if base is None or now <= base[0]:
            return None
        since, slow0, fast0 = base
        span = now - since
        return {
            "interval": round(span, 1),
            "slow": round((slow - slow0) / span, 1),
            # Pinned counters restart at zero with new maps: never a negative rate.
            "fast": round(max(fast - fast0, 0.0) / span, 1),
        }


def state_name(lease: Lease, now: float) -> str:
    # A bound lease past its expiry is expired even if the daemon has not rewritten it.
    if lease.state in (LeaseState.BOUND, LeaseState.REVOKED) and lease.expires <= now:
        return "expired"
    return lease.state.name.lower()


def lease_row(lease: Lease, now: float) -> dict[str, Any]:
    return {
        "address": format_ip(lease.address),
        "state": state_name(lease, now),
        "expires": lease.expires,
        "expires_in": max(round(lease.expires - now), 0),
        "mac": format_mac(lease.hwaddr),
        "pool": lease.pool,
        "client_id": lease.client_id.hex(),
        "vlans": ".".join(map(str, lease.vlans)),  # outer.inner; empty: untagged
        # The relay's, as stashed when the lease was bound; empty for a local client.
        "circuit_id": agent_id_text(lease.relay_sub_option(RelayAgentSubOption.CIRCUIT_ID)),
        "remote_id": agent_id_text(lease.relay_sub_option(RelayAgentSubOption.REMOTE_ID)),
        "updated": lease.updated,
    }


def agent_id_text(value: bytes | None) -> str:
    """A circuit-id or remote-id as config spells it: its text if printable, else 0x + hex."""
    if value is None:
        return ""
    if value.isascii() and value.decode().isprintable() and not value.startswith(b"0x"):
        return value.decode()
    return "0x" + value.hex()


def _agent_id(text: object) -> bytes:
    """A circuit-id filter, written as config writes one (docs/CONFIG.md: text, or 0x + hex)."""
    raw = str(text)
    if not raw.startswith("0x"):
        return raw.encode()
    try:
        return bytes.fromhex(raw[2:])
    except ValueError:
        raise CommandError(f"{raw!r} is not 0x followed by hex digits") from None


def select_leases(candidates: Iterable[Lease], args: Args, now: float, site: str) -> dict[str, Any]:
    """The `leases` answer: the candidates that pass every filter in `args` (mac, address,
    pool, state, circuit_id, vlan, site), in address order, `limit` of them, and how many
    matched. For the daemon's leases and, with --store, the store's."""
    limit = _limit(args.get("limit"))
    notes = []
    if args.get("site") not in (None, site):
        notes.append(f"--site matches this site ({site}) only: leases do not record theirs")
        candidates = []
    mac = _mac(args["mac"]) if args.get("mac") is not None else None
    address = _address(args["address"]) if args.get("address") is not None else None
    pool, state, vlan = args.get("pool"), args.get("state"), args.get("vlan")
    circuit = _agent_id(args["circuit_id"]) if args.get("circuit_id") is not None else None
    if state is not None and state not in STATES:
        raise CommandError(f"state must be one of {', '.join(STATES)}")
    matched = [
        lease
        for lease in candidates
        if (mac is None or lease.hwaddr == mac)
        and (address is None or lease.address == address)
        and (pool is None or lease.pool == pool)
        and (state is None or state_name(lease, now) == state)
        and (vlan is None or vlan in lease.vlans)
        and (circuit is None or lease.relay_sub_option(RelayAgentSubOption.CIRCUIT_ID) == circuit)
    ]
    matched.sort(key=lambda lease: lease.address)
    return {
        "matched": len(matched),
        "leases": [lease_row(lease, now) for lease in matched[:limit]],
        "notes": notes,
    }


def describe_fastpath(state: dict[str, Any]) -> str:
    """One line for people: the daemon's STATUS= line and `brushtail status`."""
    if state["state"] == "failed":
        return f"FAILED ({state['reason']})"
    if state["state"] != "up":
        return str(state["state"])
    text = f"{state['mode']} XDP, {state['entries']} entries"
    if "counters" in state:
        return f"{text}, counters unreadable ({state['counters']})"
    return f"{text}, {state['answered']} answered, {100 * state['hit_rate']:.0f}% hits"


def pool_rows(server: Server) -> list[dict[str, Any]]:
    subnets = {pool.name: pool.subnet for pool in server.config.pools}
    return [
        {
            "pool": name,
            "subnet": str(subnets[name]),
            "size": usage.total,
            "assigned": usage.assigned,
            "declined": usage.declined,
            "free": usage.total - usage.assigned,
            "utilization": round(usage.utilization, 4),
        }
        for name, usage in server.pool_usage().items()
    ]


def _mac(text: object) -> bytes:
    raw = bytes.fromhex(str(text).replace(":", "").replace("-", "")) if _hexlike(text) else b""
    if len(raw) != 6:
        raise CommandError(f"{text!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
    return raw


def _hexlike(text: object) -> bool:
    digits = str(text).replace(":", "").replace("-", "")
    return len(digits) == 12 and all(c in "0123456789abcdefABCDEF" for c in digits)


def _address(text: object) -> int:
    try:
        return parse_ip(str(text))
    except ValueError:
        raise CommandError(f"{text!r} is not an IPv4 address") from None


def _limit(value: object) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_LIMIT:
        raise CommandError(f"limit must be 1..{MAX_LIMIT}")
    return value


class Commands:
    """The command table of one daemon."""

    def __init__(self, daemon: "Daemon") -> None:
        self._daemon = daemon

    def table(self) -> dict[str, Callable[[Args], object]]:
        return {
            "status": self.status,
            "leases": self.leases,
            "lease-show": self.lease_show,
            "lease-release": self.lease_release,
            "pools": self.pools,
            "peers": self.peers,
            "sites-evict": self.sites_evict,
            "reload": self.reload,
        }

    def status(self, _args: Args) -> dict[str, Any]:
        daemon = self._daemon
        config = daemon.config
        last = daemon.last_reload
        return {
            "site": config.site,
            "interface": config.interface,
            "server_id": format_ip(config.server_id),
            "version": __version__,
            "uptime": round(clock.ticks() - daemon.started),
            "slowpath": {"state": "up"},
            "fastpath": daemon.fastpath_state(),
            "pools": pool_rows(daemon.server),
            "rates": daemon.rates.rates(clock.ticks(), *daemon.answers()),
            "peers": self.peers({}),
            "last_reload": asdict(last) if last is not None else None,
        }

    def leases(self, args: Args) -> dict[str, Any]:
        """Leases by filter, in address order: `limit` of them, and how many matched."""
        server = self._daemon.server
        if args.get("address") is not None:
            found = server.lease_at(_address(args["address"]))
            candidates = [found] if found is not None else []
        else:
            # A walk over every lease: a million take about a second of the loop.
            candidates = server.leases()
        return select_leases(candidates, args, clock.wall(), self._daemon.config.site)

    def _records(self, target: object) -> list[Lease]:
        """The records of an address, or of every client with a MAC address."""
        server = self._daemon.server
        if _hexlike(target):
            mac = _mac(target)
            return sorted(
                (lease for lease in server.leases() if lease.hwaddr == mac),
                key=lambda lease: lease.address,
            )
        found = server.lease_at(_address(target))
        return [found] if found is not None else []

    def lease_show(self, args: Args) -> list[dict[str, Any]]:
        records = self._records(args.get("target"))
        if not records:
            raise CommandError(f"no lease of {args.get('target')}")
        now = clock.wall()
        return [lease_row(lease, now) for lease in records]

    def lease_release(self, args: Args) -> dict[str, Any]:
        """Revokes the bound leases of an address or a MAC address."""
        target = args.get("target")
        bound = [r for r in self._records(target) if r.state is LeaseState.BOUND]
        revoked = []
        for lease in bound:
            decision = self._daemon.revoke(lease.address)
            if decision.drop is None:
                revoked.append(format_ip(lease.address))
        if not revoked:
            raise CommandError(f"no bound lease of {target}")
        return {"revoked": revoked}

    def pools(self, _args: Args) -> list[dict[str, Any]]:
        return pool_rows(self._daemon.server)

    def peers(self, _args: Args) -> dict[str, Any]:
        """Each peer (session, when last heard from) and this site's share of the blocks."""
        service = self._daemon.replication
        if service is None:
            return {"peers": [], "note": NO_PEERS}
        return {**service.describe(clock.wall()), "note": ""}

    def sites_evict(self, args: Args) -> dict[str, Any]:
        """Hand a lost site's blocks to the others; refused, with the reason, while it
        was heard from within `lost_after`."""
        site = args.get("site")
        if not isinstance(site, str):
            raise CommandError("which site? (sites evict NAME)")
        try:
            moved = self._daemon.evict(site)
        except (EvictionRefused, ValueError) as exc:
            raise CommandError(f"eviction of {site} refused: {exc}") from None
        return {"evicted": site, "blocks": moved}

    def reload(self, _args: Args) -> dict[str, Any]:
        return asdict(self._daemon.reload())
