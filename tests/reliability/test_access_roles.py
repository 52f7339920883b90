"""Access roles: readers never see the secret noise ``b``; writers run the pipeline.

A real ``redis-server`` 6.2 (:class:`pipeline.embedded.EmbeddedRedis`, ``requirepass`` for
the admin) with the two users of :mod:`pipeline.store.access`, defined by the product's
rules (``setup_users``, ``unlearn access setup`` / ``rules``), never by a copy of them.
The writer trains a model (``train_model``) and deletes a subject with the worker's logic
(:class:`pipeline.applier.Applier`, in process: no broker).

Proved: the reader does everything ``ModelClient`` does (``get``, ``history``, ``watch`` woken by a
publication while blocked in ``XREAD``, ``receipt``), subscribes to the publication channel and
lists the models, and Redis refuses it nothing else on the way (``ACL LOG``); the reader reads the
stored audit reports; it gets ``NOPERM`` on the checkpoint (which holds ``B``), a record, the record
set, a subject index, the holdout and retrain state, on any write, on listing keys, and on dangerous
commands; the writer reads and writes all of the namespace but no dangerous command; neither reaches
a key or channel outside the namespace, even one whose name starts like it; ``unlearn access``
creates the users from password files (never the command line), says whether they survive a restart,
saves them to an ACL file that Redis loads after a restart, and fails in one line without a
traceback on a bad file, a short password, or a non-admin.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import redis
from sklearn.datasets import load_digits

from pipeline.applier import Applier
from pipeline.audit import audit, latest_report, load_report
from pipeline.embedded import EmbeddedRedis
from pipeline.events import DeletionRequested
from pipeline.ops import Forget
from pipeline.routing import Router
from pipeline.sdk import ModelClient
from pipeline.store import AclUser, KeySpace, Store
from pipeline.store.access import acl_file, password_hash, setup_users
from pipeline.training import Table, train_model

from .support import poll

UNLEARN = str(Path(sys.executable).with_name("unlearn"))
MODEL = "digits-roles"
NoPerm = redis.exceptions.NoPermissionError


def _pw(tag: str) -> str:
    return f"{tag}-{secrets.token_hex(16)}"


@pytest.fixture(scope="module")
def roles():
    """Redis with an admin, a reader and a writer; a model trained by the writer."""
    pw = {"admin": _pw("adm"), "reader": _pw("rdr"), "writer": _pw("wrt")}
    ns = f"roles_{uuid.uuid4().hex[:6]}"
    keys = KeySpace(ns)
    reader, writer = AclUser.for_role("reader", keys), AclUser.for_role("writer", keys)
    server = EmbeddedRedis(password=pw["admin"]).start()
    url = f"redis://{server.host}:{server.port}/0"
    opened: list[Any] = []

    def connect(user: AclUser) -> redis.Redis:
        client = redis.Redis.from_url(url, username=user.name, password=pw[user.role.value])
        opened.append(client)
        return client

    try:
        admin = redis.Redis.from_url(server.url)
        opened.append(admin)
        setup_users(admin, [(reader, pw["reader"]), (writer, pw["writer"])])
        store = Store.from_url(url, ns, username=writer.name, password=pw["writer"])
        opened.append(store)
        X, y = load_digits(return_X_y=True)
        X, y = X[:600] / 16.0, y[:600]
        table = Table(
            X=X,
            y=y,
            subjects=[f"p{i % 60}" for i in range(len(y))],
            ids=[f"r{i}" for i in range(600)],
        )
        train_model(store, MODEL, table, params={"lam": 1e-3, "sigma": 1.0}, holdout=0.2)
        admin.set("other:secret", "not yours")
        yield SimpleNamespace(
            server=server,
            url=url,
            ns=ns,
            keys=keys,
            pw=pw,
            admin=admin,
            store=store,
            reader=reader,
            writer=writer,
            connect=connect,
        )
    finally:
        for client in opened:
            client.close()
        server.stop()


def _acl_denials(admin: redis.Redis, username: str) -> list[str]:
    """What ``ACL LOG`` says ``username`` was refused: the command or key of each entry."""
    out = []
    for entry in admin.execute_command("ACL", "LOG", "128"):
        fields = (
            dict(zip(entry[::2], entry[1::2], strict=True)) if isinstance(entry, list) else entry
        )
        fields = {_s(k): _s(v) for k, v in fields.items()}
        if fields["username"] == username:
            out.append(f"{fields['reason']}:{fields['object']}")
    return out


def _s(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def test_the_reader_does_all_that_model_client_does(roles) -> None:
    r, keys = roles, roles.keys
    r.admin.execute_command("ACL", "LOG", "RESET")
    client = ModelClient(r.url, r.ns, username=r.reader.name, password=r.pw["reader"])
    try:
        first = client.get(MODEL)
        expected = r.store.models.get(MODEL)
        assert first.version == expected.version and np.array_equal(first.coef_, expected.coef)
        assert client.history(MODEL) == r.store.models.history(MODEL)

        channel = r.connect(r.reader).pubsub()
        channel.subscribe(keys.channel(MODEL))
        assert poll(lambda: channel.get_message(timeout=0.1), 30, "the subscription")["type"] in (
            "subscribe",
            b"subscribe",
        )

        # a watcher blocked in XREAD as the reader, woken by the writer's publication
        stop, seen = threading.Event(), []

        def follow() -> None:
            for predictor in client.watch(MODEL, idle_timeout=60, stop=stop):
                seen.append(predictor)
                return

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        poll(
            lambda: any(
                c.get("user") == r.reader.name and c.get("cmd") == "xread"
                for c in r.admin.client_list()
            ),
            30,
            "the reader's watch to block in XREAD",
        )
        request, held, version = _delete(r.store, "p7")
        thread.join(60)
        stop.set()
        assert [p.version for p in seen] == [version]
        assert np.array_equal(seen[0].coef_, r.store.models.get(MODEL, version).coef)

        notice = poll(
            lambda: (
                (m := channel.get_message(timeout=0.1))
                and m["type"] in ("message", b"message")
                and m
            ),
            30,
            "the publication notice on the channel",
        )
        assert int(json.loads(notice["data"])["version"]) == version
        channel.close()

        [receipt] = client.receipt(request.request_id)
        assert receipt.status.value == "applied" and receipt.version == version
        assert receipt.n_records >= len(held)  # and the subject's holdout rows
        assert client.history(MODEL)[0].version == version == client.get(MODEL).version
        as_reader = Store.from_url(r.url, r.ns, username=r.reader.name, password=r.pw["reader"])
        try:
            assert as_reader.models.models() == [MODEL]
        finally:
            as_reader.close()
    finally:
        client.close()
    # exactly what is needed: Redis refused the reader nothing but redis-py's CLIENT
    # SETINFO / MAINT_NOTIFICATIONS handshake (CLIENT is @dangerous in Redis 6.2)
    assert set(_acl_denials(r.admin, r.reader.name)) <= {"command:client"}


def _delete(store: Store, subject: str) -> tuple[DeletionRequested, set[str], int]:
    """Delete a subject as the worker does (its logic, in process); the new version."""
    applier = Applier(store)
    held = store.records.subject_record_ids(MODEL, subject)
    assert held
    request = DeletionRequested(request_id=f"req-{uuid.uuid4().hex[:8]}", subject_id=subject)
    by_model, _ = Router(applier.store).route([Forget(request)])
    out = applier.apply(MODEL, by_model[MODEL])
    assert out.published is not None
    return request, held, out.published.version


def _reader_forbidden_keys(r) -> dict[str, tuple[str, ...]]:
    """Keys the reader must not read, with a read command the reader may otherwise send."""
    k, version = r.keys, r.store.models.current_version(MODEL)
    record = sorted(r.store.records.ids(MODEL))[0]
    return {
        "checkpoint": ("HGETALL", k.checkpoint(MODEL, version)),
        "checkpoint field B": ("HGET", k.checkpoint(MODEL, version), "a:B"),
        "checkpoint index": ("ZREVRANGE", k.checkpoints(MODEL), "0", "-1"),
        "record": ("HGETALL", k.record(MODEL, record)),
        "record set": ("SMEMBERS", k.records(MODEL)),
        "subject records": ("SMEMBERS", k.subject_records(MODEL, "p8")),
        "subject index": ("SMEMBERS", k.subject_models("p8")),
        "holdout": ("HGETALL", k.holdout(MODEL)),
        "retrain result": ("HGETALL", k.retrain_result(MODEL)),
        "retrain in flight": ("GET", k.retrain_inflight(MODEL)),
        "applied events": ("ZRANGEBYSCORE", k.applied_events(MODEL), "-inf", "+inf"),
        "applied seq": ("GET", k.applied_seq(MODEL)),
        "pending": ("ZRANGEBYSCORE", k.pending(MODEL), "-inf", "+inf"),
        "worker status": ("GET", k.worker("w1")),
    }


def test_the_reader_cannot_read_the_noise_records_or_subjects(roles) -> None:
    r = roles
    # the keys that matter exist, so a refusal is about permission, not absence
    ckpt = r.store.checkpoints.load(MODEL)
    assert ckpt is not None and "B" in ckpt.state  # the checkpoint holds the secret noise
    forbidden = _reader_forbidden_keys(r)
    for name in ("checkpoint", "record", "record set", "subject records", "holdout"):
        assert r.admin.exists(forbidden[name][1]), name
    reader = r.connect(r.reader)
    allowed = []
    for name, command in forbidden.items():
        try:
            reader.execute_command(*command)
        except NoPerm as exc:
            assert "keys" in str(exc), (name, str(exc))  # refused for the key, not the command
        else:
            allowed.append(name)
    assert not allowed, f"the reader may read {allowed}"
    # nor list key names (record ids), nor dump a key, nor any other command
    for command in (
        ("SCAN", "0"),
        ("KEYS", "*"),
        ("DUMP", r.keys.current(MODEL)),
        ("HKEYS", r.keys.version(MODEL, 1)),
        ("TYPE", r.keys.current(MODEL)),
    ):
        with pytest.raises(NoPerm, match="command"):
            reader.execute_command(*command)


def test_the_reader_reads_the_stored_audit_reports_and_nothing_they_were_made_from(
    roles,
) -> None:
    """A privacy officer with the reader role reads what ``unlearn audit`` stored, with the
    commands ``latest_report`` and ``load_report`` send, while the checkpoint (b), the
    records and the holdout the audit read stay refused."""
    r = roles
    report = audit(r.store, MODEL)  # the writer audits and stores the report
    r.admin.execute_command("ACL", "LOG", "RESET")
    as_reader = Store.from_url(r.url, r.ns, username=r.reader.name, password=r.pw["reader"])
    try:
        latest = latest_report(as_reader, MODEL)
        assert latest is not None and latest.to_dict() == report.to_dict()
        stored = load_report(as_reader, MODEL, report.version)
        assert stored is not None and stored.verdict == report.verdict
    finally:
        as_reader.close()
    assert set(_acl_denials(r.admin, r.reader.name)) <= {"command:client"}
    reader = r.connect(r.reader)
    forbidden = _reader_forbidden_keys(r)
    for name in ("checkpoint", "checkpoint field B", "record", "record set", "holdout"):
        with pytest.raises(NoPerm, match="keys"):
            reader.execute_command(*forbidden[name])


def test_the_reader_writes_nothing(roles) -> None:
    r, k = roles, roles.keys
    reader = r.connect(r.reader)
    before = {
        key: r.admin.dump(key)
        for key in (k.current(MODEL), k.version(MODEL, 1), k.versions(MODEL), k.events(MODEL))
    }
    writes = [
        ("SET", k.current(MODEL), "1"),
        ("DEL", k.version(MODEL, 1)),
        ("UNLINK", k.version(MODEL, 1)),
        ("HSET", k.version(MODEL, 1), "coef", "0"),
        ("XADD", k.events(MODEL), "*", "version", "9"),
        ("ZADD", k.versions(MODEL), "9", "9"),
        ("EXPIRE", k.current(MODEL), "1"),
        ("SADD", k.model_index(), "other"),
        ("PUBLISH", k.channel(MODEL), "{}"),
        ("FLUSHALL",),
        ("CONFIG", "GET", "requirepass"),
        ("ACL", "SETUSER", r.reader.name, "+@all"),
    ]
    for command in writes:
        with pytest.raises(NoPerm, match="command"):
            reader.execute_command(*command)
    with reader.pipeline(transaction=True) as pipe:  # nor inside a transaction
        pipe.set(k.current(MODEL), "1")
        with pytest.raises(redis.exceptions.ResponseError):
            pipe.execute()
    assert {key: r.admin.dump(key) for key in before} == before


def test_the_writer_runs_the_pipeline_and_nothing_dangerous(roles) -> None:
    r, k = roles, roles.keys
    store = r.store  # connected as the writer, which trained the model
    before = store.models.current_version(MODEL)
    request, _, version = _delete(store, "p9")
    assert version == before + 1
    assert not store.records.subject_record_ids(MODEL, "p9")
    assert [rc.status.value for rc in store.receipts.get(request.request_id)] == ["applied"]
    assert store.checkpoints.load(MODEL) is not None and store.records.count(MODEL) > 0
    kept = [m.version for m in store.models.history(MODEL)]
    assert store.models.retain(MODEL, keep_last=1) == sorted(set(kept) - {version})
    assert [m.version for m in store.models.history(MODEL)] == [version]
    writer = r.connect(r.writer)
    status = k.worker("w1")
    writer.set(status, "{}", ex=30)
    assert [key.decode() for key in writer.scan_iter(match=k.worker("*"))] == [status]
    assert writer.publish(k.channel(MODEL), "{}") >= 0
    for command in (
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("KEYS", "*"),
        ("CONFIG", "GET", "requirepass"),
        ("ACL", "LIST"),
        ("ACL", "SETUSER", r.writer.name, "~*"),
        ("SORT", k.versions(MODEL)),
        ("CLIENT", "LIST"),
        ("DEBUG", "SLEEP", "0"),
    ):
        with pytest.raises(NoPerm, match="command"):
            writer.execute_command(*command)


@pytest.mark.parametrize("role", ["reader", "writer"])
def test_neither_role_reaches_outside_the_namespace(roles, role: str) -> None:
    r = roles
    user = r.reader if role == "reader" else r.writer
    client = r.connect(user)
    # a neighbouring namespace whose name starts like this one, with the same key shapes
    neighbour = KeySpace(f"{r.ns}x")
    r.admin.set(neighbour.current(MODEL), "1")
    r.admin.hset(neighbour.version(MODEL, 1), "meta", "{}")
    for command in (
        ("GET", "other:secret"),
        ("GET", neighbour.current(MODEL)),
        ("HGETALL", neighbour.version(MODEL, 1)),
        ("SMEMBERS", neighbour.model_index()),
        ("GET", KeySpace("unlearn").current(MODEL)),
    ):
        with pytest.raises(NoPerm, match="keys"):
            client.execute_command(*command)
    if role == "writer":
        for command in (
            ("SET", "other:mine", "x"),
            ("DEL", "other:secret"),
            ("SET", neighbour.current(MODEL), "2"),
            ("PUBLISH", neighbour.channel(MODEL), "{}"),
            ("PUBLISH", "other-channel", "{}"),
        ):
            with pytest.raises(NoPerm):
                client.execute_command(*command)
    for channel in (neighbour.channel(MODEL), "other-channel"):
        lone = r.connect(user)
        with pytest.raises(NoPerm, match="channel"):
            lone.execute_command("SUBSCRIBE", channel)
    assert r.admin.get("other:secret") == b"not yours"
    assert r.admin.get(neighbour.current(MODEL)) == b"1"


# ---- the operator's commands -------------------------------------------------------------
def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("UNLEARN_")}
    return subprocess.run(
        [UNLEARN, "access", *args],
        env={**base, "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_error(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _files(tmp_path: Path, **passwords: str) -> dict[str, str]:
    paths = {}
    for name, password in passwords.items():
        path = tmp_path / f"{name}.pw"
        path.write_text(password + "\n")
        paths[name] = str(path)
    return paths


def test_unlearn_access_setup_creates_the_users_from_password_files(roles, tmp_path) -> None:
    r = roles
    ns = f"{r.ns}_cli"
    pw = {"reader": _pw("cli-rdr"), "writer": _pw("cli-wrt")}
    files = _files(tmp_path, **pw, short="too-short")
    env = {
        "UNLEARN_REDIS_URL": r.url,
        "UNLEARN_REDIS_PASSWORD": r.pw["admin"],
        "UNLEARN_KEY_NAMESPACE": ns,
    }
    rules = _cli("rules", "--reader-password-file", files["reader"], env=env)
    assert rules.returncode == 0, rules.stderr
    lines = rules.stdout.splitlines()
    assert [line.split()[:3] for line in lines] == [
        ["ACL", "SETUSER", f"{ns}-reader"],
        ["ACL", "SETUSER", f"{ns}-writer"],
    ]
    assert password_hash(pw["reader"]) in lines[0]
    assert f"{ns}-writer has no password" in rules.stderr

    done = _cli(
        "setup",
        "--reader-password-file",
        files["reader"],
        "--writer-password-file",
        files["writer"],
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"user {ns}-reader (reader) defined" in done.stdout
    assert "no aclfile" in done.stderr and "lost when it restarts" in done.stderr
    keys = KeySpace(ns)
    as_reader = redis.Redis.from_url(r.url, username=f"{ns}-reader", password=pw["reader"])
    as_writer = redis.Redis.from_url(r.url, username=f"{ns}-writer", password=pw["writer"])
    try:
        as_writer.hset(keys.checkpoint(MODEL, 1), "a:B", b"\x00" * 8)
        as_writer.set(keys.current(MODEL), "1")
        assert as_reader.get(keys.current(MODEL)) == b"1"
        with pytest.raises(NoPerm):
            as_reader.hgetall(keys.checkpoint(MODEL, 1))
        with pytest.raises(NoPerm):  # the CLI's users are not the fixture's namespace's
            as_reader.get(r.keys.current(MODEL))
    finally:
        as_reader.close()
        as_writer.close()

    outputs = [rules.stdout + rules.stderr, done.stdout + done.stderr]
    missing = tmp_path / "nope.pw"
    failures = {
        "missing": _cli(
            "setup",
            "--reader-password-file",
            str(missing),
            "--writer-password-file",
            files["writer"],
            env=env,
        ),
        "short": _cli(
            "setup",
            "--reader-password-file",
            files["reader"],
            "--writer-password-file",
            files["short"],
            env=env,
        ),
        "not admin": _cli(
            "setup",
            "--reader-password-file",
            files["reader"],
            "--writer-password-file",
            files["writer"],
            env={
                **env,
                "UNLEARN_REDIS_USERNAME": f"{ns}-writer",
                "UNLEARN_REDIS_PASSWORD": pw["writer"],
            },
        ),
    }
    _one_error(failures["missing"], str(missing), "does not exist", "openssl rand")
    _one_error(failures["short"], files["short"], "fewer than 16")
    _one_error(failures["not admin"], "NOPERM", "admin")
    outputs += [f.stdout + f.stderr for f in failures.values()]
    for secret in (*pw.values(), r.pw["admin"]):
        assert not [text for text in outputs if secret in text]


class _RedisWithAclFile(EmbeddedRedis):
    """redis-server that loads its users from an ACL file (and saves them there)."""

    def __init__(self, aclfile: Path, password: str) -> None:
        super().__init__(password=password, directory=aclfile.parent)
        self.aclfile = aclfile

    def _argv(self) -> list[str]:
        return [*super()._argv(), "--aclfile", str(self.aclfile)]


def test_an_acl_file_keeps_the_users_across_a_restart(roles, tmp_path) -> None:
    r = roles
    admin_pw, old, new = _pw("adm2"), _pw("old-rdr"), _pw("new-rdr")
    files = _files(tmp_path, admin=admin_pw, old=old, new=new, writer=_pw("wrt2"))
    aclfile = tmp_path / "users.acl"
    env = {"UNLEARN_KEY_NAMESPACE": r.ns}
    wrote = _cli(
        "rules",
        "--acl-file",
        "--admin-password-file",
        files["admin"],
        "--reader-password-file",
        files["old"],
        "--writer-password-file",
        files["writer"],
        "--output",
        str(aclfile),
        env=env,
    )
    assert wrote.returncode == 0, wrote.stderr
    text = aclfile.read_text()
    assert text.splitlines()[0].startswith("user default reset on #")
    assert all(secret not in text for secret in (admin_pw, old, new))
    server = _RedisWithAclFile(aclfile, admin_pw).start()
    url = f"redis://{server.host}:{server.port}/0"
    try:
        with pytest.raises(redis.exceptions.AuthenticationError):  # no anonymous access
            redis.Redis.from_url(url).get(r.keys.current(MODEL))
        with redis.Redis.from_url(url, username=r.reader.name, password=old) as reader:
            assert reader.get(r.keys.current(MODEL)) is None
            with pytest.raises(NoPerm):
                reader.hgetall(r.keys.checkpoint(MODEL, 1))

        # a new reader password, applied by setup and saved to the file
        done = _cli(
            "setup",
            "--reader-password-file",
            files["new"],
            "--writer-password-file",
            files["writer"],
            env={**env, "UNLEARN_REDIS_URL": url, "UNLEARN_REDIS_PASSWORD": admin_pw},
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "ACL SAVE" in done.stdout and "survive a restart" in done.stdout
        server.restart()
        with redis.Redis.from_url(url, username=r.reader.name, password=new) as reader:
            assert reader.get(r.keys.current(MODEL)) is None
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis.from_url(url, username=r.reader.name, password=old).ping()
    finally:
        server.stop()


def test_the_acl_file_without_an_admin_turns_the_default_user_off(roles) -> None:
    text = acl_file([(roles.reader, None)])
    first, second = text.splitlines()
    assert first == "user default reset off"
    assert second.startswith(f"user {roles.reader.name} reset on ~")
    assert "#" not in second  # no password: the user cannot log in until given one


def test_the_key_layout_doc_lists_the_rules_the_code_applies() -> None:
    from pipeline.store.access import READER_COMMANDS, WRITER_COMMANDS

    doc = (Path(__file__).resolve().parents[2] / "docs" / "redis-keys.md").read_text()
    rows = {
        line.split("|")[1].split(":")[0].strip(" `"): [c.strip() for c in line.split("|")[2:5]]
        for line in doc.splitlines()
        if line.startswith(("| `reader`", "| `writer`"))
    }
    keys = KeySpace("unlearn")

    def ticked(cell: str) -> list[str]:
        return [part.strip("` ,") for part in cell.split("`, `")]

    assert ticked(rows["reader"][0]) == list(keys.reader_key_patterns())
    assert ticked(rows["reader"][1]) == list(keys.reader_channel_patterns())
    listed = rows["reader"][2].removesuffix(" only").strip("`").lower().split()
    assert listed == list(READER_COMMANDS)
    assert ticked(rows["writer"][0]) == ticked(rows["writer"][1]) == [keys.namespace_pattern()]
    assert rows["writer"][2].strip("`").split() == list(WRITER_COMMANDS)
