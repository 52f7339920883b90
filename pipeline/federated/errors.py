"""Errors of the federated protocol; all are :class:`~pipeline.errors.PipelineError`."""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.errors import PipelineError

__all__ = ["FederatedError", "RoundMismatch", "UnknownClient"]


class FederatedError(PipelineError):
    """A federated model was used against the protocol (wrong shapes, wrong state)."""


class UnknownClient(FederatedError):
    """A report from, or a removal of, a client that is not a member of the federation."""

    def __init__(self, client_id: str, members: Iterable[str]) -> None:
        self.client_id = client_id
        shown = sorted(members)
        msg = (
            f"client {client_id!r} is not a member of this federation (members: "
            f"{shown[:10]!r}{' ...' if len(shown) > 10 else ''}): fit with it first, or check "
            "the id"
        )
        super().__init__(msg)


class RoundMismatch(FederatedError):
    """A client's statistics answer another round than the one the server is in."""

    def __init__(self, client_id: str, expected: int, got: int) -> None:
        self.client_id = client_id
        self.expected = expected
        self.got = got
        msg = (
            f"client {client_id!r} reported statistics for round {got}, the server is in "
            f"round {expected}: compute them again for the current request"
        )
        super().__init__(msg)
