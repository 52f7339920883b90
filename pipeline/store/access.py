"""Redis ACL users of the pipeline: a reader role and a writer role, derived from the key layout.

Each engine checkpoint holds the secret perturbation ``b`` of Guo et al.'s objective
(``ckpt:<version>``); the certificate assumes that whoever inspects a model does not know
it. So the pipeline's state is reached through two Redis users, not one:

``reader``
    Serving teams and privacy officers: :class:`~pipeline.sdk.ModelClient`'s ``get``, ``history``,
    ``watch`` and ``receipt``, and the stored audit reports (:func:`pipeline.audit.load_report`,
    ``latest_report``). Keys: the ``current`` alias, version hashes (coefficients and metadata), the
    versions zset, the publication stream, receipts, the request index, the model index and the
    audit reports (:meth:`KeySpace.reader_key_patterns`); channels: the publication channel.
    Commands: only the read commands those calls send (:data:`READER_COMMANDS`), no write, no
    ``@dangerous`` (no ``SCAN``/``KEYS`` either, which would list every key name). Never
    checkpoints, training records, subject indexes, the holdout or retrain state.
``writer``
    The worker, the retrainer and the ``unlearn train``/``delete``/``retrain`` CLI: every
    key and channel under the namespace, every command but ``@dangerous``.

Redis 6.2 has no read-only key patterns (``%R~`` is Redis 7), so the reader's rules
are its key patterns plus an explicit list of read commands. On connect, redis-py sends
``CLIENT SETINFO`` (and ``CLIENT MAINT_NOTIFICATIONS``); ``CLIENT`` is ``@dangerous`` in
Redis 6.2, so they are refused, redis-py ignores the refusal, and ``ACL LOG`` counts one
denied ``client`` per connection of either role.

Passwords are given to Redis as SHA-256 hashes (``#<hex>``), never in clear in an
``ACL SETUSER`` line, a printed rule or an ACL file. A password must be at least
:data:`MIN_PASSWORD_LENGTH` characters: the hash is unsalted, and ``ACL LIST`` or the ACL
file shows it.

A key name carries a record id verbatim (``rec:<record_id>``) and Redis globs cannot
exclude a character, so a record id that contains ``}:current``, ``}:versions``,
``}:events``, ``}:v:``, ``}:rcpt:`` or ``}:audits`` would make that record readable by the
reader.
Checkpoints, the holdout, subject indexes and retrain state have no free-text part and
never match a reader pattern.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import redis

from pipeline.errors import ConfigError
from pipeline.store.keys import KeySpace

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "READER_COMMANDS",
    "WRITER_COMMANDS",
    "AclUser",
    "AccessRole",
    "SetupResult",
    "acl_file",
    "password_hash",
    "read_password_file",
    "setup_users",
    "write_acl_file",
]

MIN_PASSWORD_LENGTH = 16

READER_COMMANDS: tuple[str, ...] = (
    "get",  # current alias, receipts
    "hget",  # a version's metadata (history, metadata), one audit report
    "hgetall",  # a version's coefficients and metadata (get, watch), the audit reports
    "zrevrange",  # history
    "zrangebyscore",  # watch: versions after the last one yielded
    "smembers",  # request index (receipt), model index
    "xrevrange",  # watch: where the stream is now
    "xread",  # watch: bounded blocking reads of the publication stream
    "multi",  # watch reads the stream position and current at once
    "exec",
    "discard",
    "subscribe",  # the publication channel
    "unsubscribe",
    "ping",  # health checks (redis-py's health_check_interval, pub/sub keep-alive)
)
"""Commands of the reader role: what ``ModelClient`` sends, all read-only."""

WRITER_COMMANDS: tuple[str, ...] = ("+@all", "-@dangerous")
"""Command rules of the writer role: everything but ``@dangerous`` (``KEYS``, ``FLUSH*``,
``CONFIG``, ``ACL``, ``CLIENT``...); a tighter list would have to follow the store's code."""

_USERNAME = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")


class AccessRole(StrEnum):
    """Who connects to Redis."""

    READER = "reader"
    WRITER = "writer"


def password_hash(password: str) -> str:
    """The ``#<sha256 hex>`` rule that sets ``password`` without writing it in clear."""
    return "#" + hashlib.sha256(password.encode("utf-8")).hexdigest()


def read_password_file(path: str | os.PathLike[str], what: str) -> str:
    """Read a password from a file (one trailing newline is dropped).

    Parameters
    ----------
    path : path
        A file holding only the password.
    what : str
        Whose password, for messages (``"reader"``).

    Raises
    ------
    ConfigError
        The file is missing or unreadable, or the password is too short or has a line
        break or a space in it. The message names the file, never its content.
    """
    file = Path(path)
    fix = f"write a long random one there (openssl rand -hex 32 > {file})"
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        msg = f"{what} password file {file} does not exist: {fix}"
        raise ConfigError(msg) from None
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"{what} password file {file} cannot be read ({type(exc).__name__}): {fix}"
        raise ConfigError(msg) from None
    password = text.removesuffix("\n").removesuffix("\r")
    if len(password) < MIN_PASSWORD_LENGTH:
        msg = (
            f"{what} password in {file} has {len(password)} characters, fewer than "
            f"{MIN_PASSWORD_LENGTH}: Redis keeps an unsalted hash of it; {fix}"
        )
        raise ConfigError(msg)
    if any(c.isspace() for c in password):
        msg = f"{what} password in {file} contains a space or a line break: {fix}"
        raise ConfigError(msg)
    return password


def _check_username(name: str, role: str) -> str:
    if not _USERNAME.match(name) or name == "default":
        msg = (
            f"{role} user name {name!r} is not valid: use 1-128 letters, digits, '.', '_', "
            "':', '@' or '-', and not 'default' (the user of unauthenticated connections)"
        )
        raise ConfigError(msg)
    return name


@dataclass(frozen=True)
class AclUser:
    """The ACL rules of one role, for one key namespace.

    Build one with :meth:`for_role`. :meth:`rules` are the arguments of
    ``ACL SETUSER <name>``; :meth:`command` is the line for ``redis-cli`` and
    :meth:`acl_file_line` the line of a Redis ``aclfile``.

    Attributes
    ----------
    role : AccessRole
    name : str
        The Redis user name.
    key_patterns, channel_patterns : tuple of str
        Globs of the keys and pub/sub channels the user may use.
    commands : tuple of str
        Command rules after ``-@all`` (``+get``, ``+@all``, ``-@dangerous``...).
    """

    role: AccessRole
    name: str
    key_patterns: tuple[str, ...]
    channel_patterns: tuple[str, ...]
    commands: tuple[str, ...]

    @classmethod
    def for_role(cls, role: AccessRole | str, keys: KeySpace, name: str | None = None) -> AclUser:
        """The user of ``role`` for the namespace of ``keys``.

        Parameters
        ----------
        role : AccessRole or {"reader", "writer"}
        keys : KeySpace
        name : str, optional
            Redis user name; ``<namespace>-<role>`` by default (``unlearn-reader``), so
            that two namespaces on one Redis get two pairs of users.

        Raises
        ------
        ConfigError
            Unknown role, or a user name Redis or this module would not accept.
        """
        try:
            role = AccessRole(role)
        except ValueError:
            msg = f"unknown role {role!r}: use one of {', '.join(r.value for r in AccessRole)}"
            raise ConfigError(msg) from None
        name = _check_username(name or f"{keys.namespace}-{role.value}", role.value)
        if role is AccessRole.READER:
            return cls(
                role,
                name,
                keys.reader_key_patterns(),
                keys.reader_channel_patterns(),
                tuple(f"+{c}" for c in READER_COMMANDS),
            )
        everything = (keys.namespace_pattern(),)
        return cls(role, name, everything, everything, WRITER_COMMANDS)

    def rules(self, password: str | None = None) -> list[str]:
        """Arguments of ``ACL SETUSER <name>``: the whole definition of the user.

        ``reset`` first, so that applying them again leaves exactly these rules. Without
        ``password`` the user has none and cannot log in until one is added.
        """
        secret = [] if password is None else [password_hash(password)]
        return [
            "reset",
            "on",
            *secret,
            *(f"~{p}" for p in self.key_patterns),
            "resetchannels",  # Redis 6.2: reset leaves acl-pubsub-default (allchannels)
            *(f"&{p}" for p in self.channel_patterns),
            "-@all",
            *self.commands,
        ]

    def command(self, password: str | None = None) -> str:
        """``ACL SETUSER <name> <rules>`` as one line for ``redis-cli`` (globs quoted)."""
        return " ".join(["ACL", "SETUSER", self.name, *map(_quote, self.rules(password))])

    def acl_file_line(self, password: str | None = None) -> str:
        """``user <name> <rules>``: one line of a Redis ACL file (``aclfile``)."""
        return " ".join(["user", self.name, *self.rules(password)])


def _quote(arg: str) -> str:
    """``arg`` for redis-cli: double-quoted when it holds a glob or a brace."""
    return f'"{arg}"' if any(c in arg for c in '*?[]{}"\\ ') else arg


def acl_file(
    users: Sequence[tuple[AclUser, str | None]],
    admin_password: str | None = None,
) -> str:
    """The text of a Redis ACL file with the given users and the ``default`` user.

    Parameters
    ----------
    users : sequence of (AclUser, password or None)
        A user without a password cannot log in until it gets one.
    admin_password : str, optional
        Password of the ``default`` user, which then may do everything (the admin). With
        none, ``default`` is off: unauthenticated connections are refused, and nobody
        can change users at run time (edit the file and restart Redis, or ``ACL LOAD``).

    Returns
    -------
    str
        Lines ``user <name> <rules>``; passwords only as SHA-256 hashes.
    """
    if admin_password is None:
        default = "user default reset off"
    else:
        default = f"user default reset on {password_hash(admin_password)} ~* &* +@all"
    lines = [default, *(user.acl_file_line(password) for user, password in users)]
    return "\n".join(lines) + "\n"


def write_acl_file(path: str | os.PathLike[str], text: str) -> None:
    """Write an ACL file atomically (a reader never sees half of it), mode 0644.

    Redis reads it as its own user, often not the writer's; the file holds password
    hashes only, as ``ACL SAVE`` would write it.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".users-", suffix=".acl", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class SetupResult:
    """What :func:`setup_users` did.

    Attributes
    ----------
    users : tuple of str
        Names of the users created or redefined.
    saved : bool or None
        True: written to the server's ACL file (``ACL SAVE``), so they survive a
        restart. False: the server has no ACL file, the users live in memory until the
        server restarts. None: the admin may not ask (``CONFIG GET`` refused).
    """

    users: tuple[str, ...]
    saved: bool | None


def setup_users(client: Any, users: Sequence[tuple[AclUser, str]]) -> SetupResult:
    """Create or redefine the users on a Redis server, as an admin.

    Parameters
    ----------
    client : redis.Redis
        Connected as a user that may run ``ACL SETUSER`` (and ``CONFIG GET``,
        ``ACL SAVE`` to persist them).
    users : sequence of (AclUser, password)

    Returns
    -------
    SetupResult

    Raises
    ------
    ConfigError
        The client's user may not define users (``NOPERM``), or two users share a name.
    """
    names = [user.name for user, _ in users]
    if len(set(names)) != len(names):
        msg = f"user names {names} repeat: give each role its own Redis user"
        raise ConfigError(msg)
    try:
        for user, password in users:
            client.execute_command("ACL", "SETUSER", user.name, *user.rules(password))
    except redis.exceptions.NoPermissionError:
        msg = (
            "the Redis user in UNLEARN_REDIS_USERNAME/UNLEARN_REDIS_PASSWORD may not define "
            "users (NOPERM on ACL SETUSER): run setup as an admin (a user with +acl)"
        )
        raise ConfigError(msg) from None
    try:
        found = client.config_get("aclfile")
    except redis.exceptions.ResponseError:  # NOPERM, or a managed Redis without CONFIG
        return SetupResult(tuple(names), None)
    aclfile = found.get("aclfile") or found.get(b"aclfile")
    if not aclfile:
        return SetupResult(tuple(names), False)
    try:
        client.execute_command("ACL", "SAVE")
    except redis.exceptions.ResponseError as exc:
        msg = (
            f"the users are defined but ACL SAVE failed ({exc}): they are lost when Redis "
            f"restarts; make its aclfile {aclfile!r} writable by redis-server and run setup "
            "again"
        )
        raise ConfigError(msg) from None
    return SetupResult(tuple(names), True)
