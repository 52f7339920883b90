"""`unlearn bench engine --json` as a machine would call it."""

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
