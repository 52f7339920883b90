"""``unlearn demo`` (engine only): forget subjects from a certified model, then check it.

Runs on scikit-learn's bundled digits (no download): a one-vs-rest logistic model over 1,797
images, each image owned by one of 300 synthetic subjects. Subjects are forgotten one batch
at a time; at the end the unlearned model is compared with a model retrained from scratch
without them, with the same perturbation b (drawn from the operating system's entropy unless
a seed is given).
"""

from __future__ import annotations

import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from pipeline import LogisticUnlearner
from pipeline.errors import PipelineError


def run_engine_demo(
    console: Console, n_subjects: int = 12, seed: int | None = None
) -> dict[str, float]:
    """Run the demo, print its tables, and return the summary figures.

    ``seed`` fixes b (reproducible figures; voids the guarantee) and the synthetic owners;
    None (the default) draws b from the operating system's entropy and keeps the owners of
    seed 0.
    """
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0)
    rng = np.random.default_rng(0 if seed is None else seed)
    owners = rng.integers(0, 300, size=len(y_train))
    ids = [f"rec-{i}" for i in range(len(y_train))]

    params = {"lam": 1e-3, "sigma": 1.0, "epsilon": 1.0, "delta": 1e-4, "seed": seed}
    model = LogisticUnlearner(**params, fit_intercept=True).fit(X_train, y_train, ids=ids)
    console.print(
        f"fitted on {model.n_records_} records, {len(model.classes_)} classes, "
        f"test accuracy {model.score(X_test, y_test):.4f}, "
        f"certificate {model.certificate_:.2e} / budget {model.budget_:.3f}"
    )

    table = Table(title="forgetting subjects")
    for col in ("subject", "records", "method", "certificate", "budget", "ms", "retrain?"):
        table.add_column(col, justify="right")
    forgotten = rng.choice(300, size=n_subjects, replace=False)
    for subject in forgotten:
        rows = np.flatnonzero(owners == subject)
        report = model.forget([ids[i] for i in rows])
        if report.retrain_recommended:
            report = model.refit()
        table.add_row(
            str(subject),
            str(len(rows)),
            report.method,
            f"{report.certificate:.3e}",
            f"{report.budget:.3f}",
            f"{report.seconds * 1e3:.1f}",
            str(report.retrain_recommended),
        )
    console.print(table)

    keep = ~np.isin(owners, forgotten)
    if set(model.record_ids_) != {ids[i] for i in np.flatnonzero(keep)}:
        msg = "the unlearned model does not hold exactly the records of the remaining subjects"
        raise PipelineError(msg)
    # retrained from scratch (w = 0) on those records, with the model's b
    retrained = LogisticUnlearner.from_state_dict(model.state_dict(include_records=True))
    retrained.refit(warm_start=False)
    distance = float(
        np.linalg.norm(model.coef_ - retrained.coef_) / np.linalg.norm(retrained.coef_)
    )
    summary = {
        "records_forgotten": int((~keep).sum()),
        "accuracy_unlearned": model.score(X_test, y_test),
        "accuracy_retrained": retrained.score(X_test, y_test),
        "relative_parameter_distance": distance,
        "certificate": model.certificate_,
        "budget": model.budget_,
    }
    console.print(
        f"forgot {summary['records_forgotten']} records of {n_subjects} subjects: "
        f"accuracy {summary['accuracy_unlearned']:.4f} (retrained from scratch: "
        f"{summary['accuracy_retrained']:.4f}), relative parameter distance {distance:.2e}, "
        f"certificate {model.certificate_:.3e} within budget {model.budget_:.3f}"
    )
    return summary
