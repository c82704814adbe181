"""Multi-site replication: the sans-IO core (clock, state, policy, codec, protocol).

Nothing here reads a clock, opens a socket or starts a thread: callers pass the time in
and carry the returned messages out, so a simulator can drive many sites in one process.
docs/STATE.md states the model and what it guarantees.

Modules, one job each: `hlc` (the hybrid logical clock), `blocks` (address blocks and
their initial owners), `state` (the CRDT and its merge), `params` (the settings), `policy`
(the safety rules), `wire` (the codec), `digest` (anti-entropy hashes), `replica` (one
site's protocol, gluing the rest).

How the daemon drives a `Replica` (one per site, built from the persisted `Snapshot`):
- Allocation: the lease table takes a new address for a client only where
  `may_allocate(address, client_id, now)` (the site's own blocks, `Policy.owned_blocks`,
  past the previous client's expiry plus the bounds), and gives a client whose address is
  another site's a lease ending at most at `extension_limit(address, client_id, now)`,
  NAKing it when that is not in the future.
- Every lease the table writes (bind, renewal, release, decline, revocation) goes to
  `local_update(lease, now)`; the returned messages go to their peers.
- Every message from a peer goes to `receive(peer, payload, now)`: its `messages` are
  sent, its `bindings` (`Binding.lease()`) enter the lease table and the fast-path maps
  like local leases, its `conflicts` withdraw each loser from the fast-path maps (the
  table then NAKs that client, the address being the winner's) and are counted.
- The XDP fast path renews by itself: a lease whose address is another site's may enter
  its maps only if the kernel can be held to `extension_limit` (or it stays on the slow
  path), else a renewal there would go past the bound the guarantee rests on.
- `tick(now)` runs from the daemon's timer; `counters` feed the metrics; `snapshot()` is
  what the lease store persists with each batch, and the replica restarts from it.
"""
