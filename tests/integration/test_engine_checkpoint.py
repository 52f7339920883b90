"""A worker restarted from Redis resumes the engine exactly where it stopped.

The engine's checkpoint (curvature, perturbation, certificate state; no features) goes to
the real redis-server through the checkpoint store, the records through the record store;
a fresh process would rebuild the model from both. Its next update must equal the one the
uninterrupted model makes.
"""

import numpy as np
import pytest

from pipeline import LogisticUnlearner, RidgeUnlearner
from pipeline.store.records import StoredRecord

MODELS = {
    "logistic-binary": lambda: LogisticUnlearner(lam=1e-3, sigma=1.0, seed=5),
    "logistic-ovr": lambda: LogisticUnlearner(lam=1e-3, sigma=1.0, seed=5, fit_intercept=True),
    "ridge": lambda: RidgeUnlearner(alpha=1.0),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_resumed_model_makes_the_same_next_update(kind, store, test_id):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    if kind == "logistic-binary":
        y = (y >= 5).astype(int)
    ids = [f"r{i}" for i in range(len(y))]
    model_id = f"{test_id}-model"

    model = MODELS[kind]().fit(X, y, ids=ids)
    model.forget(ids[:40])  # the checkpoint is taken mid-life, not right after a fit
    store.records.add(
        model_id,
        [
            StoredRecord(record_id=i, subject_id=f"s{n % 50}", features=X[n], label=int(y[n]))
            for n, i in enumerate(ids)
            if n >= 40
        ],
    )
    store.checkpoints.save(model_id, 1, model.state_dict())

    # what a restarted worker does: the checkpoint and the records, from Redis
    checkpoint = store.checkpoints.load(model_id, version=1)
    assert checkpoint is not None and checkpoint.version == 1
    held = list(store.records.scan(model_id))
    resumed = type(model).from_state_dict(
        checkpoint.state,
        np.stack([r.features for r in held]),
        np.array([r.label for r in held]),
        [r.record_id for r in held],
    )

    batch = ids[40:70]
    expected, got = model.forget(batch), resumed.forget(batch)
    np.testing.assert_allclose(resumed.coef_, model.coef_, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(resumed.intercept_, model.intercept_, rtol=1e-10, atol=1e-13)
    assert got.certificate == pytest.approx(expected.certificate, rel=1e-6, abs=1e-12)
    assert got.retrain_recommended == expected.retrain_recommended
    assert got.n_records == expected.n_records
    assert resumed.forget(ids[:5]).already_absent == tuple(ids[:5])
