"""The retrain policy's triggers, and the cron schedule."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pipeline.errors import ConfigError
from pipeline.policy import FitBaseline, ModelHealth, RetrainPolicy, Schedule

BASE = FitBaseline(version=1, score=0.95, n_records=1_000)


@pytest.mark.parametrize(
    ("health", "reason"),
    [
        (ModelHealth(True, 0.95, BASE, 0), "budget"),
        (ModelHealth(False, 0.92, BASE, 0), "accuracy"),
        (ModelHealth(False, 0.94, BASE, 0), None),
        (ModelHealth(False, 0.95, BASE, 101), "deleted_fraction"),
        (ModelHealth(False, 0.95, BASE, 100), None),
        (ModelHealth(False, None, None, 10_000), None),
        (ModelHealth(True, 0.5, BASE, 10_000), "budget"),  # the first trigger wins
    ],
)
def test_triggers(health: ModelHealth, reason: str | None) -> None:
    assert RetrainPolicy(accuracy_drop=0.02, deleted_fraction=0.1).decide(health) == reason


def test_baseline_round_trips_through_metadata() -> None:
    assert FitBaseline.from_dict(BASE.to_dict()) == BASE
    assert FitBaseline.from_dict(None) is None


def test_schedule() -> None:
    nightly = Schedule("0 3 * * *")
    at = datetime(2026, 1, 1, 2, 59, tzinfo=UTC)
    assert nightly.next_after(at) == datetime(2026, 1, 1, 3, 0, tzinfo=UTC)
    assert nightly.due(at, datetime(2026, 1, 1, 3, 0, 30, tzinfo=UTC))
    assert not nightly.due(
        datetime(2026, 1, 1, 3, 1, tzinfo=UTC), datetime(2026, 1, 1, 4, 0, tzinfo=UTC)
    )
    with pytest.raises(ConfigError, match="UNLEARN_RETRAIN_CRON"):
        Schedule("every night")


def test_a_class_that_the_model_now_fails_triggers_the_bias_watch():
    first = {"0": 0.95, "1": 0.90}
    fine = ModelHealth(False, 0.95, BASE, 0, {"0": 0.94, "1": 0.88}, first)
    biased = ModelHealth(False, 0.95, BASE, 0, {"0": 0.97, "1": 0.80}, first)
    policy = RetrainPolicy()
    assert policy.decide(fine) is None
    assert biased.worst_class_drop() == ("1", pytest.approx(0.10))
    assert policy.decide(biased) == "class_accuracy"  # the overall score held
    assert RetrainPolicy(class_accuracy_drop=0.2).decide(biased) is None
