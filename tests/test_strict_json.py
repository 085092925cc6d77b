"""Strict JSON: duplicate member names, non-UTF-8 bytes and lone surrogates are refused in
envelopes, in-toto statements, feed documents, approval statements, batch input and config.

The attack is a parser differential: ``{"payload": A, "payload": B}`` is B to Python's json
(the last copy wins) and A to a first-wins verifier. Each test builds such a document by hand.
New names (DuplicateMemberError, strict_json, ...) are looked up inside the tests so that this
file, run against main 9603a3d, fails test by test rather than on import.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stellakeys import errors
from stellakeys.config import load_settings, load_yaml
from stellakeys.crypto import get_algorithm
from stellakeys.dsse import Envelope, sign_envelope
from stellakeys.errors import ConfigError, MalformedEnvelopeError, UnverifiablePayloadError
from stellakeys.intoto import PAYLOAD_TYPE, Statement, Subject, statement_facts

EVIDENCE = "evidence.stella/v1"


def duplicate_error(name: str = "DuplicateMemberError") -> type[Exception]:
    error: type[Exception] = getattr(errors, name)
    return error


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- the helper ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "member"),
    [
        ('{"a": 1, "a": 2}', "a"),
        ('{"a": 1, "b": {"c": 1, "c": 1}}', "c"),
        ('[{"x": 1}, {"y": 1, "y": 2}]', "y"),
        ('{"\\u0061": 1, "a": 2}', "a"),  # the same name, once escaped
    ],
)
def test_helper_refuses_duplicates_anywhere(text: str, member: str) -> None:
    from stellakeys import strict_json

    with pytest.raises(duplicate_error()) as info:
        strict_json.loads(text.encode(), document="doc")
    assert info.value.member == member  # type: ignore[attr-defined]
    assert f"doc: duplicate member {member!r}" in str(info.value)
    with pytest.raises(duplicate_error()):
        strict_json.loads(text)


def test_helper_encoding_and_surrogate_rules() -> None:
    from stellakeys import strict_json

    assert strict_json.loads(b'{"e": "\\ud83d\\ude00", "b": "\\\\ud800"}') == {
        "e": "\U0001f600",
        "b": "\\ud800",  # an escaped backslash, not a surrogate
    }
    for bad in (
        b'{"s": "\\ud800"}',  # lone high surrogate
        b'{"s": "\\udc00"}',  # lone low surrogate
        b'{"s": "\\ude00\\ud83d"}',  # a pair in the wrong order
        b'{"\\ud800": 1}',  # in a name
        b'["\\ud800"]',  # in an array
        '{"a": 1}'.encode("utf-16"),  # not UTF-8 (json.loads(bytes) would guess UTF-16)
        b"\xef\xbb\xbf{}",  # UTF-8 byte-order mark
        b'{"a": "\xff"}',  # invalid UTF-8
    ):
        with pytest.raises(ValueError):
            strict_json.loads(bad)
    with pytest.raises(ValueError):
        strict_json.loads('{"s": "\udc80"}')  # a str that already holds a raw surrogate


# --- DSSE envelopes ---------------------------------------------------------------------------


def envelope_text(**overrides: str) -> str:
    members = {
        "payload": json.dumps(b64(b"signed")),
        "payloadType": '"text/plain"',
        "signatures": '[{"sig": "' + b64(b"s" * 64) + '", "keyid": "k"}]',
    }
    members.update(overrides)
    return "{" + ", ".join(f'"{k}": {v}' for k, v in members.items()) + "}"


@pytest.mark.parametrize(
    ("text", "member"),
    [
        (
            '{"payload": "' + b64(b"evil") + '", ' + envelope_text()[1:],
            "payload",
        ),
        ('{"payloadType": "x", ' + envelope_text()[1:], "payloadType"),
        ('{"signatures": [], ' + envelope_text()[1:], "signatures"),
        (envelope_text(signatures='[{"sig": "AA==", "sig": "AQ=="}]'), "sig"),
        (envelope_text(signatures='[{"sig": "AA==", "keyid": "a", "keyid": "b"}]'), "keyid"),
    ],
)
def test_envelope_with_a_duplicate_member_is_refused(text: str, member: str) -> None:
    with pytest.raises(duplicate_error("DuplicateEnvelopeMemberError")) as info:
        Envelope.from_json(text.encode())
    assert isinstance(info.value, MalformedEnvelopeError)
    assert info.value.member == member  # type: ignore[attr-defined]
    with pytest.raises(MalformedEnvelopeError, match=f"duplicate member '{member}'"):
        Envelope.from_json(text)


def test_envelope_with_a_lone_surrogate_is_refused_not_a_crash() -> None:
    # On main this parsed, and pae() then raised UnicodeEncodeError (an untyped crash).
    text = envelope_text(payloadType='"text/\\ud800"')
    with pytest.raises(MalformedEnvelopeError, match="surrogate"):
        Envelope.from_json(text.encode())


@pytest.fixture
def km(stellakeys_manager: Any) -> Any:
    stellakeys_manager.generate_key("k1")
    stellakeys_manager.create_anchor("pkg:npm/*", ["k1"], [EVIDENCE])
    return stellakeys_manager


def statement(purl: str) -> bytes:
    return Statement((Subject(purl, {"sha256": "ab" * 32}),), EVIDENCE, {}).to_json()


def with_shadow_payload(envelope: Envelope, shadow: bytes) -> bytes:
    """The signed envelope with a first ``payload`` member a first-wins parser would take."""
    body = envelope.to_json().decode()
    assert body.startswith('{"payload":')
    return ('{"payload":"' + b64(shadow) + '",' + body[1:]).encode()


def test_verify_refuses_an_envelope_with_a_shadow_payload(km: Any) -> None:
    signed = km.get_proof(km.sign(statement("pkg:npm/good@1.0.0"), "k1"))
    forged = with_shadow_payload(signed, statement("pkg:npm/evil@6.6.6"))
    with pytest.raises(duplicate_error("DuplicateEnvelopeMemberError"), match="'payload'"):
        km.verify(forged, purl="pkg:npm/good@1.0.0")


def test_statement_with_a_duplicate_member_is_refused(km: Any) -> None:
    one = statement("pkg:npm/evil@6.6.6").decode()
    two = statement("pkg:npm/good@1.0.0").decode()
    subject_of = json.loads(one)["subject"]
    # {"subject": [evil], ... the honest statement's members including "subject": [good]}
    doubled = ('{"subject":' + json.dumps(subject_of) + "," + two[1:]).encode()
    with pytest.raises(duplicate_error("DuplicateEnvelopeMemberError"), match="'subject'"):
        Statement.from_json(doubled)
    with pytest.raises(MalformedEnvelopeError, match="'subject'"):
        statement_facts(doubled)
    inner = two.replace('"digest":{', '"digest":{"sha256":"' + "cd" * 32 + '",')
    with pytest.raises(MalformedEnvelopeError, match="'sha256'"):
        Statement.from_json(inner.encode())
    # Our own signer refuses it (a peer with a last-wins parser would read "good")...
    with pytest.raises(UnverifiablePayloadError, match="'subject'"):
        km.sign(doubled, "k1")
    # ... and signed by hand with a trusted key, it never verifies as the last-wins reading.
    thief = get_algorithm("ed25519").generate()
    km.import_key("thief", thief.public_key().to_pem())
    km.add_key(km.list_anchors()[0].anchor_id, "thief")
    forged = sign_envelope(PAYLOAD_TYPE, doubled, [thief], ["thief"])
    result = km.verify(forged.to_json(), purl="pkg:npm/good@1.0.0")
    assert not result.ok, result
    assert any("duplicate member 'subject'" in r for r in result.reasons), result.reasons


# --- feed, approval statements, batch ---------------------------------------------------------


def test_feed_document_with_a_duplicate_member_is_refused(km: Any) -> None:
    from stellakeys.feed import FeedConfig, FeedError, parse_feed, publish_feed

    km.generate_key("f1")
    feed = publish_feed(km, FeedConfig(("f1",), threshold=1), include_keys=True).feed
    payload = feed.envelope.payload.decode()
    assert payload.startswith('{"_type":')
    doubled = ('{"anchors":[],' + payload[1:]).encode()
    with pytest.raises(FeedError, match="duplicate member 'anchors'") as info:
        parse_feed(Envelope(feed.envelope.payload_type, doubled, feed.envelope.signatures))
    assert isinstance(info.value, duplicate_error())


def test_approval_statement_with_a_duplicate_member_is_refused() -> None:
    from stellakeys.ceremony.statement import ApprovalStatement

    payload = (
        b'{"_type":"https://stellakeys.dev/ceremony-approval/v1","decision":"reject",'
        b'"approvedAt":"2026-01-16T11:30:00Z","approver":"a@example.com",'
        b'"ceremonyDigest":{"sha256":"' + b"ab" * 32 + b'"},"ceremonyId":"cer-0123456789abcdef",'
        b'"decision":"approve","reason":"ok"}'
    )
    with pytest.raises(duplicate_error("DuplicateEnvelopeMemberError"), match="'decision'"):
        ApprovalStatement.from_json(payload)


def test_batch_input_with_a_duplicate_member_is_refused(tmp_path: Path) -> None:
    from stellakeys.batch import read_items

    jsonl = tmp_path / "items.jsonl"
    jsonl.write_text('{"proof": "sha256:' + "a" * 64 + '", "purl": "pkg:npm/a@1", "purl": "x"}\n')
    with pytest.raises(MalformedEnvelopeError, match="duplicate member 'purl'"):
        read_items(jsonl)


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("signer:\n  profiles: {}\ndatabase:\n  url: a\nsigner:\n  profiles: {}\n", "signer", 5),
        ("database:\n  url: sqlite:///a.db\n  url: postgresql://evil/\n", "url", 3),
        ('{"database": {"url": "a"}, "database": {"url": "b"}}', "database", 1),
        ("ceremonies:\n  threshold: 3\n  'threshold': 1\n", "threshold", 3),
    ],
)
def test_config_with_a_duplicate_key_is_refused(
    tmp_path: Path, text: str, key: str, line: int
) -> None:
    path = tmp_path / "signer.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert isinstance(info.value, duplicate_error("DuplicateConfigKeyError"))
    assert info.value.member == key  # type: ignore[attr-defined]
    assert f"line {line}" in str(info.value) and f"duplicate key {key!r}" in str(info.value)
    with pytest.raises(ConfigError, match="duplicate key"):
        load_settings(home=tmp_path, config_path=path)


def test_config_merge_keys_and_plain_documents_still_load(tmp_path: Path) -> None:
    path = tmp_path / "signer.yaml"
    path.write_text("base: &b {url: a, pool: 1}\ndatabase:\n  <<: *b\n  url: b\n")
    assert load_yaml(path) == {"base": {"url": "a", "pool": 1}, "database": {"url": "b", "pool": 1}}


# --- through the CLI, as a subprocess ---------------------------------------------------------


def cli(env: dict[str, str], *args: str, input: bytes | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "stellakeys_cli", *args],
        input=input,
        capture_output=True,
        env={**os.environ, **env},
        timeout=120,
    )


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    return {
        "STELLAKEYS_HOME": str(home),
        "STELLAKEYS_PASSPHRASE": "strict-json-test-passphrase",
        "STELLAKEYS_ACTOR": "ops@example.com",
    }


def test_cli_verify_refuses_an_envelope_with_a_duplicated_payload(cli_env: dict[str, str]) -> None:
    assert cli(cli_env, "key", "generate", "--key-id", "k1").returncode == 0
    signed = cli(cli_env, "sign", "--key-id", "k1", "--json", input=b"honest\n")
    assert signed.returncode == 0, signed.stderr
    envelope = Envelope.from_dict(json.loads(signed.stdout)["envelope"])
    assert cli(cli_env, "verify", input=envelope.to_json()).returncode == 0
    forged = with_shadow_payload(envelope, b"evil\n")
    proc = cli(cli_env, "verify", input=forged)
    err = proc.stderr.decode()
    assert proc.returncode == 1, (proc.stdout, err)
    assert err.startswith("error: ") and "duplicate member 'payload'" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_refuses_a_config_with_a_duplicate_key(cli_env: dict[str, str]) -> None:
    home = Path(cli_env["STELLAKEYS_HOME"])
    (home / "signer.yaml").write_text("database:\n  url: sqlite:///a.db\n  url: sqlite:///b.db\n")
    proc = cli(cli_env, "key", "list")
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "duplicate key 'url'" in err and "line 3" in err
    assert err.count("\n") == 1 and "Traceback" not in err


# --- the accelerated parse agrees with the reference everywhere ---------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=20,
)
# Bytes that matter to a JSON parser: structure, escapes, digits, exponents, UTF-8 lead and
# continuation bytes, surrogate encodings, a BOM and controls.
_alphabet = st.sampled_from(
    [
        b'"',
        b"\\",
        b"{",
        b"}",
        b"[",
        b"]",
        b":",
        b",",
        b" ",
        b"\t",
        b"\n",
        b"0",
        b"1",
        b"-",
        b"+",
        b".",
        b"e",
        b"E",
        b"u",
        b"d",
        b"8",
        b"N",
        b"a",
        b"I",
        b"\x00",
        b"\x1f",
        b"\x7f",
        b"\xc0",
        b"\xed\xa0\x80",
        b"\xef\xbb\xbf",
        b"\xf4\x90",
        b"\xe2\x82\xac",
        b"\\ud800",
        b"\\udc00",
        b"\\u0061",
        b"true",
        b"null",
        b"NaN",
        b"Infinity",
        b"1e400",
    ]
)


def _outcome(fn: Any, data: str | bytes) -> tuple[str, str]:
    try:
        value = fn(data, document="doc")
    except Exception as exc:  # the comparison is of whatever happens
        return ("error", f"{type(exc).__name__}: {exc}")
    # repr tells 0 from 0.0 from -0.0, and True from 1 in lists and values.
    return ("value", _canonical(value))


def _canonical(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ",".join(f"{k!r}:{_canonical(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_canonical(v) for v in value) + "]"
    return f"{type(value).__name__}:{value!r}"


def _agree(data: str | bytes) -> None:
    from stellakeys import strict_json

    fast = _outcome(strict_json.loads, data)
    reference = _outcome(strict_json.reference_loads, data)
    assert fast == reference, data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_values, st.booleans(), st.sampled_from([None, (",", ":"), (", ", ": ")]))
def test_fast_parse_equals_reference_on_json_texts(
    value: Any, ascii_only: bool, separators: tuple[str, str] | None
) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only, separators=separators)
    _agree(text)
    # A lone surrogate in a str: only the str form exists.
    with contextlib.suppress(UnicodeEncodeError):
        _agree(text.encode("utf-8"))


@settings(max_examples=600, deadline=None)
@given(
    _values, st.lists(st.tuples(st.integers(0, 10_000), _alphabet, st.integers(0, 2)), max_size=4)
)
def test_fast_parse_equals_reference_on_mutated_texts(
    value: Any, edits: list[tuple[int, bytes, int]]
) -> None:
    data = bytearray(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    for where, chunk, how in edits:
        at = where % (len(data) + 1)
        if how == 0:
            data[at:at] = chunk
        elif how == 1:
            data[at : at + 1] = chunk
        else:
            del data[at : at + len(chunk)]
    _agree(bytes(data))
    _agree(bytes(data).decode("utf-8", "surrogateescape"))


@settings(max_examples=400, deadline=None)
@given(st.lists(_alphabet, max_size=12).map(b"".join) | st.binary(max_size=24))
def test_fast_parse_equals_reference_on_arbitrary_bytes(data: bytes) -> None:
    _agree(data)


@pytest.mark.parametrize(
    "text",
    [
        b'{"a": NaN}',
        b'{"a": -Infinity}',
        b'{"a": 1e400}',
        b'{"a": -0}',
        b'{"a": -0.0}',
        b'{"a": 123456789012345678901234567890}',
        b'{"a": 1.7976931348623157e309}',
        b'{"a": 4.9e-325}',
        b'{"a": 0.1e-400}',
        b"\xef\xbb\xbf{}",
        b'{"a": "\\ud800"}',
        b'{"a": "\xed\xa0\x80"}',
        b'{"\\u0061": 1, "a": 2}',
        b"[" * 5000 + b"]" * 5000,
        b'{"a": "\\u00e9\xc3\xa9"}',
        b'{"a":1}\n',
        b" ",
        b"",
    ],
)
def test_fast_parse_equals_reference_on_edge_cases(text: bytes) -> None:
    _agree(text)
    _agree(text.decode("utf-8", "surrogateescape"))
