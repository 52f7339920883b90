"""``docs/model-format.md`` against what the real redis-server holds, and the export files.

A consumer in another language follows the document, not the code: these tests read the
raw Redis bytes exactly as the document says (its reference reader, and byte offsets
computed by hand), and compare with ``ModelClient.get``.
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from pipeline.embedded import EmbeddedServices
from pipeline.sdk import ModelClient
from pipeline.sdk.export import (
    MODEL_SCHEMA_DIR,
    export_bytes,
    load_export,
    model_schemas,
    render_schema,
)
from pipeline.store import ModelSpec, Store

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "model-format.md"
UNLEARN = str(Path(sys.executable).with_name("unlearn"))

# values whose decimal or binary forms are easy to get wrong
AWKWARD = [1 / 3, -0.0, 1e-300, -2.5e300, 0.1, -7.0, 2.0**-1074, 123456789.123456789]


def awkward(shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = np.resize(np.array(AWKWARD), int(np.prod(shape)))
    return (values * rng.choice([1.0, -1.0], size=values.size)).reshape(shape)


SPECS = {
    "logistic-2": dict(
        kind="logistic", coef=awkward((3,), 0), intercept=-0.3, classes=["no", "yes"]
    ),
    "logistic-4": dict(
        kind="logistic", coef=awkward((4, 3), 1), intercept=awkward((4,), 2), classes=[0, 1, 2, 3]
    ),
    "ridge-1": dict(kind="ridge", coef=awkward((5,), 3), intercept=1 / 7, classes=None),
    "ridge-2": dict(
        kind="ridge", coef=awkward((2, 3), 4), intercept=awkward((2,), 5), classes=None
    ),
}
SHAPES = {  # the document's table: coef shape, intercept shape
    "logistic-2": ([3], []),
    "logistic-4": ([4, 3], [4]),
    "ridge-1": ([5], []),
    "ridge-2": ([2, 3], [2]),
}


def doc_block(marker: str, lang: str = "python") -> str:
    blocks = re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"docs/model-format.md should have one {lang} block with {marker!r}"
    return found[0]


def reference_reader() -> Any:
    scope: dict[str, Any] = {}
    exec(compile(doc_block("def read_version"), str(DOC), "exec"), scope)  # noqa: S102
    return scope["read_version"]


@pytest.fixture
def namespace() -> str:
    return f"fmt_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def store(services: EmbeddedServices, namespace: str) -> Iterator[Store]:
    with Store.from_url(services.redis_url, namespace) as s:
        yield s


def publish(store: Store, model_id: str, name: str, version: int = 1) -> None:
    spec = SPECS[name]
    store.models.publish(
        model_id,
        ModelSpec(
            kind=spec["kind"],
            coef=spec["coef"] * version,
            intercept=np.asarray(spec["intercept"]) * version,
            classes=spec["classes"],
            method="fit",
            seq=version,
            certificate=0.01,
            budget=0.2,
        ),
        version - 1,
    )


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_documented_layout_is_what_redis_holds(
    services: EmbeddedServices, store: Store, namespace: str, name: str
) -> None:
    publish(store, name, name)
    raw = store.client.hgetall(f"{namespace}:{{{name}}}:v:1")  # the key as documented
    assert store.client.get(f"{namespace}:{{{name}}}:current") == b"1"
    assert set(raw) == {b"meta", b"coef", b"intercept"}
    meta = json.loads(raw[b"meta"].decode("utf-8"))
    schema = json.loads((MODEL_SCHEMA_DIR / "VersionMetadata.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(meta)
    coef_shape, intercept_shape = SHAPES[name]
    assert meta["coef_spec"] == {"dtype": "<f8", "shape": coef_shape}
    assert meta["intercept_spec"] == {"dtype": "<f8", "shape": intercept_shape}

    with ModelClient(services.redis_url, namespace=namespace) as client:
        clf = client.get(name)
        # by hand: 8 * prod(shape) bytes, little-endian binary64, row-major, no header
        for field, spec, expected in (
            (b"coef", meta["coef_spec"], clf.coef_),
            (b"intercept", meta["intercept_spec"], clf.intercept_),
        ):
            data = raw[field]
            assert len(data) == 8 * math.prod(spec["shape"])
            flat = np.asarray(expected).reshape(-1)
            for index in np.ndindex(*spec["shape"]):
                offset = 8 * int(np.ravel_multi_index(index, spec["shape"])) if index else 0
                (value,) = struct.unpack_from("<d", data, offset)
                assert struct.pack("<d", value) == struct.pack("<d", expected[index])
            assert data == flat.astype("<f8").tobytes()

        # the document's reference reader (standard library only) gives the same numbers
        read = reference_reader()
        for version in (None, 1):
            doc = read(store.client, name, version, namespace=namespace)
            assert doc["meta"] == meta
            assert np.array(doc["coef"]).tobytes() == clf.coef_.astype("<f8").tobytes()
            assert np.array(doc["intercept"]).tobytes() == clf.intercept_.astype("<f8").tobytes()
        with pytest.raises(LookupError, match="does not hold version 9"):
            read(store.client, name, 9, namespace=namespace)

        # the documented prediction formulas give the predictor's answers
        X = np.array(
            [[0.5, -1.0, 2.0, 0.25, 3.0][: clf.n_features_in_], [1.0] * clf.n_features_in_]
        )
        X = X * 1e-300  # keep the scores finite whatever the awkward coefficients
        for row, got in zip(X, clf.decision_function(X), strict=True):
            coef, intercept = doc["coef"], doc["intercept"]
            if isinstance(intercept, float):
                want = sum(c * x for c, x in zip(coef, row, strict=True)) + intercept
                assert got == pytest.approx(want, rel=1e-12, abs=1e-300)
            else:
                for k, (c_k, b_k) in enumerate(zip(coef, intercept, strict=True)):
                    want = sum(c * x for c, x in zip(c_k, row, strict=True)) + b_k
                    assert got[k] == pytest.approx(want, rel=1e-12, abs=1e-300)


def test_documented_probabilities_and_labels(
    services: EmbeddedServices, store: Store, namespace: str
) -> None:
    """The formulas of the document, on a model with ordinary coefficients."""
    for model_id, coef, intercept, classes in (
        ("two", np.array([0.8, -1.2, 0.05]), -0.3, ["stay", "churn"]),
        (
            "four",
            np.arange(12.0).reshape(4, 3) / 10 - 0.5,
            np.array([0.1, -0.2, 0.3, 0.0]),
            [3, 1, 4, 9],
        ),
    ):
        spec = ModelSpec(
            kind="logistic", coef=coef, intercept=intercept, classes=classes, method="fit", seq=0
        )
        store.models.publish(model_id, spec, 0)
        doc = reference_reader()(store.client, model_id, namespace=namespace)
        X = np.array([[1.0, 2.0, -1.0], [-0.5, 0.0, 3.0], [0.0, 0.0, 0.0]])
        with ModelClient(services.redis_url, namespace=namespace) as client:
            clf = client.get(model_id)
        for row, proba, label in zip(X, clf.predict_proba(X), clf.predict(X), strict=True):
            if len(classes) == 2:
                z = sum(c * x for c, x in zip(doc["coef"], row, strict=True)) + doc["intercept"]
                want = [1 - sigmoid(z), sigmoid(z)]
                want_label = classes[1] if z > 0 else classes[0]
            else:
                zs = [
                    sum(c * x for c, x in zip(c_k, row, strict=True)) + b_k
                    for c_k, b_k in zip(doc["coef"], doc["intercept"], strict=True)
                ]
                total = sum(sigmoid(z) for z in zs)
                want = [sigmoid(z) / total for z in zs]
                want_label = classes[max(range(len(zs)), key=zs.__getitem__)]
            assert proba.tolist() == pytest.approx(want, rel=1e-12)
            assert label == want_label


# ---- JSON Schemas --------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(model_schemas()))
def test_committed_model_schemas_match_the_code(name: str) -> None:
    path = MODEL_SCHEMA_DIR / f"{name}.json"
    assert path.exists(), f"missing {path}: run python -m pipeline.sdk.export"
    assert path.read_text() == render_schema(model_schemas()[name]), (
        f"{path} is stale: regenerate with python -m pipeline.sdk.export"
    )
    jsonschema.Draft202012Validator.check_schema(json.loads(path.read_text()))


# ---- export files ---------------------------------------------------------------------------
def test_exports_read_back_bit_for_bit(
    services: EmbeddedServices, store: Store, namespace: str, tmp_path: Path
) -> None:
    schema = json.loads((MODEL_SCHEMA_DIR / "ModelExport.json").read_text())
    with ModelClient(services.redis_url, namespace=namespace) as client:
        for name in sorted(SPECS):
            publish(store, name, name)
            stored = store.models.get(name)
            clf = client.get(name)
            document = json.loads(export_bytes(stored, "json"))
            jsonschema.Draft202012Validator(schema).validate(document)
            assert document["format"] == "unlearn.model" and document["format_version"] == 1
            npz = export_bytes(stored, "npz")
            with zipfile.ZipFile(io.BytesIO(npz)) as archive:
                assert sorted(archive.namelist()) == ["coef.npy", "intercept.npy", "metadata.npy"]
            with np.load(io.BytesIO(npz), allow_pickle=False) as arrays:
                assert arrays["coef"].dtype == np.dtype("<f8")
                assert json.loads(arrays["metadata"].item()) == document["metadata"]
            for fmt, data in (("json", json.dumps(document).encode()), ("npz", npz)):
                path = tmp_path / f"{name}.{fmt}"
                path.write_bytes(data)
                back = load_export(path)
                assert back.metadata == clf.metadata
                assert back.coef.tobytes() == clf.coef_.tobytes()
                assert back.intercept.tobytes() == clf.intercept_.tobytes()


def unlearn(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [UNLEARN, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def cli_env(services: EmbeddedServices, namespace: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("UNLEARN_")}
    return env | {
        "UNLEARN_REDIS_URL": services.redis_url,
        "UNLEARN_KAFKA_BOOTSTRAP": services.kafka_bootstrap,
        "UNLEARN_KEY_NAMESPACE": namespace,
        "COLUMNS": "200",
    }


def test_cli_model_export(store: Store, cli_env: dict[str, str], tmp_path: Path) -> None:
    publish(store, "churn", "logistic-2", 1)
    publish(store, "churn", "logistic-2", 2)

    done = unlearn(cli_env, "model", "export", "churn")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["metadata"]["version"] == 2
    assert document["coef"] == (SPECS["logistic-2"]["coef"] * 2).tolist()

    out = tmp_path / "churn-v1.npz"
    done = unlearn(
        cli_env,
        "model",
        "export",
        "churn",
        "--version",
        "1",
        "--format",
        "npz",
        "--output",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    assert "wrote churn v1 (npz)" in done.stdout
    back = load_export(out)
    assert back.metadata.version == 1
    assert back.coef.tobytes() == SPECS["logistic-2"]["coef"].astype("<f8").tobytes()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "xml"], "export format 'xml' is not supported: use one of json, npz"),
        (["--format", "npz"], "--format npz writes a binary file: give --output PATH"),
        (["--output", "/nonexistent-dir/m.json"], "directory /nonexistent-dir does not exist"),
        (["--version", "7"], "model 'churn' has no version 7"),
    ],
)
def test_cli_model_export_mistakes_are_one_line(
    store: Store, cli_env: dict[str, str], args: list[str], message: str
) -> None:
    publish(store, "churn", "ridge-1")
    done = unlearn(cli_env, "model", "export", "churn", *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and "Traceback" not in done.stdout + done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr


def test_cli_model_export_unknown_model(cli_env: dict[str, str]) -> None:
    done = unlearn(cli_env, "model", "export", "nope")
    assert done.returncode == 2 and "model 'nope' does not exist" in done.stderr
    assert "Traceback" not in done.stderr and done.stderr.strip().count("\n") == 0
