"""Run the benchmarks and write BENCHMARKS.md (``make bench``).

``python -m bench.run [--quick] [--output BENCHMARKS.md] [--json FILE]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench import audit as audit_bench
from bench import features as features_bench
from bench import federated
from bench import scale as scale_bench
from bench.engine import run_engine_bench
from bench.pipeline import run_pipeline_bench
from bench.rates import format_rate


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def _machine(machine: dict[str, Any]) -> list[str]:
    return [
        "## Machine",
        "",
        *(f"- {key}: {value}" for key, value in machine.items()),
        "",
    ]


def _guo(g: dict[str, Any]) -> list[str]:
    p = g["params"]
    lines = [
        "## Guo et al.'s MNIST 3 vs 8 setting",
        "",
        f"lambda = {p['lam']}, sigma = {p['sigma']}, epsilon = {p['epsilon']}, "
        f"delta = {p['delta']}; n = {g['n_train']} training images (preprocessed as in the "
        "paper: [0, 1], minus 0.5, unit rows), test set 1,984 images.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| test accuracy | {g['test_accuracy']:.4f} |",
        f"| fit time (s) | {g['fit_seconds']:.2f} |",
        f"| budget eps' = sigma eps / sqrt(2 ln(1.5/delta)) | {g['budget']:.4f} |",
        f"| worst-case bound for one removal, 4 gamma C^2 / (lambda^2 (n-1)) | "
        f"{g['worst_case_per_removal']:.1f} |",
        f"| removals the worst-case bound supports | {g['worst_case_removals_supported']} |",
        "",
        "Single-point random removals (the same order for every certificate) until the "
        "certificate passes the budget:",
        "",
        "| certificate (method) | removals supported | tried | certificate after k removals "
        "| time per removal (ms) |",
        "|---|---|---|---|---|",
    ]
    for name, r in g["removals"].items():
        supported = (
            r["supported"] if r["supported"] is not None else f">= {r['tried']} (not exhausted)"
        )
        after = ", ".join(f"{k}: {v:.3g}" for k, v in r["certificate_after"].items())
        per_removal = r["seconds_per_removal"] * 1e3
        lines.append(f"| {name} | {supported} | {r['tried']} | {after} | {per_removal:.1f} |")
    guo = g["removals"]["guo_accumulated_bound"]
    default = g["removals"]["adaptive_fisher (default)"]
    if guo["supported"]:
        ours = default["supported"] or default["tried"]
        more = "" if default["supported"] is not None else "at least "
        lines += [
            "",
            f"The default certificate supports {more}{ours / guo['supported']:.1f}x as many "
            f"removals as Guo's accumulated bound ({more}{ours} against {guo['supported']}).",
        ]
    lines += [
        "",
        f"After {g['compared_at']} removals Guo's accumulated bound has grown "
        f"{g['bound_over_exact_growth']:.1f}x as much as the exact residual it bounds, so at "
        "that rate the exact residual supports that many times more removals before "
        "retraining. `guo_accumulated_bound` recomputes the exact Hessian at every removal, as "
        "in the paper (drift_tol = 0); the adaptive certificate is the exact residual at its last "
        "measurement plus per-batch bounds since, measured again at half the budget.",
        "",
    ]
    return lines


def _costs(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Cost of a removal batch against scikit-learn retraining",
        "",
        "Each batch size starts from the same fitted model; engine times are the whole "
        "`forget` call with the certificate kept current (median and mean over repeated "
        "batches; the mean includes the batches that measured the residual exactly). "
        "scikit-learn is `LogisticRegression()` with default settings fitted on the "
        "remaining records.",
        "",
        "| data | n | classes | batch | engine median (ms) | engine mean (ms) | "
        "exact certificate median (ms) | scikit-learn retrain (ms) | speedup (median) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        exact = _ms(r["exact median s"]) if "exact median s" in r else "-"
        lines.append(
            f"| {r['dataset']} | {r['n']} | {r['classes']} | {r['batch']} | "
            f"{_ms(r['adaptive (default) median s'])} | {_ms(r['adaptive (default) mean s'])} | "
            f"{exact} | {_ms(r['sklearn retrain s'])} | {r['speedup (median)']:.0f}x |"
        )
    return [*lines, ""]


def _flat(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## The same 100-record batch at several n (MNIST 3 vs 8 subsets, d = 784)",
        "",
        "| n | adaptive certificate, median (ms) | exact certificate, median (ms) |",
        "|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {_ms(r['adaptive (default) median s'])} | {_ms(r['exact median s'])} |"
        )
    return [*lines, ""]


def _fidelity(f: dict[str, Any]) -> list[str]:
    return [
        "## Fidelity against an exact refit",
        "",
        f"{f['removed']} records forgotten in batches of {f['batches_of']} (default method and "
        "certificate), then compared with a model fitted from scratch on the remaining records "
        "(same objective, same perturbation).",
        "",
        "| relative parameter distance | test accuracy (unlearned) | test accuracy (refit) | "
        "certificate | budget |",
        "|---|---|---|---|---|",
        f"| {f['relative_parameter_distance']:.2e} | {f['test_accuracy_unlearned']:.4f} | "
        f"{f['test_accuracy_refit']:.4f} | {f['certificate']:.3g} | {f['budget']:.3g} |",
        "",
    ]


def _forgetting(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Did forgetting work? Feature injection and membership inference",
        "",
        "Feature injection (Izzo et al., AISTATS 2021): a feature that is 1 on `m` records of "
        "class 0 and 0 elsewhere, those records relabelled 1 (rows rescaled into the unit "
        "ball), learned and then forgotten. The table gives the share of the records' weight "
        "on the feature that is left, |w - w_retrain| / |w_trained - w_retrain| (0 is "
        "perfect; target for the default method: at most 1%), lambda = 1e-3. A retrain's "
        "weight is not 0 but -b_j / (lambda n'), from the objective's perturbation b: its "
        "share of the trained weight is in the last column. *default* is the engine's "
        "default, Fisher steps with the adaptive certificate, which takes an influence step "
        "between two measurements of the residual (the step its last batch reported is in "
        "parentheses); *exact* measures every batch, so every step is a Fisher step.",
        "",
        "| data | n | m | sigma | removal | default | influence | exact | retrain | "
        "certificate default / budget | retrain's weight / trained weight |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for f in r["injection"]:
            res, cert = f["residual"], f["certificate"]
            lines.append(
                f"| {r['dataset']} | {r['n']} | {r['injected']} | {f['sigma']:g} | "
                f"{f['removal']} | {res['fisher']:.1e} ({f['reported']['fisher']}) | "
                f"{res['influence']:.1e} | {res['exact']:.1e} | {res['retrain']:.0e} | "
                f"{cert['fisher']:.3g} / {f['budget']:.3g} | "
                f"{f['retrained_weight'] / f['trained_weight']:.3f} |"
            )
    lines += [
        "",
        "Membership inference (the loss-threshold attack of Yeom et al., 2018): 1% of the "
        "records, chosen at random, forgotten in batches of 10 with the default method; the "
        "attack's ROC AUC at telling them from the test set by their loss, under the published "
        "model and under a model retrained from scratch without them (same objective and b). "
        "Target: within 0.02.",
        "",
        "| data | removed | test records | AUC published | AUC retrained | gap | certificate "
        "/ budget |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["membership"]
        lines.append(
            f"| {r['dataset']} | {m['removed']} | {m['n_unseen']} | {m['auc_published']:.4f} | "
            f"{m['auc_retrained']:.4f} | {m['gap']:+.4f} | {m['certificate']:.3g} / "
            f"{m['budget']:.3g} |"
        )
    return [*lines, ""]


def _watch(lat: dict[str, Any]) -> str:
    if "watch_p50_s" not in lat:
        return f"not measured ({lat.get('watch_error', 'no version seen')})"
    return f"{lat['watch_p50_s']:.3f} / {lat['watch_p99_s']:.3f}"


def _pipeline(p: dict[str, Any]) -> list[str]:
    t, lat, low, base = p["throughput"], p["latency"], p["latency_low_rate"], p["baseline"]
    drain, ceiling, raw, bulk = p["drain"], p["faust_ceiling"], p["raw_ceiling"], p["bulk"]
    ds = p["dataset"]
    where = "embedded Tansu and redis-server" if p["embedded_services"] else "external services"
    return [
        "## End to end: broker, worker, Redis",
        "",
        f"Deletion requests (one record each) through {where} on this machine, "
        f"{p['partitions']} partitions, `unlearn worker` in a child process; binary logistic "
        f"regression on {ds['name']} (n = {ds['n']}, d = {ds['d']}). Each phase has its own "
        "model and worker, warmed up first (the first batch loads the model). Events per "
        "second run from the first send to the Redis commit of the version covering the last "
        "event; an event's latency runs from its timestamp to the commit of the version it "
        "took effect in (its receipt's `completed_at`). The backlog figures run from the "
        "first batch after the (re)start to the last, so they leave out the group join; "
        "the no-op faust agent is built as the worker's agents are and bounds what a worker "
        "reading through faust can consume on this machine; the batch consumer with a no-op "
        "handler is how the intake stage reads `unlearn.deletions` now (aiokafka record "
        "batches, no per-event stream) and bounds it. `unlearn bench pipeline --json` prints "
        "these figures.",
        "",
        "| figure | pipeline | target | scikit-learn baseline |",
        "|---|---|---|---|",
        f"| sustained deletions/s ({t['events']} events, batches up to "
        f"{t['worker_settings']['max_batch']}, wait {t['worker_settings']['max_wait']} s) | "
        f"{format_rate(t['events_per_second'])} | 10,000 | "
        f"{format_rate(base['events_per_second_at_mean_batch'])} "
        f"(a refit of {base['sklearn_refit_s']:.2f} s per batch of {t['mean_batch']:.0f}) |",
        f"| sustained deletions/s draining a backlog of {drain['events']} (worker restarted, "
        f"producer idle) | {format_rate(drain['events_per_second'])} | 10,000 | |",
        f"| the same backlog through a faust agent that does nothing (`bench.noop_agent`) | "
        f"{format_rate(ceiling['events_per_second'])} | | |",
        f"| the same backlog through the intake's batch consumer with a no-op handler "
        f"(`workers.consumer.BatchConsumer`) | {format_rate(raw['events_per_second'])} | | |",
        f"| records erased/s, requests naming {bulk['records_per_request']} records each "
        f"({bulk['records']} records) | {format_rate(bulk['records_per_second'])} | 100,000 | |",
        f"| versions published / mean batch | {t['versions_published']} / "
        f"{t['mean_batch']:.0f} | | |",
        f"| producer send rate (events/s) | {format_rate(t['producer_events_per_second'])} | | |",
        f"| latency p50 / p95 / p99 / max (s) at {format_rate(lat['achieved_rate'])} events/s "
        f"({lat['events']} events, wait {lat['worker_settings']['max_wait']} s) | "
        f"{lat['p50_s']:.3f} / {lat['p95_s']:.3f} / {lat['p99_s']:.3f} / {lat['max_s']:.3f} | "
        "p99 < 0.25 | |",
        f"| latency p50 / p95 / p99 / max (s) at {format_rate(low['achieved_rate'])} events/s | "
        f"{low['p50_s']:.3f} / {low['p95_s']:.3f} / {low['p99_s']:.3f} / {low['max_s']:.3f} | | |",
        f"| publication to a watching consumer holding the predictor, p50 / p99 (s), at "
        f"{format_rate(lat['achieved_rate'])} events/s ({lat.get('watch_versions', 0)} versions) | "
        f"{_watch(lat)} | | |",
        "",
    ]


def render(results: dict[str, Any]) -> str:
    """The markdown report of one run."""
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench.run`); every figure below comes from one "
        "run on the machine described. Times are wall-clock seconds unless marked ms. "
        "`unlearn bench engine --json` prints the same figures as JSON.",
        "",
        *_machine(results["machine"]),
        *_guo(results["guo_setting"]),
        *_costs(results["batch_cost"]),
        *_flat(results["flat_in_n"]),
        *_fidelity(results["fidelity"]),
        *(_forgetting(results["forgetting"]) if "forgetting" in results else []),
        *(_pipeline(results["pipeline"]) if "pipeline" in results else []),
        *([scale_bench.markdown(results["scale"])] if "scale" in results else []),
        *([federated.markdown(results["federated"])] if "federated" in results else []),
        *([audit_bench.markdown(results["audit"])] if "audit" in results else []),
        *([features_bench.markdown(results["features"])] if "features" in results else []),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--json", type=Path, default=None, help="also write the raw figures")
    args = parser.parse_args()
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    results = run_engine_bench(quick=args.quick, log=log)
    results["pipeline"] = run_pipeline_bench(quick=args.quick, log=log)
    results["scale"] = scale_bench.run(quick=args.quick, log=log)
    results["federated"] = federated.run(quick=args.quick, log=log)
    results["audit"] = audit_bench.run(quick=args.quick, log=log)
    results["features"] = features_bench.run(quick=args.quick, log=log)
    args.output.write_text(render(results) + "\n")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
