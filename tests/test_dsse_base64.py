"""The SIMD base64 codec (pybase64) must be exactly as strict as binascii's strict mode.

``stellakeys.dsse.b64decode`` decodes every payload and signature; it switched from
``binascii.a2b_base64(strict_mode=True)`` to ``pybase64.b64decode(validate=True)`` for speed
(issue 20). A decoder that accepted one more spelling would make two different envelope
texts one proof (or refuse what peers accept): so the two are compared on every input
hypothesis can think of, valid and hostile, and on hand-picked edge cases.
"""

from __future__ import annotations

import base64
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stellakeys import dsse
from stellakeys.errors import MalformedEnvelopeError


def _outcome(fn: object, raw: bytes) -> bytes | str:
    """What b64decode makes of ``raw`` with ``fn`` as its standard-alphabet decoder (the
    length and alphabet checks around it are the same for both)."""
    saved = dsse._decode_standard
    dsse._decode_standard = fn  # type: ignore[assignment]
    try:
        return dsse.b64decode(raw.decode("latin-1"))
    except MalformedEnvelopeError:
        return "refused"
    finally:
        dsse._decode_standard = saved


def test_the_fast_codec_is_in_use() -> None:
    assert dsse._decode_standard is dsse._decode_standard_simd


ALPHABET = string.ascii_letters + string.digits + "+/=-_ \n\r\t.*"


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=40).map(str.encode))
def test_same_verdict_as_binascii_on_any_text(raw: bytes) -> None:
    assert _outcome(dsse._decode_standard_simd, raw) == _outcome(
        dsse._decode_standard_binascii, raw
    )


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=3), st.data())
def test_same_verdict_on_mutated_valid_base64(data: bytes, cut: int, draw: st.DataObject) -> None:
    raw = bytearray(base64.b64encode(data))
    if raw:
        i = draw.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        raw[i] = draw.draw(st.sampled_from(b"A=+/-_ \n\x00\xff"))
    mutated = bytes(raw[: len(raw) - cut] if cut else raw)
    assert _outcome(dsse._decode_standard_simd, mutated) == _outcome(
        dsse._decode_standard_binascii, mutated
    )


@pytest.mark.parametrize(
    "text",
    ["YWJj\n", "YW=j", "YWJjZA==YQ==", "YWJ=", "YR==", "====", "A===", "YWJj ", "\x00AAA", ""],
)
def test_edge_cases_agree(text: str) -> None:
    raw = text.encode("latin-1")
    assert _outcome(dsse._decode_standard_simd, raw) == _outcome(
        dsse._decode_standard_binascii, raw
    )


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_round_trip_and_urlsafe(data: bytes) -> None:
    assert dsse.b64decode(dsse.b64encode(data)) == data
    assert dsse.b64encode(data) == base64.b64encode(data).decode()
    urlsafe = base64.urlsafe_b64encode(data).decode().rstrip("=")
    assert dsse.b64decode(urlsafe) == data


def test_mixed_alphabets_are_refused() -> None:
    with pytest.raises(MalformedEnvelopeError, match="mixes"):
        dsse.b64decode("a+b-")
