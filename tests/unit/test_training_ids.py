"""`unlearn train` refuses ids that no deletion request could name."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import InvalidInput
from pipeline.events import MAX_ID
from pipeline.training import Table


def _table(ids: list[str], subjects: list[str]) -> Table:
    return Table(X=np.zeros((len(ids), 2)), y=np.zeros(len(ids)), subjects=subjects, ids=ids)


@pytest.mark.parametrize(
    ("ids", "subjects", "named"),
    [
        (["ok", "x" * (MAX_ID + 1)], ["a", "b"], "row 1: record id"),
        (["ok", "fine"], ["a", "tab\there"], "row 1: subject id"),
        (["", "fine"], ["a", "b"], "row 0: record id"),
        (["ok", "x}:current"], ["a", "b"], "row 1: record id"),
    ],
)
def test_ids_an_event_cannot_name_are_refused_with_their_row(ids, subjects, named):
    with pytest.raises(InvalidInput, match=named) as caught:
        _table(ids, subjects).check_ids()
    assert f"1-{MAX_ID} characters" in str(caught.value)


def test_ids_of_the_longest_allowed_length_pass():
    _table(["r" * MAX_ID], ["s" * MAX_ID]).check_ids()
