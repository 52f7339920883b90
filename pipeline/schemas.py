"""JSON Schema export of the event models, for producers written in other languages.

The files in ``docs/schemas/`` are generated from :mod:`pipeline.events`; a unit test
fails when they drift from the models. Regenerate them with::

    python -m pipeline.schemas docs/schemas
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pipeline.events import EVENT_TYPES

__all__ = ["SCHEMA_DIR", "export_schemas", "json_schemas", "render_schema"]

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "docs" / "schemas"
_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema (draft 2020-12) of every event, by event type name."""
    out: dict[str, dict[str, Any]] = {}
    for cls in EVENT_TYPES:
        schema = cls.model_json_schema(by_alias=True, mode="validation")
        out[cls.__name__] = {"$schema": _DIALECT, "$id": f"{cls.__name__}.json", **schema}
    return out


def render_schema(schema: dict[str, Any]) -> str:
    """The exact text written to disk (sorted keys, two-space indent, final newline)."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def export_schemas(directory: str | Path = SCHEMA_DIR) -> list[Path]:
    """Write ``<EventType>.json`` for every event into ``directory``.

    Returns
    -------
    list of Path
        The files written.
    """
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = target / f"{name}.json"
        path.write_text(render_schema(schema), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in export_schemas(sys.argv[1] if len(sys.argv) > 1 else SCHEMA_DIR):
        print(path)
