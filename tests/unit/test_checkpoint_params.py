"""Every constructor parameter of an engine survives a checkpoint, whatever its value."""

import inspect

import numpy as np
import pytest

from pipeline import LogisticUnlearner, RidgeUnlearner
from pipeline.store.codec import decode_state, encode_state

#: A value other than the default for every constructor parameter. A new parameter must be
#: added here (the test checks the list is complete), and so is tested by the round trip.
NON_DEFAULT = {
    LogisticUnlearner: {
        "lam": 2e-3,
        "sigma": 3.0,
        "epsilon": 0.5,
        "delta": 1e-3,
        "seed": 7,
        "method": "influence",
        "certificate": "bound",
        "fit_intercept": True,
        "tol": 1e-8,
        "max_iter": 40,
        "drift_tol": 0.3,
        "max_corrections": 4,
        "measure_above": 0.25,
    },
    RidgeUnlearner: {
        "alpha": 2.0,
        "fit_intercept": False,
        "sigma": 0.5,
        "epsilon": 0.5,
        "delta": 1e-3,
        "seed": 7,
    },
}


def _parameters(cls):
    return {
        name: p
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


@pytest.mark.parametrize("cls", [LogisticUnlearner, RidgeUnlearner], ids=lambda c: c.__name__)
@pytest.mark.parametrize("through_codec", [False, True], ids=["dict", "redis-encoding"])
def test_every_parameter_survives_a_checkpoint(cls, through_codec, cancer):
    X, y = cancer
    values = NON_DEFAULT[cls]
    declared = _parameters(cls)
    assert sorted(values) == sorted(declared), "give NON_DEFAULT a value for every parameter"
    for name, value in values.items():
        assert value != declared[name].default, name
    model = cls(**values).fit(X[:200], y[:200])
    state = model.state_dict(include_records=True)
    if through_codec:
        state = decode_state(encode_state(state))
    resumed = cls.from_state_dict(state)
    for name, value in values.items():
        got = getattr(resumed, name)
        assert got == value and type(got) is type(value), name
    assert resumed.get_params() == model.get_params() == values
    np.testing.assert_array_equal(resumed.coef_, model.coef_)


def test_a_checkpoint_written_before_measure_above_was_saved_takes_the_default(cancer):
    """Checkpoints written before every parameter was saved lack ``measure_above``; they
    resume with the constructor's default for it (what such an engine ran with after a
    resume anyway), and every other parameter as saved."""
    X, y = cancer
    values = NON_DEFAULT[LogisticUnlearner]
    state = LogisticUnlearner(**values).fit(X[:200], y[:200]).state_dict(include_records=True)
    del state["measure_above"]
    resumed = LogisticUnlearner.from_state_dict(state)
    assert resumed.measure_above == _parameters(LogisticUnlearner)["measure_above"].default
    assert {k: v for k, v in resumed.get_params().items() if k != "measure_above"} == {
        k: v for k, v in values.items() if k != "measure_above"
    }
