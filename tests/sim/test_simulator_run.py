"""The simulator run of issue 10 as part of the full test run (scripts/test.sh; the fast
check runs the few dozen schedules of tests/property/test_replication_simulation.py): 200
seeded schedules of ten sites, with partitions, loss, reordering, duplication, delays,
crashes, lost disks, roaming, handovers and evictions. After every step no address is
held by two clients; after the network heals, every site converges. bench/simulate.py runs
as many as asked, on clusters of any size, and reports steps per second."""

from tests.sim.cluster import SimConfig, Simulation

SCHEDULES = range(1000, 1200)  # seeds, apart from those of the property tests


def test_two_hundred_schedules_of_ten_sites() -> None:
    config = SimConfig()
    assert config.sites >= 10
    failed = []
    for seed in SCHEDULES:
        result = Simulation(seed, config).run()
        if result.violations or not result.converged:
            failed.append((seed, result.violations[:3], result.converged))
    assert failed == [], f"{len(failed)} of {len(SCHEDULES)} schedules failed: {failed[:5]}"
