"""The ``unlearn`` command line.

User mistakes (a bad file, an unknown model, a missing setting) end with one line that says
what was wrong and how to fix it, and exit status 2; never a traceback.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console

from pipeline.errors import PipelineError

app = typer.Typer(
    help="A streaming machine-unlearning pipeline: forget records, keep models certified.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks (the figures `make bench` writes to BENCHMARKS.md).")
app.add_typer(bench_app, name="bench")

console = Console()
errors = Console(stderr=True)


@app.command()
def demo(
    subjects: Annotated[int, typer.Option(help="Subjects whose records are forgotten.")] = 12,
    seed: Annotated[int, typer.Option(help="Seed of the objective perturbation.")] = 0,
) -> None:
    """Fit a certified model on scikit-learn's digits, forget subjects, compare with a retrain."""
    from workers.engine_demo import run_engine_demo

    run_engine_demo(console, n_subjects=subjects, seed=seed)


@bench_app.command("engine")
def bench_engine(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    quick: Annotated[bool, typer.Option(help="Smaller sizes, for a smoke run.")] = False,
) -> None:
    """Engine figures: Guo's MNIST 3-vs-8 setting and batch costs against scikit-learn."""
    from bench.engine import run_engine_bench

    results = run_engine_bench(quick=quick, log=None if as_json else console.print)
    if as_json:
        sys.stdout.write(json.dumps(results) + "\n")
    else:
        console.print_json(json.dumps(results))


def main() -> None:
    """Console entry point: run the app, turning project errors into one clear line."""
    try:
        app()
    except PipelineError as exc:
        errors.print(f"[bold red]error:[/] {exc}")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
