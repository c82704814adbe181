"""bench/report.py's renderer on fabricated scenarios: targets, ratios, reading, "not run"."""

from pathlib import Path
from typing import Any

from bench import report
from bench.scenario import Metric, Scenario, Series


def scenario(sid: str, metrics: dict[str, Metric], **extra: Any) -> Scenario:
    return Scenario(
        scenario=sid,
        title=f"title of {sid}",
        command=f"bench/{sid}.py --runs 3",
        started="2026-12-03T16:00:00+00:00",
        seconds=60.0,
        revision="abc1234",
        runs=3,
        metrics=metrics,
        **extra,
    )


def dora(
    bt_max: list[float | None], kea_max: list[float | None], durable: list[float | None]
) -> Scenario:
    return scenario(
        "dora",
        {
            "dora_max": Metric("DORA/s", "/s", "higher", {"brushtail": bt_max, "kea": kea_max}),
            "request_ack_light_ms": Metric(
                "REQUEST-ACK", "ms", "lower", {"brushtail": [1.0, 1.0, 1.0], "kea": [0.4] * 3}
            ),
            "fsync_ms": Metric("fsync", "ms", "lower", {"brushtail": [0.3, 0.3, 0.3]}),
            "durable": Metric("durable", "", "higher", {"brushtail": durable}),
        },
        series={
            "answered_vs_offered": Series(
                "offered/s",
                "DORA/s",
                {
                    "brushtail": [(500.0, [500.0, 499.0, 500.0]), (2000.0, [1990.0] * 3)],
                    "kea": [(500.0, [500.0] * 3), (2000.0, [1500.0, None, 1400.0])],
                },
            )
        },
    )


def full_set() -> dict[str, Scenario]:
    bt = "brushtail"
    return {
        "dora": dora([20_000.0] * 3, [10_000.0] * 3, [1.0, 1.0, 1.0]),
        "kernel": scenario(
            "kernel",
            {
                "offer_vs_floor": Metric("OFFER / floor", "x", "lower", {bt: [2.5, 2.4, 2.6]}),
                "ack_vs_floor": Metric("ACK / floor", "x", "lower", {bt: [1.5, 1.6, 1.4]}),
            },
        ),
        "mix": scenario(
            "mix",
            {
                "answers_per_s": Metric(
                    "answers/s", "/s", "higher", {bt: [120.0] * 3, "kea": [10.0] * 3}
                )
            },
        ),
        "latency": scenario(
            "latency", {"renew_p99_half_us": Metric("p99", "us", "lower", {bt: [40.0, 45.0, 41.0]})}
        ),
        "startup": scenario(
            "startup",
            {
                "ready_s": Metric("READY s", "s", "lower", {bt: [12.0, 11.0, 13.0]}),
                "rss_mib": Metric("RSS", "MiB", "lower", {bt: [300.0, 310.0, 305.0]}),
            },
        ),
    }


def statuses(goals: list[report.Target]) -> dict[str, str]:
    return {g.where: g.status for g in goals}


def test_targets_are_judged_from_the_figures() -> None:
    got = statuses(report.targets(full_set()))
    assert got == {
        "dora / dora_max, durable": "met",
        "dora / request_ack_light_ms, fsync_ms": "missed",  # 1.0 > 0.4 + 0.3
        "kernel / offer_vs_floor": "missed",
        "kernel / ack_vs_floor": "met",
        "mix / answers_per_s": "met",
        "latency / renew_p99_half_us": "met",
        "startup / ready_s": "missed",
        "startup / rss_mib": "met",
    }


def test_a_run_that_lost_acked_leases_misses_the_dora_target() -> None:
    scenarios = {"dora": dora([20_000.0] * 3, [10_000.0] * 3, [1.0, 0.0, 1.0])}
    (goal,) = [g for g in report.targets(scenarios) if g.where.startswith("dora / dora_max")]
    assert goal.status == "missed"
    assert "lost" in goal.by


def test_missing_scenarios_leave_targets_not_measured() -> None:
    got = statuses(report.targets({}))
    assert set(got.values()) == {"not measured"}
    assert len(got) == 8


def test_ratio_is_the_median_of_per_run_ratios() -> None:
    metric = Metric(
        "x", "/s", "higher", {"brushtail": [10.0, 40.0, 30.0], "kea": [10.0, 10.0, 30.0]}
    )
    # Per run 1, 4, 1: the median is 1, where the ratio of the medians would be 3.
    assert report.ratio(metric, "kea") == 1.0
    assert report.ratio(metric, "dnsmasq") is None


def test_the_reading_says_where_brushtail_loses() -> None:
    scenarios = {"dora": dora([5_000.0] * 3, [10_000.0] * 3, [1.0] * 3)}
    goals = report.targets(scenarios)
    text = "\n".join(report.reading(scenarios, goals, {}))
    assert "Where brushtail loses" in text
    assert "DORA/s: brushtail 5,000/s against kea's 10,000/s (2.00x worse" in text
    assert "REQUEST-ACK: brushtail 1.00 ms against kea's 0.40 ms (2.50x worse" in text
    assert "Missed: new DORA/s" in text


def test_a_script_that_did_not_run_renders_as_not_run() -> None:
    manifest = {
        "command": "bench/report.py --runs 3",
        "jobs": {
            "dora": {"script": "bench/slowpath.py", "scenarios": ["dora"], "status": "ok",
                     "seconds": 500.0, "loadavg_before": [1.0, 1.0, 1.0],
                     "loadavg_after": [1.5, 1.0, 1.0]},
            "subscribers": {
                "script": "bench/subscribers.py",
                "scenarios": ["renewals", "latency", "mix", "restart"],
                "status": "not run",
                "error": "exit status 1",
                "tail": "Traceback (most recent call last):\nValueError: boom",
            },
        },
    }  # fmt: skip
    scenarios = {"dora": dora([20_000.0] * 3, [10_000.0] * 3, [1.0] * 3)}
    text = report.render_markdown(manifest, scenarios, {})
    assert text.count("**Not run**: exit status 1.") == 4  # renewals, latency, mix, restart
    assert "ValueError: boom" in text
    assert "**Not run**: not selected (--only)." in text  # kernel, flood, startup: no job
    assert "| DORA/s (/s) `dora_max` | 20,000 | 10,000 | 2.00x |" in text
    assert "Generated by bench/report.py" in text


def test_render_writes_the_document_and_plots_from_a_results_directory(tmp_path: Path) -> None:
    results, docs = tmp_path / "results", tmp_path / "docs"
    results.mkdir()
    for sid, s in full_set().items():
        s.write(results / f"{sid}.json")
    (results / "broken.json").write_text("{")  # not a scenario id: ignored
    out = report.render(results, docs)
    text = out.read_text()
    assert "## Targets" in text
    assert "(bench/dora_answered_vs_offered.png)" in text
    pngs = sorted(p.name for p in (docs / "bench").glob("*.png"))
    assert pngs == [
        "dora_answered_vs_offered.png",
        "dora_latency.png",
        "latency_latency.png",
        "rates.png",
    ]


def test_a_missing_script_is_not_run(tmp_path: Path) -> None:
    job = report.Job("nope", "bench/does_not_exist.py", ("nope",), 60)
    entry = report.run_job(job, ["nope"], tmp_path, runs=1, quick=True)
    assert entry["status"] == "not run"
    assert "does not exist" in entry["error"]


def test_a_script_that_writes_no_scenario_is_not_run(tmp_path: Path) -> None:
    # bench/scenario.py is a module: run as a script it exits 0 and writes nothing.
    job = report.Job("quiet", "bench/scenario.py", ("quiet",), 60)
    entry = report.run_job(job, ["quiet"], tmp_path, runs=1, quick=False)
    assert entry["status"] == "not run"
    assert entry["error"] == "exit status 0"
    assert (tmp_path / "quiet.stdout").exists()
