"""Every constructor parameter and every state field of every engine kind survives a
checkpoint, whatever its value; nothing an engine holds is left out of it unsaid."""

import inspect

import numpy as np
import pytest

from pipeline import LogisticUnlearner, RidgeUnlearner
from pipeline.errors import InvalidInput
from pipeline.store.codec import decode_state, encode_state
from pipeline.unlearning.records import RecordTable
from pipeline.unlearning.state import Part, declared, saved_fields, undeclared

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
        "forgotten_features": (2, 3),
    },
    RidgeUnlearner: {
        "alpha": 2.0,
        "fit_intercept": False,
        "sigma": 0.5,
        "epsilon": 0.5,
        "delta": 1e-3,
        "seed": 7,
        "forgotten_features": (2, 3),
    },
}

#: Every model kind, and every certificate of the logistic one (each keeps its own fields):
#: class, parameters changed from NON_DEFAULT, data.
KINDS = {
    "logistic-bound": (LogisticUnlearner, {}, "cancer"),
    "logistic-exact": (LogisticUnlearner, {"certificate": "exact"}, "cancer"),
    "logistic-adaptive-ovr": (
        LogisticUnlearner,
        {"certificate": "adaptive", "method": "fisher", "measure_above": 0.01},
        "digits",
    ),
    "ridge": (RidgeUnlearner, {}, "cancer"),
}

#: Fields a certificate rebuilds when a checkpoint written under another one lacks them, and
#: parameters added later, which a checkpoint written before them resumes without
#: (``BaseUnlearner.ADDED_PARAMS``).
REBUILT = {"stale_measures", "forgotten_features"}


def _parameters(cls):
    return {
        name: p
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def _parts(model):
    """The model's parts that save their own declared fields (the certificate)."""
    return [
        getattr(model, name)
        for name in declared(type(model), Part)
        if not isinstance(getattr(model, name), RecordTable)  # saved by _records_state
    ]


def _fitted(request, kind):
    cls, changes, dataset = KINDS[kind]
    X, y = request.getfixturevalue(dataset)
    values = {**NON_DEFAULT[cls], **changes}
    ids = [f"r{i}" for i in range(len(y))]
    model = cls(**values).fit(X[:200], y[:200], ids=ids[:200])
    # away from a fresh fit: records forgotten and learned, the certificate moved
    model.forget(ids[:10])
    model.learn(X[200:230], y[200:230], ids=ids[200:230])
    model.forget(ids[10:40])
    return model, values, ids


def _same(a, b, key):
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype, key
        np.testing.assert_array_equal(a, b, err_msg=key)
    else:
        assert a == b and type(a) is type(b), key


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("through_codec", [False, True], ids=["dict", "redis-encoding"])
def test_every_parameter_and_state_field_survives_a_checkpoint(request, kind, through_codec):
    cls = KINDS[kind][0]
    declared_params = _parameters(cls)
    assert sorted(NON_DEFAULT[cls]) == sorted(declared_params), (
        "give NON_DEFAULT a value for every parameter"
    )
    for name, value in NON_DEFAULT[cls].items():
        assert value != declared_params[name].default, name
    model, values, ids = _fitted(request, kind)

    # nothing the model or its parts hold is left unsaid: a parameter, Saved, Part, Transient
    assert undeclared(model, cls.param_names()) == []
    for part in _parts(model):
        assert undeclared(part) == [], type(part).__name__

    state = model.state_dict(include_records=True)
    fields = {f.key for f in saved_fields(cls)}
    fields |= {f.key for part in _parts(model) for f in saved_fields(type(part))}
    records = {*RecordTable.STATE_KEYS, "X", "targets"}
    assert set(state) == set(cls.param_names()) | {"kind"} | records | fields
    if through_codec:
        state = decode_state(encode_state(state))
    resumed = cls.from_state_dict(state)

    for name, value in values.items():
        got = getattr(resumed, name)
        assert got == value and type(got) is type(value), name
    assert resumed.get_params() == model.get_params() == values
    assert [type(p) for p in _parts(resumed)] == [type(p) for p in _parts(model)]
    again = resumed.state_dict(include_records=True)
    assert list(again) == list(state)
    for key in state:
        _same(again[key], state[key], key)

    # and the resumed model makes the same next update
    r1, r2 = model.forget(ids[40:50]), resumed.forget(ids[40:50])
    np.testing.assert_allclose(resumed.coef_, model.coef_, rtol=1e-10, atol=1e-12)
    assert r2.certificate == pytest.approx(r1.certificate, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_checkpoint_missing_a_field_is_refused_naming_it(request, kind):
    """No compatibility code for formats never released: a checkpoint without one of its
    fields (parameters included) is refused with the field's name, never resumed with a
    default the model did not run with."""
    model, _, _ = _fitted(request, kind)
    state = model.state_dict(include_records=True)
    for key in sorted(set(state) - {"X", "targets"} - REBUILT):
        partial = {k: v for k, v in state.items() if k != key}
        with pytest.raises(InvalidInput, match=repr(key) if key != "kind" else "kind=None"):
            type(model).from_state_dict(partial)
