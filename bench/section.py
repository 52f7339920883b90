"""The command line bench sections share: ``python -m bench.<section> [--quick] [--json F]``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["section_main"]


def section_main(
    description: str,
    run: Callable[..., dict[str, Any]],
    markdown: Callable[[dict[str, Any]], str],
) -> dict[str, Any]:
    """Run one section (``run(quick=..., log=...)``), print its markdown and, with
    ``--json FILE``, write its raw figures; returns them."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw figures")
    args = parser.parse_args()
    results = run(quick=args.quick, log=lambda msg: print(msg, flush=True))
    print(markdown(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")
    return results
