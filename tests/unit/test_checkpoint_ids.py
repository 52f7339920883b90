"""Record ids survive a checkpoint's text encoding, whatever they are."""

from hypothesis import given
from hypothesis import strategies as st

from pipeline.unlearning.base import decode_ids, encode_ids

ids = st.lists(
    st.one_of(st.text(), st.integers(), st.tuples(st.integers(), st.text())), unique=True
)


@given(ids)
def test_round_trip(values):
    assert decode_ids(encode_ids(values)) == values


@given(st.lists(st.text(alphabet="abc-0123456789", min_size=1), min_size=1))
def test_plain_string_ids_use_the_compact_form(values):
    assert not encode_ids(values).startswith("[")
