"""Settings every test directory shares."""

from hypothesis import settings

# Properties check invariants, never speed: on a loaded machine (CI, helpers' benchmarks) an
# example that takes longer than hypothesis's default 200 ms deadline is not a failure.
settings.register_profile("brushtail", deadline=None)
settings.load_profile("brushtail")
