"""`unlearn bench engine|pipeline --json` as a machine would call it."""

import json
import subprocess
import sys
from pathlib import Path

UNLEARN = str(Path(sys.executable).with_name("unlearn"))


def test_bench_engine_json_prints_one_object_of_seconds():
    done = subprocess.run(
        [UNLEARN, "bench", "engine", "--json", "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    results = json.loads(done.stdout)
    guo = results["guo_setting"]
    assert guo["budget"] > 0
    assert 0.5 < guo["test_accuracy"] <= 1.0
    assert guo["worst_case_per_removal"] > guo["budget"]
    for row in results["batch_cost"]:
        assert row["adaptive (default) median s"] > 0
        assert row["sklearn retrain s"] > 0
    assert results["fidelity"]["relative_parameter_distance"] < 1e-2
    assert results["machine"]["cores"] >= 1


def test_unknown_command_is_a_clear_error_without_traceback():
    done = subprocess.run([UNLEARN, "bench", "nothing"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "No such command" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_bench_pipeline_json_applies_every_event_and_reports_rates():
    """The quick pipeline bench end to end: every phase runs and its JSON is well formed.

    ``--quick`` sends 1,000 events per phase (one second at each latency rate) on 5,000
    rows of Adult: what this proves (each phase applies every event it sent, the figures
    are where the report reads them) does not grow with the sizes of ``make bench``.
    """
    done = subprocess.run(
        [UNLEARN, "bench", "pipeline", "--json", "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    tput, lat = results["throughput"], results["latency"]
    # the bench only returns once the worker's applied sequence covers every event
    assert tput["events"] == 1000
    assert tput["versions_published"] >= 1
    # every latency event has a final receipt with a positive latency
    assert lat["events"] == 1000
    assert results["latency_low_rate"]["events"] == 250
    assert results["drain"]["events"] == results["faust_ceiling"]["events"] == 1000
    assert results["raw_ceiling"]["events"] == 1000
    bulk = results["bulk"]
    assert (bulk["requests"], bulk["records"]) == (10, 1000)
    # every named record was erased: the model holds the rest of the quick rows
    assert bulk["records_left"] == 5_000 - 200 - 1000
    assert results["dataset"]["n"] == 5_000
    assert 0 < lat["p50_s"] <= lat["p95_s"] <= lat["p99_s"] <= lat["max_s"]
    assert lat["target_rate"] == 1000.0
    # a watching consumer was handed the versions the latency run published
    assert lat["watch_versions"] >= 1, lat
    assert 0 <= lat["watch_p50_s"] <= lat["watch_p99_s"]
    assert results["baseline"]["sklearn_refit_s"] > 0
    # rates are numbers, or None when a fast machine left no window to measure them over
    for figures in (tput, results["drain"], results["faust_ceiling"], results["raw_ceiling"]):
        assert figures["events_per_second"] is None or figures["events_per_second"] >= 0
    assert bulk["records_per_second"] is None or bulk["records_per_second"] > 0
