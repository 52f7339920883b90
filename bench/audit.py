"""Audit benchmarks: what the audit costs, and whether forgetting fooled its attacks.

* ``wall_time``: ``pipeline.audit.audit`` of a model holding 60,000 MNIST records (ten
  classes, one-vs-rest, d = 784; the 10,000 test images are its holdout), stored in a
  redis-server started for the run, after a subject's erasure: the default parts
  (certificate, integrity, erasure of that request) and, separately, with
  ``reference=True`` (the disparity part's full refit). Target: under 10 s without it.
* ``attacks``: on MNIST 3 vs 8 and Adult, 1% of the training records forgotten in batches
  of 10 (default method, ``unlearn train``'s lambda 1e-3 and sigma 1); the loss-threshold
  and LiRA attacks' AUC on them against the test set under the published model and a
  retrain (same objective and b), and the disparity figures. Target: within 0.02.
* ``lam_auto``: ``--lam auto`` (``pipeline.tuning``) on Adult's training rows against
  scikit-learn's default ``LogisticRegression()``, both scored on Adult's test set, with
  each candidate's removals supported. Target: within 1 point.

``python -m bench.audit [--quick] [--json FILE]`` prints the markdown section;
``bench.run`` (``make bench``) writes it into ``BENCHMARKS.md``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from bench.section import section_main
from pipeline import LogisticUnlearner
from pipeline.applier import Applier, Forget
from pipeline.audit import LinearModel, ShadowSetup, audit, disparity, membership
from pipeline.datasets import Dataset, load
from pipeline.embedded import EmbeddedRedis
from pipeline.events import DeletionRequested
from pipeline.routing import Router
from pipeline.store import Store
from pipeline.training import Table, train_model
from pipeline.tuning import choose_lam, lam_frontier

Log = Callable[[str], object]

#: ``unlearn train``'s defaults, with a fixed b for a reproducible run.
PARAMS = {"lam": 1e-3, "sigma": 1.0, "seed": 0, "fit_intercept": True}
WALL_TIME_TARGET = 10.0
AUC_TARGET = 0.02


def _adult() -> Dataset:
    """UCI Adult (a9a, 123 binary features), rows scaled to norm at most 1."""
    ds = load("adult_a9a", preprocess=False)
    assert ds.X_test is not None
    scale = max(float(np.linalg.norm(ds.X, axis=1).max()), 1.0)
    return Dataset("adult_a9a", ds.X / scale, ds.y, ds.X_test / scale, ds.y_test)


def _subset(ds: Dataset, n: int, n_test: int | None = None) -> Dataset:
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(ds.y))[:n]
    assert ds.X_test is not None and ds.y_test is not None
    t = rng.permutation(len(ds.y_test))[: n_test or len(ds.y_test)]
    return Dataset(ds.name, ds.X[idx], ds.y[idx], ds.X_test[t], ds.y_test[t])


# -- the audit's wall time ------------------------------------------------------------------
def wall_time(quick: bool, log: Log) -> dict[str, Any]:
    """Train a 60,000-record model into Redis, erase a subject, time the audit."""
    ds = load("mnist_train")
    assert ds.X_test is not None and ds.y_test is not None
    if quick:
        ds = _subset(ds, 6000, 1000)
    X = np.vstack([ds.X, ds.X_test])
    y = np.concatenate([ds.y, ds.y_test])
    n = len(y)
    table = Table(
        X=X,
        y=y,
        subjects=[f"s{i % 5000}" for i in range(n)],
        ids=[f"r{i}" for i in range(n)],
    )
    server = EmbeddedRedis().start()
    try:
        store = Store.from_url(server.url, f"bench_audit_{uuid.uuid4().hex[:6]}")
        start = time.perf_counter()
        train_model(store, "mnist", table, params=PARAMS, holdout=len(ds.y_test) / n, split_seed=0)
        trained = time.perf_counter() - start
        request = DeletionRequested(request_id="bench-req", subject_id="s7")
        applier = Applier(store)
        by_model, _ = Router(applier.store).route([Forget(request)])
        applier.apply("mnist", by_model["mnist"])
        held = len(store.records.ids("mnist"))
        timed = []
        for _ in range(1 if quick else 3):
            report = audit(store, "mnist", "bench-req", request=request)
            timed.append(report.seconds)
        with_reference = audit(store, "mnist", "bench-req", request=request, reference=True)
        store.close()
    finally:
        server.stop()
    row = {
        "n_records": held,
        "n_holdout": len(ds.y_test),
        "d": int(X.shape[1]),
        "classes": int(len(np.unique(y))),
        "train_seconds": trained,
        "audit_seconds": float(np.median(timed)),
        "audit_runs": len(timed),
        "verdict": report.verdict,
        "parts": {p.part: p.verdict for p in report.parts},
        "with_reference_seconds": with_reference.seconds,
        "with_reference_verdict": with_reference.verdict,
        "disparity": with_reference.part("disparity").figures,
    }
    log(f"audit wall time: { {k: v for k, v in row.items() if k != 'disparity'} }")
    return row


# -- the attacks against a retrain ----------------------------------------------------------
def attacks(name: str, ds: Dataset, log: Log) -> dict[str, Any]:
    """1% forgotten in batches of 10; both attacks and the disparity against a retrain."""
    assert ds.X_test is not None and ds.y_test is not None
    n = len(ds.y)
    model = LogisticUnlearner(**PARAMS).fit(ds.X, ds.y)
    removed = np.random.default_rng(12).choice(n, size=max(n // 100, 10), replace=False)
    for part in np.array_split(removed, max(len(removed) // 10, 1)):
        model.forget(part.tolist())
    reference = LogisticUnlearner.from_state_dict(model.state_dict(include_records=True))
    reference.refit(warm_start=False)
    held = np.setdiff1d(np.arange(n), removed)
    shadows = ShadowSetup(
        X=ds.X[held], y=ds.y[held], kind="logistic", penalty=PARAMS["lam"], fit_intercept=True
    )
    published, retrained = LinearModel.from_engine(model), LinearModel.from_engine(reference)
    erased = (ds.X[removed], ds.y[removed])
    start = time.perf_counter()
    part = membership(
        published, retrained, *erased, ds.X_test, ds.y_test, AUC_TARGET, shadows=shadows
    )
    seconds = time.perf_counter() - start
    fair = disparity(published, retrained, ds.X_test, ds.y_test, erased=erased)
    f, g = part.figures, fair.figures
    row = {
        "dataset": name,
        "n": n,
        "removed": int(len(removed)),
        "n_unseen": int(len(ds.y_test)),
        "loss_auc_published": f["auc_published"],
        "loss_auc_retrained": f["auc_retrained"],
        "loss_gap": f["gap"],
        "lira_auc_published": f["lira_auc_published"],
        "lira_auc_retrained": f["lira_auc_retrained"],
        "lira_gap": f["lira_gap"],
        "lira_targets": f["lira_targets"],
        "lira_shadows": f["lira_shadows"],
        "lira_population": f["lira_population"],
        "membership_seconds": seconds,
        "membership_verdict": part.verdict,
        "acc_err": g["acc_err"],
        "acc_dis": g["acc_dis"],
        "worst_class_gap": g["worst_class_gap"],
        "disparity_verdict": fair.verdict,
        "certificate": model.certificate_,
        "budget": model.budget_,
    }
    log(f"{name}: attacks: {row}")
    return row


# -- --lam auto against scikit-learn --------------------------------------------------------
def lam_auto(ds: Dataset, quick: bool, log: Log) -> dict[str, Any]:
    """``--lam auto`` on the training rows; the chosen lambda refitted and tested."""
    assert ds.X_test is not None and ds.y_test is not None
    others = {k: v for k, v in PARAMS.items() if k != "lam"}
    start = time.perf_counter()
    frontier = lam_frontier(ds.X, ds.y, params=others, max_count=200 if quick else 1000)
    chosen = choose_lam(frontier)
    tuned = time.perf_counter() - start
    model = LogisticUnlearner(**{**others, "lam": chosen.lam}).fit(ds.X, ds.y)
    default = LogisticUnlearner(**PARAMS).fit(ds.X, ds.y)
    sklearn = LogisticRegression(max_iter=1000).fit(ds.X, ds.y)
    row = {
        "n": int(len(ds.y)),
        "n_test": int(len(ds.y_test)),
        "chosen_lam": chosen.lam,
        "accuracy": float(model.score(ds.X_test, ds.y_test)),
        "default_lam_accuracy": float(default.score(ds.X_test, ds.y_test)),
        "sklearn_accuracy": float(sklearn.score(ds.X_test, ds.y_test)),
        "removals_supported": chosen.removals_supported,
        "capped": chosen.capped,
        "frontier": [c.__dict__ for c in frontier],
        "tuning_seconds": tuned,
    }
    row["gap_points"] = 100.0 * (row["sklearn_accuracy"] - row["accuracy"])
    log(f"--lam auto on Adult: { {k: v for k, v in row.items() if k != 'frontier'} }")
    return row


def run(quick: bool = False, log: Log | None = None) -> dict[str, Any]:
    """All audit figures as one JSON-able object (times in seconds)."""
    say: Log = log or (lambda _msg: None)
    mnist_3v8, adult = load("mnist_3v8_train"), _adult()
    if quick:
        mnist_3v8, adult = _subset(mnist_3v8, 3000, 1000), _subset(adult, 5000, 2000)
    return {
        "quick": quick,
        "wall_time": wall_time(quick, say),
        "attacks": [attacks("MNIST 3 vs 8", mnist_3v8, say), attacks("Adult", adult, say)],
        "lam_auto": lam_auto(adult, quick, say),
    }


def markdown(r: dict[str, Any]) -> str:
    """The ``BENCHMARKS.md`` section of :func:`run`'s figures."""
    w, lam = r["wall_time"], r["lam_auto"]
    lines = [
        "## The audit: its cost, its attacks, the price of certification",
        "",
        f"`unlearn audit` (`pipeline.audit.audit`) of a model holding {w['n_records']:,} MNIST "
        f"records ({w['classes']} classes one-vs-rest, d = {w['d']}, holdout "
        f"{w['n_holdout']:,}) in a local redis-server, after a subject's erasure, auditing "
        f"that request: certificate recomputed from every record, integrity, erasure.",
        "",
        "| figure | value | target |",
        "|---|---|---|",
        f"| audit wall time, median of {w['audit_runs']} (s) | {w['audit_seconds']:.2f} | "
        f"< {WALL_TIME_TARGET:g} |",
        f"| verdict | {w['verdict']} ({', '.join(f'{k} {v}' for k, v in w['parts'].items())}) "
        "| pass |",
        f"| with `--reference` (refit from the stored records, disparity) (s) | "
        f"{w['with_reference_seconds']:.2f} | |",
        f"| disparity: AccErr / worst class gap | {w['disparity'].get('acc_err', float('nan')):.4f}"
        f" / {w['disparity'].get('worst_class_gap', float('nan')):.4f} | <= 0.02 |",
        f"| training the model into Redis (s) | {w['train_seconds']:.1f} | |",
        "",
        "Membership attacks on records forgotten by the pipeline (1% of the training records, "
        "batches of 10, default method, lambda 1e-3, sigma 1) against the test set: the "
        "loss-threshold attack (Yeom et al. 2018) and per-example LiRA (Carlini et al. 2022; "
        "8 shadow models on random halves of the targets and 2,000 held records, fitted "
        "without b by L-BFGS from the reference), under the published model and under a "
        "retrain (same objective and b); AccErr and AccDis (Mahadevan & Mathioudakis 2022) "
        f"against the same retrain. Target: every gap within {AUC_TARGET:g}.",
        "",
        "| data | n | removed | loss AUC published / retrained (gap) | LiRA AUC published / "
        "retrained (gap) | LiRA targets, time (s) | AccErr | AccDis | certificate / budget |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for a in r["attacks"]:
        lines.append(
            f"| {a['dataset']} | {a['n']} | {a['removed']} | {a['loss_auc_published']:.4f} / "
            f"{a['loss_auc_retrained']:.4f} ({a['loss_gap']:+.4f}) | "
            f"{a['lira_auc_published']:.4f} / {a['lira_auc_retrained']:.4f} "
            f"({a['lira_gap']:+.4f}) | {a['lira_targets'][0]} + {a['lira_targets'][1]}, "
            f"{a['membership_seconds']:.1f} | {a['acc_err']:.4f} | {a['acc_dis']:.4f} | "
            f"{a['certificate']:.3g} / {a['budget']:.3g} |"
        )
    lines += [
        "",
        f"`--lam auto` on Adult ({lam['n']:,} training rows, test set {lam['n_test']:,}): each "
        "candidate fitted on 80% of the training rows, scored on the other 20%, and its "
        "removals counted one at a time under Guo's accumulated bound until it recommends a "
        "retrain (capped); the most accurate candidate supporting at least one removal is "
        "refitted on all training rows and scored on the test set, against scikit-learn's "
        "`LogisticRegression()` (uncertified) on the same rows. Target: within 1 point.",
        "",
        "| lambda | validation accuracy | removals supported | |",
        "|---|---|---|---|",
    ]
    for c in lam["frontier"]:
        more = ">= " if c["capped"] else ""
        mark = "chosen" if c["lam"] == lam["chosen_lam"] else ""
        lines.append(
            f"| {c['lam']:g} | {c['accuracy']:.4f} | {more}{c['removals_supported']} | {mark} |"
        )
    lines += [
        "",
        f"Test accuracy: chosen lambda {lam['chosen_lam']:g} {lam['accuracy']:.4f}, the "
        f"default 1e-3 {lam['default_lam_accuracy']:.4f}, scikit-learn "
        f"{lam['sklearn_accuracy']:.4f} ({abs(lam['gap_points']):.2f} points "
        + ("behind it)." if lam["gap_points"] > 0 else "ahead of it)."),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    """``python -m bench.audit [--quick] [--json FILE]``: the audit section as markdown."""
    section_main(main.__doc__ or "", run, markdown)


if __name__ == "__main__":
    main()
