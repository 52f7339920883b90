"""The registry of model kinds: every engine is in it once, under the kind it writes."""

import inspect

import numpy as np
import pytest

from pipeline import LogisticUnlearner, RidgeUnlearner
from pipeline.errors import InvalidInput
from pipeline.unlearning.kinds import KINDS, kind_named, kind_of, kind_of_state

#: What `unlearn train` offers, for every kind at once.
CLI_OPTIONS = {
    "lam": 1e-3,
    "alpha": 1.0,
    "sigma": 1.0,
    "epsilon": 1.0,
    "delta": 1e-4,
    "seed": 3,
    "fit_intercept": True,
}


def test_every_kind_names_its_engine_and_the_engine_its_kind():
    assert set(KINDS) == {"logistic", "ridge"}
    assert {k.engine for k in KINDS.values()} == {LogisticUnlearner, RidgeUnlearner}
    for name, kind in KINDS.items():
        assert kind.name == name == kind.engine.kind
        assert kind.params() == kind.engine.param_names()


@pytest.mark.parametrize("name", sorted(KINDS))
def test_a_kind_builds_fits_and_resumes_its_engine(name, cancer):
    X, y = cancer
    kind = kind_named(name)
    engine = kind.build(**kind.select(CLI_OPTIONS)).fit(X[:100], y[:100])
    assert kind_of(engine) is kind
    state = engine.state_dict(include_records=True)
    assert kind_of_state(state) is kind
    resumed = kind.resume(state)
    assert type(resumed) is kind.engine
    np.testing.assert_array_equal(resumed.coef_, engine.coef_)
    assert kind.classes(engine) == ([0, 1] if kind.classifier else None)
    assert kind.score in ("accuracy", "r2")


def test_the_cli_options_each_kind_takes():
    assert set(kind_named("logistic").select(CLI_OPTIONS)) == set(CLI_OPTIONS) - {"alpha"}
    assert set(kind_named("ridge").select(CLI_OPTIONS)) == set(CLI_OPTIONS) - {"lam"}


def test_bad_kinds_and_parameters_are_named():
    with pytest.raises(InvalidInput, match="'forest' is not one of 'logistic', 'ridge'"):
        kind_named("forest")
    with pytest.raises(InvalidInput, match=r"takes no parameter\(s\) \['alpha'\]"):
        kind_named("logistic").build(alpha=1.0)
    with pytest.raises(InvalidInput, match="kind 'None'"):
        kind_of_state({})


def test_label_checks_name_the_record_the_label_and_the_fix(cancer):
    X, y = cancer
    logistic = LogisticUnlearner(lam=1e-2, sigma=1.0, seed=0).fit(X[:50], y[:50])
    ridge = RidgeUnlearner().fit(X[:50], y[:50].astype(float))
    check = kind_of(logistic).check_label
    assert check(logistic, 1, record_id="r", model_id="m") is None
    assert check(logistic, 7, record_id="r", model_id="m") == (
        "unknown_class",
        "record 'r' has label 7, not one of model 'm''s classes [0, 1]: refit the model to "
        "add a class",
    )
    assert check(logistic, "1", record_id="r", model_id="m")[0] == "unknown_class"
    check = kind_of(ridge).check_label
    assert check(ridge, 2.5, record_id="r", model_id="m") is None
    assert check(ridge, "x", record_id="r", model_id="m") == (
        "schema",
        "record 'r' has label 'x': model 'm' is a ridge regressor and needs a number",
    )


# -- everything kind-specific is read from the entry ------------------------------------------
def _published(spec):
    """The version a reader gets back for ``spec`` (no Redis: the store's own derivation)."""
    from datetime import UTC, datetime

    from pipeline.store.codec import encode_array
    from pipeline.store.versions import ModelVersion

    coef, intercept = spec.checked()
    meta = spec.metadata(
        model_id="m",
        version=1,
        parent=None,
        n_records=0,
        created_at=datetime.now(UTC),
        coef_spec=encode_array(coef)[1],
        intercept_spec=encode_array(intercept)[1],
        n_features=int(coef.shape[-1]),
    )
    return ModelVersion(meta, coef, intercept)


@pytest.mark.parametrize(
    ("name", "data"), [("logistic", "cancer"), ("logistic", "digits"), ("ridge", "cancer")]
)
def test_a_published_version_predicts_and_scores_as_its_engine(name, data, request):
    """Engine -> spec -> stored metadata -> served predictor: the entry alone says how."""
    from pipeline.sdk import LinearPredictor
    from pipeline.training import engine_spec

    X, y = request.getfixturevalue(data)
    kind = kind_named(name)
    y = y if kind.classifier else y.astype(float)
    engine = kind.build(**kind.select(CLI_OPTIONS)).fit(X[:300], y[:300])
    spec = engine_spec(engine, method="fit", seq=1, holdout_metrics={}, extra={})
    version = _published(spec)
    assert version.metadata.kind == name
    served = LinearPredictor(version)
    if kind.classifier:
        np.testing.assert_array_equal(served.predict(X[300:]), engine.predict(X[300:]))
    else:  # X @ coef + intercept, not [X, 1] @ w: equal to round-off
        np.testing.assert_allclose(served.predict(X[300:]), engine.predict(X[300:]), rtol=1e-12)
    assert served.score(X[300:], y[300:]) == pytest.approx(engine.score(X[300:], y[300:]))
    assert kind.metric(engine.predict(X[300:]), y[300:]) == pytest.approx(
        engine.score(X[300:], y[300:])
    )
    if kind.classifier:
        np.testing.assert_allclose(served.predict_proba(X[300:]), engine.predict_proba(X[300:]))
    else:
        with pytest.raises(InvalidInput, match="no predict_proba"):
            served.predict_proba(X[300:])
    # the uncertified reference scores with the same metric as the kind's score
    reference = kind.baseline().fit(X[:300], y[:300])
    assert kind.metric(reference.predict(X[300:]), y[300:]) == pytest.approx(
        reference.score(X[300:], y[300:])
    )


@pytest.mark.parametrize("name", sorted(KINDS))
def test_a_kind_names_its_federated_server_and_the_parameters_it_takes(name):
    kind = kind_named(name)
    server = kind.federated_server()
    assert server.kind == name
    params = set(server.stream_params())
    assert params <= set(inspect.signature(server.__init__).parameters)
    assert not params & {"self", "classes", "n_features"}
    classes = [0, 1, 2] if kind.classifier else None
    built = server.for_federation(4, classes, {})
    assert type(built) is server


def test_a_stored_kind_is_one_of_the_registry():
    from pydantic import ValidationError

    from pipeline.store.versions import ModelSpec, VersionMetadata

    schema = VersionMetadata.model_json_schema()["properties"]["kind"]
    assert schema["enum"] == list(KINDS)
    spec = ModelSpec(kind="forest", coef=np.zeros(3), intercept=0.0, method="fit", seq=0)
    with pytest.raises(InvalidInput, match="'forest' is not one of"):
        spec.checked()
    good = _published(ModelSpec(kind="ridge", coef=np.zeros(3), intercept=0.0, method="fit", seq=0))
    with pytest.raises(ValidationError, match="'forest' is not one of"):
        VersionMetadata.model_validate({**good.metadata.model_dump(), "kind": "forest"})


def test_the_shapes_of_a_version_share_their_fields():
    """ModelSpec -> VersionMetadata -> ModelPublished: each shared field copied by name."""
    from dataclasses import fields

    from pipeline.events import ModelPublished
    from pipeline.store.versions import ModelSpec, VersionMetadata

    spec_fields = {f.name for f in fields(ModelSpec)} - {"coef", "intercept"}
    assert spec_fields <= set(VersionMetadata.model_fields)
    envelope = {"schema_version", "ts", "type", "event_id"}
    assert set(ModelPublished.model_fields) - envelope <= set(VersionMetadata.model_fields)
    spec = ModelSpec(
        kind="logistic",
        coef=np.ones(3),
        intercept=0.5,
        method="fisher",
        seq=7,
        classes=[0, 1],
        certificate=0.1,
        budget=1.0,
        holdout_metrics={"accuracy": 0.9},
        extra={"k": 1},
    )
    meta = _published(spec).metadata
    for name in spec_fields - {"n_records"}:
        assert getattr(meta, name) == getattr(spec, name), name
    notice = meta.notice()
    assert notice.event_id == "pub:m:1" and notice.ts == meta.created_at
    for name in set(ModelPublished.model_fields) - envelope:
        assert getattr(notice, name) == getattr(meta, name), name


#: Modules not yet reading the registry, each with why.
NOT_YET: dict[str, str] = {}
_KIND_NAMES = set(KINDS)


def _kind_switches(path):
    """Lines of ``path`` that compare with a kind's name or enumerate kinds in a type."""
    import io
    import tokenize

    tokens = [
        t
        for t in tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
        if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT)
    ]
    hits = []
    for i, tok in enumerate(tokens):
        if tok.type != tokenize.STRING or tok.string.strip("'\"") not in _KIND_NAMES:
            continue
        before = tokens[i - 1].string if i else ""
        after = tokens[i + 1].string if i + 1 < len(tokens) else ""
        two_before = tokens[i - 2].string if i > 1 else ""
        if (
            "==" in (before, after)
            or "!=" in (before, after)
            or (before == "[" and two_before == "Literal")
            or (before in "([{," and two_before in ("in", "Literal"))
            or (before == "," and tokens[i - 2].string.strip("'\"") in _KIND_NAMES)
        ):
            hits.append(f"{path}:{tok.start[0]}: {tok.line.strip()}")
    return hits


def test_only_the_registry_switches_on_a_kind():
    """Adding a kind touches the registry and its own modules: nothing else compares a kind's
    name (``kind == "logistic"``) or lists the kinds in a type (``Literal["logistic", ...]``)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    allowed = {"pipeline/unlearning/kinds.py", *NOT_YET}
    found = []
    for path in sorted([*root.glob("pipeline/**/*.py"), *root.glob("workers/**/*.py")]):
        if str(path.relative_to(root)) not in allowed:
            found += _kind_switches(path)
    assert not found, "read the kind's entry in pipeline/unlearning/kinds.py instead:\n" + (
        "\n".join(found)
    )


def test_the_switch_finder_finds_switches(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        'if kind == "ridge":\n    pass\nK = Literal["logistic", "ridge"]\n'
        'ok = kind in ("logistic", "ridge")\ndefault = "logistic"\n'
    )
    assert [h.split(": ", 1)[0].rsplit(":", 1)[1] for h in _kind_switches(sample)] == [
        "1",
        "3",
        "3",
        "4",
        "4",
    ]
