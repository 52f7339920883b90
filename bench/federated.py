"""Federated benchmarks: training over clients, forgetting a client, forgetting a class.

Everything in one run on the real datasets (``pipeline.datasets``), Guo et al.'s objective
(lambda = 1e-3, sigma = 10, epsilon = 1, delta = 1e-4, seed 0), raw pixels (d = 784):

* ``client``: MNIST 60k split across 10 non-IID clients (each mostly two digits,
  :func:`pipeline.federated.split_non_iid`). The federated fit against
  ``LogisticUnlearner`` fitted on the union (same objective, same b); forgetting one client
  against centralised retraining without its rows (parameter distance, test accuracy) and
  against federated retraining from scratch without it (rounds, curvature rounds, seconds).
* ``class``: Fashion-MNIST 60k, 10 non-IID clients; forgetting the class "ankle boot"
  (label 9) against a ``LogisticUnlearner`` retrained without that class: accuracy on the
  remaining classes' test images, parameter distance, and the fraction of test predictions
  that are still "ankle boot". The last label is chosen because the seeded draw of b fills
  rows in class order, so the 9-class retrain's b is the forgotten model's b: both minimise
  the same objective and the parameter distance is meaningful.

Clients are simulated in-process, one after the other, so "seconds" is the whole
protocol's wall time on this machine (every client's computation plus the server's).
``quick`` uses 6,000-row subsets (same d = 784) and runs in about two minutes on two
cores; the full run uses all 60,000 rows of each set.

``run(quick, log)`` returns the figures as a JSON-able dict, ``markdown(result)`` the
section of BENCHMARKS.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.section import section_main
from pipeline import LogisticUnlearner
from pipeline.datasets import Dataset, load
from pipeline.federated import FederatedLogistic, make_clients, split_non_iid

Log = Callable[[str], object]

GUO = {"lam": 1e-3, "sigma": 10.0, "epsilon": 1.0, "delta": 1e-4, "seed": 0}
N_CLIENTS = 10
FORGOTTEN_CLIENT = "client-3"
REMOVED_CLASS = 9  # Fashion-MNIST "ankle boot", the last label (see the module docstring)


def _subset(ds: Dataset, n: int | None) -> Dataset:
    if n is None:
        return ds
    idx = np.random.default_rng(0).permutation(len(ds.y))[:n]
    return Dataset(ds.name, ds.X[idx], ds.y[idx], ds.X_test, ds.y_test)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _rounds_to(history: list[tuple[int, float, float]], level: float) -> int:
    """Rounds a fit needed before its summed residual first fell to ``level``."""
    first = history[0][0]
    for rnd, _max, total in history:
        if total <= level:
            return rnd - first
    return history[-1][0] - first


def client_removal(ds: Dataset, log: Log) -> dict[str, Any]:
    classes = np.unique(ds.y)
    parts = split_non_iid(ds.y, N_CLIENTS, seed=0)
    clients = make_clients(ds.X, ds.y, parts)
    d = ds.X.shape[1]
    forgotten = int(FORGOTTEN_CLIENT.rsplit("-", 1)[1])
    top2 = np.sort(np.bincount(ds.y[parts[forgotten]], minlength=classes.size))[-2:].sum()

    fed, fit_s = _timed(lambda: FederatedLogistic(classes, d, **GUO).fit(clients))
    fit = {"rounds": fed.last_rounds_, "curvature_rounds": fed.last_curvature_rounds_}
    log(f"federated fit: {fit}, {fit_s:.1f} s, certificate {fed.certificate_:.3g}")
    central, central_s = _timed(lambda: LogisticUnlearner(**GUO).fit(ds.X, ds.y))
    log(f"centralised fit on the union: {central_s:.1f} s")
    fit_row = {
        **fit,
        "seconds": fit_s,
        "centralised_seconds": central_s,
        "relative_distance_to_centralised": _rel(fed.coef_, central.coef_),
        "test_accuracy": fed.score(ds.X_test, ds.y_test),
        "centralised_test_accuracy": central.score(ds.X_test, ds.y_test),
        "certificate": fed.certificate_,
    }
    del central

    report = fed.forget_client(FORGOTTEN_CLIENT, clients)
    forget = {
        "rounds": fed.last_rounds_,
        "curvature_rounds": fed.last_curvature_rounds_,
        "seconds": report.seconds,
        "certificate": report.certificate,
        "budget": report.budget,
        "certified": report.certified,
        "n_removed": report.n_removed,
    }
    log(f"forget {FORGOTTEN_CLIENT}: {forget}")
    keep = np.setdiff1d(np.arange(len(ds.y)), parts[forgotten])
    retrain, retrain_s = _timed(lambda: LogisticUnlearner(**GUO).fit(ds.X[keep], ds.y[keep]))
    forget.update(
        relative_distance_to_retrain=_rel(fed.coef_, retrain.coef_),
        distance_bound=report.certificate / (GUO["lam"] * len(keep)),
        test_accuracy=fed.score(ds.X_test, ds.y_test),
        retrain_test_accuracy=retrain.score(ds.X_test, ds.y_test),
        centralised_retrain_seconds=retrain_s,
    )
    del retrain
    rest = {cid: c for cid, c in clients.items() if cid != FORGOTTEN_CLIENT}
    scratch, scratch_s = _timed(lambda: FederatedLogistic(classes, d, **GUO).fit(rest))
    retrain_row = {
        "rounds": scratch.last_rounds_,
        "curvature_rounds": scratch.last_curvature_rounds_,
        "seconds": scratch_s,
        "rounds_to_same_certificate": _rounds_to(scratch.history_, report.certificate),
    }
    log(f"federated retraining without {FORGOTTEN_CLIENT}: {retrain_row}")
    return {
        "n": len(ds.y),
        "clients": N_CLIENTS,
        "forgotten_client": FORGOTTEN_CLIENT,
        "forgotten_rows": int(len(parts[forgotten])),
        "forgotten_top2_share": float(top2 / len(parts[forgotten])),
        "fit": fit_row,
        "forget": forget,
        "retrain_from_scratch": retrain_row,
    }


def class_removal(ds: Dataset, log: Log) -> dict[str, Any]:
    classes = np.unique(ds.y)
    clients = make_clients(ds.X, ds.y, split_non_iid(ds.y, N_CLIENTS, seed=1))
    assert ds.X_test is not None and ds.y_test is not None
    fed, fit_s = _timed(lambda: FederatedLogistic(classes, ds.X.shape[1], **GUO).fit(clients))
    acc_before = fed.score(ds.X_test, ds.y_test)
    log(f"fashion federated fit: {fed.last_rounds_} rounds, {fit_s:.1f} s, acc {acc_before:.4f}")
    report = fed.forget_class(REMOVED_CLASS, clients)
    rounds, curv = fed.last_rounds_, fed.last_curvature_rounds_
    keep = ds.y != REMOVED_CLASS
    retrain, retrain_s = _timed(lambda: LogisticUnlearner(**GUO).fit(ds.X[keep], ds.y[keep]))
    test_keep = ds.y_test != REMOVED_CLASS
    Xr, yr = ds.X_test[test_keep], ds.y_test[test_keep]
    row = {
        "n": len(ds.y),
        "clients": N_CLIENTS,
        "removed_class": REMOVED_CLASS,
        "removed_rows": report.n_removed,
        "fit_rounds": fed.rounds_ - rounds,
        "fit_seconds": fit_s,
        "test_accuracy_before": acc_before,
        "rounds": rounds,
        "curvature_rounds": curv,
        "seconds": report.seconds,
        "certificate": report.certificate,
        "budget": report.budget,
        "certified": report.certified,
        "remaining_accuracy": fed.score(Xr, yr),
        "retrain_remaining_accuracy": retrain.score(Xr, yr),
        "relative_distance_to_retrain": _rel(fed.coef_, retrain.coef_),
        "retrain_seconds": retrain_s,
        "removed_class_prediction_share": float(np.mean(fed.predict(ds.X_test) == REMOVED_CLASS)),
    }
    log(f"forget class {REMOVED_CLASS}: {row}")
    return row


QUICK_N = 6_000


def run(quick: bool = False, log: Log | None = None) -> dict[str, Any]:
    """All federated figures as one JSON-able object (times in seconds)."""
    say: Log = log or (lambda _msg: None)
    n = QUICK_N if quick else None
    start = time.perf_counter()
    results: dict[str, Any] = {"quick": quick, "params": GUO}
    results["client"] = client_removal(_subset(load("mnist_train"), n), say)
    results["class"] = class_removal(_subset(load("fashion_mnist_full"), n), say)
    results["seconds"] = time.perf_counter() - start
    return results


def markdown(result: dict[str, Any]) -> str:
    """The "Federated unlearning" section of BENCHMARKS.md."""
    return "\n".join(_lines(result))


def _lines(results: dict[str, Any]) -> list[str]:
    c, k = results["client"], results["class"]
    fit, fg, rs = c["fit"], c["forget"], c["retrain_from_scratch"]
    p = results["params"]
    return [
        "## Federated unlearning",
        "",
        f"Guo et al.'s objective (lambda = {p['lam']}, sigma = {p['sigma']}, epsilon = "
        f"{p['epsilon']}, delta = {p['delta']}), raw pixels (d = 784), one-vs-rest over ten "
        f"classes. Clients are simulated in-process one after the other, so seconds are the "
        "whole protocol's wall time; a round is one report from every client, a curvature "
        "round one that also carries the clients' d x d Hessian per class.",
        "",
        f"### Forgetting a client: MNIST, n = {c['n']}, {c['clients']} non-IID clients",
        "",
        f"`{c['forgotten_client']}` holds {c['forgotten_rows']} rows, "
        f"{c['forgotten_top2_share']:.0%} of them from its two main digits.",
        "",
        "| | rounds | curvature rounds | seconds |",
        "|---|---|---|---|",
        f"| federated fit (all clients) | {fit['rounds']} | {fit['curvature_rounds']} | "
        f"{fit['seconds']:.1f} |",
        f"| forget the client (subtract, step, refresh) | {fg['rounds']} | "
        f"{fg['curvature_rounds']} | {fg['seconds']:.2f} |",
        f"| federated retraining from scratch without it | {rs['rounds']} | "
        f"{rs['curvature_rounds']} | {rs['seconds']:.1f} |",
        "",
        f"Retraining from scratch first reaches the forgotten model's certificate after "
        f"{rs['rounds_to_same_certificate']} rounds.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| federated fit vs `LogisticUnlearner` on the union: relative parameter distance | "
        f"{fit['relative_distance_to_centralised']:.1e} |",
        f"| test accuracy, federated / centralised | {fit['test_accuracy']:.4f} / "
        f"{fit['centralised_test_accuracy']:.4f} |",
        f"| forgotten vs centralised retrain without the client: relative parameter distance | "
        f"{fg['relative_distance_to_retrain']:.1e} |",
        f"| test accuracy, forgotten / retrained | {fg['test_accuracy']:.4f} / "
        f"{fg['retrain_test_accuracy']:.4f} |",
        f"| certificate (remaining clients' gradient residual) / budget | "
        f"{fg['certificate']:.3g} / {fg['budget']:.3g} |",
        f"| bound on the distance to the exact optimum, certificate / (lambda n) | "
        f"{fg['distance_bound']:.2g} |",
        f"| centralised fit / retrain (s), for reference | {fit['centralised_seconds']:.1f} / "
        f"{fg['centralised_retrain_seconds']:.1f} |",
        "",
        f"### Forgetting a class: Fashion-MNIST, n = {k['n']}, {k['clients']} non-IID clients",
        "",
        f"Class {k['removed_class']} (ankle boot, {k['removed_rows']} rows) removed through the "
        "clients' class-k statistics (the first round of the removal collects them, with "
        "curvature), against `LogisticUnlearner` retrained without it; the last label, so "
        "that the retrain's seeded b is the same as the forgotten model's.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| federated fit: rounds, seconds | {k['fit_rounds']}, {k['fit_seconds']:.1f} |",
        f"| forget the class: rounds (curvature rounds), seconds | {k['rounds']} "
        f"({k['curvature_rounds']}), {k['seconds']:.2f} |",
        f"| centralised retrain without the class (s) | {k['retrain_seconds']:.1f} |",
        f"| accuracy on the remaining classes' test images, forgotten / retrained | "
        f"{k['remaining_accuracy']:.4f} / {k['retrain_remaining_accuracy']:.4f} |",
        f"| relative parameter distance, forgotten vs retrained | "
        f"{k['relative_distance_to_retrain']:.1e} |",
        f"| test predictions of the removed class | {k['removed_class_prediction_share']:.0%} |",
        f"| certificate / budget | {k['certificate']:.3g} / {k['budget']:.3g} |",
        "",
    ]


def main() -> None:
    """``python -m bench.federated [--quick] [--json FILE]``: print the section."""
    result = section_main(__doc__.splitlines()[0], run, markdown)
    print(f"\n# total {result['seconds']:.1f} s")


if __name__ == "__main__":
    main()
