"""Forgetting feature columns and correcting labels (issue 18), against refits from scratch.

Warnecke, Pirch, Wressnegger, Rieck, "Machine Unlearning of Features and Labels" (NDSS 2023)
unlearn a column or a label instead of a whole record; the engine's ``forget_features`` and
``relabel`` (:mod:`pipeline.unlearning.features`, :mod:`pipeline.unlearning.labels`) are
measured here next to what they replace: the model fitted from scratch on the changed data
(same objective and b: ``forgotten_features`` as a parameter, or the corrected labels).
Guo et al.'s parameters (lambda = 1e-3, sigma = 10, epsilon = 1, delta = 1e-4, a fixed b),
the default method (second-order).

* ``columns``: UCI Adult (a9a encoding, 32,561 x 123, rows scaled into the unit ball, with an
  intercept): 1 and 10 columns removed, the ones the fitted model leans on most (largest
  |w|) and random ones; time, relative parameter distance to the refit, certificate, test
  accuracy.
* ``labels``: MNIST 3 vs 8 (11,982 images, preprocessed as in Guo et al.): 1% of the
  training labels flipped, at random and targeted (the class-8 images nearest the clean
  model's boundary, labelled 3); the poisoned model is fitted, then repaired by
  ``relabel``; time and distance against the clean fit, and the test accuracy of the
  poisoned model, the repaired one and the clean refit.

Times are medians of three runs (one with ``--quick``, which also takes 5,000 Adult rows and
3,000 MNIST images). ``python -m bench.features [--quick] [--json FILE]`` prints the
markdown section; ``bench.run`` (``make bench``) writes it into ``BENCHMARKS.md``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.engine import GUO, adult
from bench.section import section_main
from pipeline import LogisticUnlearner
from pipeline.datasets import Dataset, load

Log = Callable[[str], object]


def _copy(model: LogisticUnlearner) -> LogisticUnlearner:
    return LogisticUnlearner.from_state_dict(model.state_dict(include_records=True))


def _weights(model: LogisticUnlearner) -> np.ndarray:
    return np.append(model.coef_, model.intercept_)


def _distance(model: LogisticUnlearner, reference: LogisticUnlearner) -> float:
    got, want = _weights(model), _weights(reference)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _timed_fit(params: dict[str, Any], X: np.ndarray, y: np.ndarray, runs: int) -> tuple:
    """The model fitted from scratch, and the median seconds of ``runs`` fits."""
    seconds, model = [], None
    for _ in range(runs):
        start = time.perf_counter()
        model = LogisticUnlearner(**params).fit(X, y)
        seconds.append(time.perf_counter() - start)
    return model, statistics.median(seconds)


def _subset(ds: Dataset, n: int) -> Dataset:
    idx = np.random.default_rng(0).permutation(len(ds.y))[:n]
    return Dataset(ds.name, ds.X[idx], ds.y[idx], ds.X_test, ds.y_test)


def columns(ds: Dataset, runs: int, log: Log) -> dict[str, Any]:
    """Remove 1 and 10 columns of Adult; compare with the fit without them."""
    assert ds.X_test is not None and ds.y_test is not None
    params = {**GUO, "fit_intercept": True}
    model, fit_seconds = _timed_fit(params, ds.X, ds.y, runs)
    d = ds.X.shape[1]
    top = np.argsort(-np.abs(model.coef_))
    random = np.random.default_rng(5).permutation(d)
    rows = []
    for choice, order in (("largest weights", top), ("random", random)):
        for k in (1, 10):
            cols = sorted(order[:k].tolist())
            seconds, report, done = [], None, model
            for _ in range(runs):
                done = _copy(model)
                start = time.perf_counter()
                report = done.forget_features(cols)
                seconds.append(time.perf_counter() - start)
            assert report is not None
            reference, refit_seconds = _timed_fit(
                {**params, "forgotten_features": cols}, ds.X, ds.y, runs
            )
            row = {
                "columns": k,
                "chosen": choice,
                "which": cols,
                "method": report.method,
                "seconds": statistics.median(seconds),
                "refit_seconds": refit_seconds,
                "relative_parameter_distance": _distance(done, reference),
                "certificate": report.certificate,
                "budget": report.budget,
                "certified": report.certified,
                "curvature_recomputed": report.curvature_recomputed,
                "test_accuracy": done.score(ds.X_test, ds.y_test),
                "test_accuracy_refit": reference.score(ds.X_test, ds.y_test),
            }
            log(f"features: {row}")
            rows.append(row)
    return {
        "dataset": "Adult (a9a)",
        "n": len(ds.y),
        "d": d,
        "fit_seconds": fit_seconds,
        "test_accuracy_all_columns": model.score(ds.X_test, ds.y_test),
        "rows": rows,
    }


def _flips(ds: Dataset, clean: LogisticUnlearner) -> dict[str, np.ndarray]:
    """1% of the training records to flip: at random, and targeted (the class-8 images
    nearest the clean model's boundary)."""
    n = len(ds.y)
    k = max(n // 100, 1)
    eights = np.flatnonzero(ds.y == 1)
    margins = np.abs(clean.decision_function(ds.X[eights]))
    return {
        "random": np.random.default_rng(3).choice(n, k, replace=False),
        "targeted": eights[np.argsort(margins)[:k]],
    }


def labels(ds: Dataset, runs: int, log: Log) -> dict[str, Any]:
    """A label-flip poisoning of MNIST 3 vs 8 repaired by ``relabel``."""
    assert ds.X_test is not None and ds.y_test is not None
    clean, refit_seconds = _timed_fit(GUO, ds.X, ds.y, runs)
    rows = []
    for poisoning, flipped in _flips(ds, clean).items():
        y = ds.y.copy()
        y[flipped] = 1 - y[flipped]
        poisoned = LogisticUnlearner(**GUO).fit(ds.X, y)
        seconds, report, repaired = [], None, poisoned
        for _ in range(runs):
            repaired = _copy(poisoned)
            start = time.perf_counter()
            report = repaired.relabel(flipped.tolist(), ds.y[flipped])
            seconds.append(time.perf_counter() - start)
        assert report is not None
        row = {
            "poisoning": poisoning,
            "relabelled": report.n_relabelled,
            "method": report.method,
            "seconds": statistics.median(seconds),
            "refit_seconds": refit_seconds,
            "relative_parameter_distance": _distance(repaired, clean),
            "poisoned_distance": _distance(poisoned, clean),
            "certificate": report.certificate,
            "budget": report.budget,
            "certified": report.certified,
            "test_accuracy_poisoned": poisoned.score(ds.X_test, ds.y_test),
            "test_accuracy_repaired": repaired.score(ds.X_test, ds.y_test),
            "test_accuracy_clean": clean.score(ds.X_test, ds.y_test),
        }
        log(f"labels: {row}")
        rows.append(row)
    return {"dataset": "MNIST 3 vs 8", "n": len(ds.y), "d": int(ds.X.shape[1]), "rows": rows}


def run(quick: bool = False, log: Log | None = None) -> dict[str, Any]:
    """Both parts as one JSON-able object (times in seconds)."""
    say: Log = log or (lambda _msg: None)
    runs = 1 if quick else 3
    adult_ds = adult()
    mnist = load("mnist_3v8_train")
    if quick:
        adult_ds, mnist = _subset(adult_ds, 5000), _subset(mnist, 3000)
    return {
        "quick": quick,
        "params": GUO,
        "columns": columns(adult_ds, runs, say),
        "labels": labels(mnist, runs, say),
    }


def markdown(r: dict[str, Any]) -> str:
    """The ``BENCHMARKS.md`` section of :func:`run`'s figures."""
    c, lab, p = r["columns"], r["labels"], r["params"]
    lines = [
        "## Forgetting a feature, correcting a label",
        "",
        "`forget_features` and `relabel` (Warnecke et al., NDSS 2023; "
        "[docs/features-and-labels.md](docs/features-and-labels.md)) against the model fitted "
        f"from scratch on the changed data with the same objective and b (lambda = {p['lam']}, "
        f"sigma = {p['sigma']:g}, epsilon = {p['epsilon']:g}, delta = {p['delta']:g}); "
        "default method (second-order: damped Newton steps on the cached, down-dated "
        "curvature until the measured residual is within half the budget). Times are medians "
        "of three runs; the certificate is the gradient residual measured on the changed data.",
        "",
        f"{c['dataset']}, n = {c['n']:,}, d = {c['d']} (+ intercept), test accuracy with "
        f"every column {c['test_accuracy_all_columns']:.4f}; a fit from scratch takes "
        f"{c['fit_seconds']:.2f} s:",
        "",
        "| columns removed | chosen | forget_features (s) | refit (s) | relative parameter "
        "distance | certificate / budget | test accuracy (unlearned / refit) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in c["rows"]:
        lines.append(
            f"| {row['columns']} | {row['chosen']} | {row['seconds']:.3f} | "
            f"{row['refit_seconds']:.3f} | {row['relative_parameter_distance']:.1e} | "
            f"{row['certificate']:.3g} / {row['budget']:.3g} | {row['test_accuracy']:.4f} / "
            f"{row['test_accuracy_refit']:.4f} |"
        )
    lines += [
        "",
        f"{lab['dataset']}, n = {lab['n']:,}, d = {lab['d']}: 1% of the training labels "
        "flipped (random: any record; targeted: the class-8 images nearest the clean model's "
        "boundary, labelled 3), the poisoned model fitted, then repaired by `relabel` of the "
        "flipped records. Distances are to the clean fit (the refit on the corrected labels).",
        "",
        "| poisoning | records relabelled | relabel (s) | refit (s) | relative parameter "
        "distance (poisoned → repaired) | certificate / budget | test accuracy: poisoned / "
        "repaired / clean refit |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in lab["rows"]:
        lines.append(
            f"| {row['poisoning']} | {row['relabelled']} | {row['seconds']:.3f} | "
            f"{row['refit_seconds']:.3f} | {row['poisoned_distance']:.1e} → "
            f"{row['relative_parameter_distance']:.1e} | {row['certificate']:.3g} / "
            f"{row['budget']:.3g} | {row['test_accuracy_poisoned']:.4f} / "
            f"{row['test_accuracy_repaired']:.4f} / {row['test_accuracy_clean']:.4f} |"
        )
    return "\n".join([*lines, ""])


def main() -> None:
    """``python -m bench.features [--quick] [--json FILE]``: prints the markdown section."""
    section_main(main.__doc__ or "", run, markdown)


if __name__ == "__main__":
    main()
