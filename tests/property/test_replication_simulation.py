"""The simulated cluster (tests/sim/cluster.py): a few dozen seeded schedules of ten and
more sites; bench/simulate.py runs hundreds."""

from dataclasses import replace

import pytest

from tests.sim.cluster import SimConfig, Simulation


@pytest.mark.parametrize("seed", range(24))
def test_no_address_is_held_by_two_clients_and_the_sites_converge(seed: int) -> None:
    result = Simulation(seed, SimConfig()).run()
    assert result.violations == []
    assert result.converged
    assert result.acks > 0


@pytest.mark.parametrize("seed", range(3))
def test_a_larger_cluster_with_heavy_loss(seed: int) -> None:
    config = replace(SimConfig(), sites=16, clients=200, addresses=256, loss=0.3)
    result = Simulation(seed, config).run()
    assert result.violations == []
    assert result.converged


def test_the_schedules_exercise_what_they_claim_to() -> None:
    results = [Simulation(seed, SimConfig()).run() for seed in range(8)]
    assert sum(r.roams for r in results) > 0
    assert sum(r.evictions for r in results) > 0
    assert sum(r.handovers for r in results) > 0
    assert sum(r.naks for r in results) > 0
    assert sum(r.disks_lost for r in results) > 0


def test_evicting_live_sites_gives_conflicts_every_one_reported_and_the_sites_converge() -> None:
    """Evicting a site that is only partitioned is the documented way to get conflicts:
    then every address two clients held must be reported as a conflict, and the sites
    still converge."""
    config = replace(SimConfig(), operator_mistakes=True)
    results = [Simulation(seed, config).run() for seed in range(16)]
    assert [r.violations for r in results] == [[]] * len(results)
    assert all(r.converged for r in results)
    assert sum(len(r.double_held) for r in results) > 0


def test_a_seed_replays_its_schedule_exactly() -> None:
    one, two = (Simulation(7, SimConfig()).run() for _ in range(2))
    assert one == two
