"""Multi-site replication: the sans-IO core (clock, state, policy, codec, protocol).

Nothing here reads a clock, opens a socket or starts a thread: callers pass the time in
and carry the returned messages out, so a simulator can drive many sites in one process.
docs/STATE.md states the model and what it guarantees.
"""
