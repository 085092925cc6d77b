"""DSSE envelopes: PAE, base64, JSON, threshold verification.

Spec: https://github.com/secure-systems-lab/dsse (protocol.md and envelope.md, v1.0).
"""

from __future__ import annotations

import base64
import hashlib
import json
import types
from typing import Any

import attrs
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import given
from hypothesis import strategies as st

from stellakeys.crypto import PrivateKey, get_algorithm, load_public_key_pem
from stellakeys.dsse import (
    Envelope,
    Signature,
    b64decode,
    pae,
    sign_envelope,
    verify_envelope,
)
from stellakeys.errors import MalformedEnvelopeError, StellaKeysError

TYPE = "application/vnd.in-toto+json"
PAYLOAD = b'{"_type":"https://in-toto.io/Statement/v1"}'


@pytest.fixture(scope="module")
def ed() -> PrivateKey:
    return get_algorithm("ed25519").generate()


@pytest.fixture(scope="module")
def ed2() -> PrivateKey:
    return get_algorithm("ed25519").generate()


@pytest.fixture(scope="module")
def mldsa() -> PrivateKey:
    return get_algorithm("ml-dsa-65").generate()


@pytest.fixture(scope="module")
def p256() -> PrivateKey:
    return get_algorithm("ecdsa-p256-sha256").generate()


def with_json(envelope: Envelope, **changes: Any) -> Envelope:
    """The envelope after a JSON round trip with top-level fields replaced."""
    obj = json.loads(envelope.to_json())
    obj.update(changes)
    return Envelope.from_json(json.dumps(obj))


# --- PAE -----------------------------------------------------------------------------------


def test_pae_example_of_the_dsse_spec() -> None:
    # protocol.md, "Test Vectors".
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_signature_of_the_dsse_spec_example_verifies() -> None:
    # protocol.md "Test Vectors": ECDSA P-256/SHA-256 key (X, Y) and the signature of the
    # example envelope as raw r || s. Only a byte-exact PAE makes it verify.
    x = 46950820868899156662930047687818585632848591499744589407958293238635476079160
    y = 5640078356564379163099075877009565129882514886557779369047442380624545832820
    spec_sig = base64.b64decode(
        "A3JqsQGtVsJ2O2xqrI5IcnXip5GToJ3F+FnZ+O88SjtR6rDAajabZKciJTfUiHqJPcIAriEGAHTVeCUjW2JIZA=="
    )
    public = load_public_key_pem(
        ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    der = encode_dss_signature(
        int.from_bytes(spec_sig[:32], "big"), int.from_bytes(spec_sig[32:], "big")
    )
    envelope = Envelope.from_json(
        json.dumps(
            {
                "payload": "aGVsbG8gd29ybGQ=",
                "payloadType": "http://example.com/HelloWorld",
                "signatures": [{"sig": base64.b64encode(der).decode(), "keyid": "66301bbf"}],
            }
        )
    )
    result = verify_envelope(envelope, [public])
    assert result.ok, result.failures
    tampered = attrs.evolve(envelope, payload=b"hello world!")
    assert not verify_envelope(tampered, [public]).ok


def test_pae_lengths_are_utf8_byte_lengths() -> None:
    payload_type = "application/vnd.exämple+json"  # 28 characters, 29 bytes
    assert len(payload_type) == 28
    assert pae(payload_type, "é".encode()) == (
        b"DSSEv1 29 application/vnd.ex\xc3\xa4mple+json 2 \xc3\xa9"
    )
    assert pae("类型", "中文".encode()) == "DSSEv1 6 类型 6 中文".encode()


def test_pae_of_empty_type_and_payload() -> None:
    assert pae("", b"") == b"DSSEv1 0  0 "
    assert Envelope("t", b"body").pae() == pae("t", b"body") == b"DSSEv1 1 t 4 body"


def _parse_pae(data: bytes) -> tuple[bytes, bytes]:
    """An independent PAE decoder: the inverse a verifier could write from the spec."""
    assert data.startswith(b"DSSEv1 ")
    rest = data[len(b"DSSEv1 ") :]
    n_type, rest = rest.split(b" ", 1)
    payload_type, rest = rest[: int(n_type)], rest[int(n_type) :]
    assert rest[:1] == b" "
    n_body, body = rest[1:].split(b" ", 1)
    assert len(body) == int(n_body)
    return payload_type, body


@given(st.text(), st.binary(), st.text(), st.binary())
def test_pae_is_injective(t1: str, p1: bytes, t2: str, p2: bytes) -> None:
    if (t1, p1) != (t2, p2):
        assert pae(t1, p1) != pae(t2, p2)


@given(st.text(), st.binary())
def test_pae_decodes_back_to_its_inputs(payload_type: str, payload: bytes) -> None:
    assert _parse_pae(pae(payload_type, payload)) == (payload_type.encode(), payload)


# --- base64 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("+/+/", b"\xfb\xff\xbf"),
        ("-_-_", b"\xfb\xff\xbf"),
        ("aGVsbG8gd29ybGQ=", b"hello world"),
        ("aGVsbG8gd29ybGQ", b"hello world"),
        ("YQ==", b"a"),
        ("YQ", b"a"),
        ("YWI=", b"ab"),
        ("YWI", b"ab"),
        ("", b""),
        ("-_-_Pj8=", b"\xfb\xff\xbf>?"),
        ("-_-_Pj8", b"\xfb\xff\xbf>?"),
    ],
)
def test_b64decode_accepts_both_alphabets_with_or_without_padding(
    text: str, expected: bytes
) -> None:
    assert b64decode(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "+-",  # mixed alphabets
        "ab/_",
        "a+b-",
        "Y",  # impossible length
        "YQ=",  # partial padding
        "YQ===",
        "Y===",
        "=YQ=",
        "Y=Q=",
        "YQ==YQ==",  # padding in the middle
        "aGVs bG8=",  # whitespace
        "aGVs\nbG8=",
        "aGVsbG8*",  # invalid characters
        "aGVsbG8.",
        "aGVsbG8é",
        "aGVs\x00bG8=",
    ],
)
def test_b64decode_rejects_invalid_input(text: str) -> None:
    with pytest.raises(MalformedEnvelopeError):
        b64decode(text)


def test_b64decode_rejects_non_strings() -> None:
    with pytest.raises(MalformedEnvelopeError):
        b64decode(b"YQ==")  # type: ignore[arg-type]


@given(st.binary(), st.booleans(), st.booleans())
def test_b64_round_trip_both_alphabets(data: bytes, urlsafe: bool, padded: bool) -> None:
    text = (base64.urlsafe_b64encode if urlsafe else base64.standard_b64encode)(data).decode()
    if not padded:
        text = text.rstrip("=")
    assert b64decode(text) == data


def test_envelope_writes_standard_padded_base64() -> None:
    envelope = Envelope("t", b"\xfb\xff\xbf>?", (Signature(b"\xfb\xff", "k"),))
    obj = json.loads(envelope.to_json())
    assert obj["payload"] == "+/+/Pj8="
    assert obj["signatures"] == [{"keyid": "k", "sig": "+/8="}]


def test_url_safe_unpadded_envelope_verifies(ed: PrivateKey) -> None:
    envelope = sign_envelope(TYPE, b"\xfb\xff\xbf>??", [ed])
    obj = json.loads(envelope.to_json())
    obj["payload"] = base64.urlsafe_b64encode(envelope.payload).decode().rstrip("=")
    obj["signatures"][0]["sig"] = base64.urlsafe_b64encode(envelope.signatures[0].sig).decode()
    assert "-" in obj["payload"] or "_" in obj["payload"]
    parsed = Envelope.from_json(json.dumps(obj))
    assert parsed == envelope
    assert verify_envelope(parsed, [ed.public_key()]).ok


# --- JSON ----------------------------------------------------------------------------------


def test_json_is_canonical_and_round_trips(ed: PrivateKey) -> None:
    envelope = Envelope("http://example.com/HelloWorld", b"hello world", (Signature(b"\x01", "k"),))
    assert envelope.to_json() == (
        b'{"payload":"aGVsbG8gd29ybGQ=","payloadType":"http://example.com/HelloWorld",'
        b'"signatures":[{"keyid":"k","sig":"AQ=="}]}'
    )
    assert Envelope.from_json(envelope.to_json()) == envelope
    assert Envelope.from_json(envelope.to_json().decode()) == envelope
    signed = sign_envelope(TYPE, PAYLOAD, [ed], keyids=["key-1"])
    assert Envelope.from_json(signed.to_json()) == signed
    assert Envelope.from_dict(signed.to_dict()) == signed


def test_json_omits_absent_keyid_and_reads_empty_keyid_as_none() -> None:
    envelope = Envelope("t", b"p", (Signature(b"s"),))
    assert json.loads(envelope.to_json())["signatures"] == [{"sig": "cw=="}]
    parsed = Envelope.from_json(
        '{"payload":"cA","payloadType":"t","signatures":[{"sig":"cw","keyid":""}]}'
    )
    assert parsed.signatures == (Signature(b"s", None),)


def test_json_ignores_unknown_fields() -> None:
    parsed = Envelope.from_json(
        '{"payload":"cA==","payloadType":"t","signatures":[{"sig":"cw==","x":1}],"extra":true}'
    )
    assert parsed == Envelope("t", b"p", (Signature(b"s"),))


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"{",
        b"not json",
        b"\xff\xfe\x00",
        b"[]",
        b"null",
        b'"envelope"',
        b"{}",
        b'{"payloadType":"t","signatures":[]}',  # missing payload
        b'{"payload":"cA==","signatures":[]}',  # missing payloadType
        b'{"payload":"cA==","payloadType":"t"}',  # missing signatures
        b'{"payload":1,"payloadType":"t","signatures":[]}',
        b'{"payload":"cA==","payloadType":1,"signatures":[]}',
        b'{"payload":"cA==","payloadType":null,"signatures":[]}',
        b'{"payload":"cA==","payloadType":"t","signatures":{}}',
        b'{"payload":"cA==","payloadType":"t","signatures":"cw=="}',
        b'{"payload":"cA==","payloadType":"t","signatures":["cw=="]}',
        b'{"payload":"cA==","payloadType":"t","signatures":[{}]}',
        b'{"payload":"cA==","payloadType":"t","signatures":[{"sig":1}]}',
        b'{"payload":"cA==","payloadType":"t","signatures":[{"sig":null}]}',
        b'{"payload":"cA==","payloadType":"t","signatures":[{"sig":"cw==","keyid":1}]}',
        b'{"payload":"cA==","payloadType":"t","signatures":[{"sig":"cw==","keyid":["k"]}]}',
        b'{"payload":"c A==","payloadType":"t","signatures":[]}',  # bad base64 payload
        b'{"payload":"cA==","payloadType":"t","signatures":[{"sig":"c*"}]}',  # bad base64 sig
        b'{"payload":"+-","payloadType":"t","signatures":[]}',  # mixed alphabets
    ],
)
def test_malformed_envelopes_are_typed_errors(blob: bytes) -> None:
    with pytest.raises(MalformedEnvelopeError) as info:
        Envelope.from_json(blob)
    assert isinstance(info.value, StellaKeysError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "blob",
    [
        "[" * 100_000,
        '{"payload":"","payloadType":"","signatures":[],"x":' + "[" * 100_000 + "]" * 100_000 + "}",
    ],
)
def test_deeply_nested_json_is_a_typed_error(blob: str) -> None:
    # json.loads raises RecursionError, which is not a ValueError: it must not escape.
    with pytest.raises(MalformedEnvelopeError):
        Envelope.from_json(blob)


@pytest.mark.parametrize("obj", [None, [], "x", 1])
def test_from_dict_needs_an_object(obj: object) -> None:
    with pytest.raises(MalformedEnvelopeError):
        Envelope.from_dict(obj)


envelope_strategy = st.builds(
    Envelope,
    payload_type=st.text(),
    payload=st.binary(),
    signatures=st.lists(
        st.builds(Signature, sig=st.binary(), keyid=st.none() | st.text(min_size=1)),
        max_size=4,
    ).map(tuple),
)


@given(envelope_strategy)
def test_json_round_trip_for_arbitrary_envelopes(envelope: Envelope) -> None:
    blob = envelope.to_json()
    assert Envelope.from_json(blob) == envelope
    assert Envelope.from_json(blob).to_json() == blob
    assert Envelope.from_json(json.dumps(envelope.to_dict(), indent=2)) == envelope


# --- digest and immutability ---------------------------------------------------------------


def test_digest_is_sha256_of_canonical_json_and_stable() -> None:
    envelope = Envelope("t", b"payload", (Signature(b"sig", "k"),))
    assert envelope.digest() == "sha256:" + hashlib.sha256(envelope.to_json()).hexdigest()
    assert envelope.digest() == envelope.digest()
    # Whitespace, key order and base64 alphabet of the input do not change the content address.
    loose = (
        '{ "signatures": [ {"sig": "c2ln", "keyid": "k"} ],\n'
        '  "payloadType": "t", "payload": "cGF5bG9hZA" }'
    )
    assert Envelope.from_json(loose).digest() == envelope.digest()


def test_digest_changes_with_every_field() -> None:
    base = Envelope("t", b"payload", (Signature(b"sig", "k"),))
    variants = [
        attrs.evolve(base, payload_type="u"),
        attrs.evolve(base, payload=b"payloae"),
        attrs.evolve(base, signatures=(Signature(b"sih", "k"),)),
        attrs.evolve(base, signatures=(Signature(b"sig", "j"),)),
        attrs.evolve(base, signatures=(Signature(b"sig"),)),
        attrs.evolve(base, signatures=()),
        base.with_signatures(Signature(b"sig2")),
    ]
    digests = {base.digest(), *(v.digest() for v in variants)}
    assert len(digests) == len(variants) + 1


def test_envelopes_are_immutable() -> None:
    envelope = Envelope("t", b"p", (Signature(b"s"),))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        envelope.payload = b"q"  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        envelope.signatures[0].sig = b"t"  # type: ignore[misc]
    grown = envelope.with_signatures(Signature(b"u"))
    assert envelope.signatures == (Signature(b"s"),)
    assert grown.signatures == (Signature(b"s"), Signature(b"u"))


# --- signing and verification --------------------------------------------------------------


def test_sign_and_verify_with_one_key(ed: PrivateKey) -> None:
    envelope = sign_envelope(TYPE, PAYLOAD, [ed], keyids=["ed"])
    assert envelope.payload_type == TYPE
    assert envelope.payload == PAYLOAD
    ed.public_key().verify(envelope.signatures[0].sig, pae(TYPE, PAYLOAD))
    result = verify_envelope(Envelope.from_json(envelope.to_json()), {"ed": ed.public_key()})
    assert result.ok
    assert result.missing == 0
    assert result.failures == ()
    [verified] = result.verified
    assert verified.key_id == "ed"
    assert verified.fingerprint == ed.fingerprint
    assert verified.algorithm == "ed25519"
    assert verified.signature_index == 0


@pytest.mark.parametrize(
    "change",
    [
        {"payload": base64.b64encode(PAYLOAD + b" ").decode()},
        {"payload": base64.b64encode(b"").decode()},
        {"payloadType": "application/vnd.in-toto+jsonx"},
        {"payloadType": "application/json"},
    ],
)
def test_tampered_payload_or_type_fails_with_reason(ed: PrivateKey, change: dict[str, str]) -> None:
    envelope = sign_envelope(TYPE, PAYLOAD, [ed], keyids=["ed"])
    result = verify_envelope(with_json(envelope, **change), {"ed": ed.public_key()})
    assert not result.ok
    assert result.verified == ()
    assert result.missing == 1
    [failure] = result.failures
    assert failure.signature_index == 0
    assert failure.keyid_hint == "ed"
    assert "does not verify" in failure.reason


@pytest.mark.parametrize("alg_id", ["ed25519", "ecdsa-p256-sha256", "ml-dsa-65"])
def test_tampered_signature_fails_with_reason(alg_id: str) -> None:
    key = get_algorithm(alg_id).generate()
    envelope = sign_envelope(TYPE, PAYLOAD, [key])
    sig = bytearray(envelope.signatures[0].sig)
    sig[len(sig) // 2] ^= 0x01
    tampered = attrs.evolve(envelope, signatures=(Signature(bytes(sig)),))
    result = verify_envelope(tampered, [key.public_key()])
    assert not result.ok
    assert result.missing == 1
    assert [f.signature_index for f in result.failures] == [0]
    assert result.failures[0].reason
    truncated = attrs.evolve(envelope, signatures=(Signature(bytes(sig[:-1])),))
    assert not verify_envelope(truncated, [key.public_key()]).ok


def test_wrong_key_fails(ed: PrivateKey, ed2: PrivateKey) -> None:
    envelope = sign_envelope(TYPE, PAYLOAD, [ed])
    result = verify_envelope(envelope, [ed2.public_key()])
    assert not result.ok
    assert result.failures[0].reason == "does not verify with any trusted key"


def test_multi_algorithm_envelope_meets_threshold_three(
    ed: PrivateKey, mldsa: PrivateKey, p256: PrivateKey
) -> None:
    envelope = sign_envelope(TYPE, PAYLOAD, [ed, mldsa, p256])
    assert len(envelope.signatures) == 3
    trusted = [p256.public_key(), ed.public_key(), mldsa.public_key()]
    result = verify_envelope(Envelope.from_json(envelope.to_json()), trusted, threshold=3)
    assert result.ok
    assert result.failures == ()
    assert {v.fingerprint for v in result.verified} == {k.fingerprint for k in trusted}
    assert [v.algorithm for v in result.verified] == ["ed25519", "ml-dsa-65", "ecdsa-p256-sha256"]
    assert [v.signature_index for v in result.verified] == [0, 1, 2]
    assert not verify_envelope(envelope, trusted, threshold=4).ok
    # Without the ML-DSA key the threshold of three is missed by exactly one.
    partial = verify_envelope(envelope, [ed.public_key(), p256.public_key()], threshold=3)
    assert not partial.ok
    assert partial.missing == 1
    assert [f.signature_index for f in partial.failures] == [1]


def test_same_key_signing_twice_counts_once(ed: PrivateKey) -> None:
    envelope = sign_envelope(TYPE, PAYLOAD, [ed, ed])
    assert len(envelope.signatures) == 2
    result = verify_envelope(envelope, [ed.public_key()], threshold=2)
    assert not result.ok
    assert result.missing == 1
    assert len(result.verified) == 1
    [failure] = result.failures
    assert failure.signature_index == 1
    assert "duplicate" in failure.reason
    assert verify_envelope(envelope, [ed.public_key()], threshold=1).ok


def test_same_key_under_two_keyids_counts_once(ed: PrivateKey) -> None:
    envelope = sign_envelope(TYPE, PAYLOAD, [ed, ed], keyids=["alice", "alice-again"])
    keyring = {"alice": ed.public_key(), "alice-again": ed.public_key()}
    result = verify_envelope(envelope, keyring, threshold=2)
    assert not result.ok
    assert result.missing == 1
    assert [v.fingerprint for v in result.verified] == [ed.fingerprint]
    assert "duplicate" in result.failures[0].reason


def test_two_distinct_keys_meet_threshold_two(ed: PrivateKey, ed2: PrivateKey) -> None:
    envelope = sign_envelope(TYPE, PAYLOAD, [ed, ed2])
    result = verify_envelope(envelope, [ed.public_key(), ed2.public_key()], threshold=2)
    assert result.ok
    assert result.missing == 0


@pytest.mark.parametrize("hint", [None, "no-such-key", "bob", ""])
def test_keyid_is_only_a_hint(ed: PrivateKey, ed2: PrivateKey, hint: str | None) -> None:
    # "bob" names a different trusted key: the hinted key fails, then the others are tried.
    envelope = sign_envelope(TYPE, PAYLOAD, [ed], keyids=[hint])
    keyring = {"alice": ed.public_key(), "bob": ed2.public_key()}
    result = verify_envelope(Envelope.from_json(envelope.to_json()), keyring)
    assert result.ok
    assert result.verified[0].key_id == "alice"
    assert result.verified[0].fingerprint == ed.fingerprint


def test_keys_as_any_mapping_or_iterable(ed: PrivateKey, ed2: PrivateKey) -> None:
    envelope = sign_envelope(TYPE, PAYLOAD, [ed, ed2], keyids=["a", "b"])
    keyring = {"a": ed.public_key(), "b": ed2.public_key()}
    for keys in (
        keyring,
        types.MappingProxyType(keyring),
        [ed.public_key(), ed2.public_key()],
        (k for k in (ed.public_key(), ed2.public_key())),
    ):
        assert verify_envelope(envelope, keys, threshold=2).ok
    assert keyring == {"a": ed.public_key(), "b": ed2.public_key()}
    by_list = verify_envelope(envelope, [ed.public_key()])
    assert by_list.verified[0].key_id == ed.fingerprint  # bare keys are named by fingerprint


def test_failure_reason_names_the_hinted_key(ed: PrivateKey, ed2: PrivateKey) -> None:
    envelope = sign_envelope(TYPE, PAYLOAD, [ed2], keyids=["alice"])
    result = verify_envelope(envelope, {"alice": ed.public_key()})
    assert not result.ok
    assert result.failures[0].keyid_hint == "alice"
    assert "'alice'" in result.failures[0].reason


def test_no_trusted_keys_and_no_signatures(ed: PrivateKey) -> None:
    envelope = sign_envelope(TYPE, PAYLOAD, [ed])
    result = verify_envelope(envelope, [])
    assert not result.ok
    assert result.failures[0].reason == "no trusted keys"
    unsigned = verify_envelope(Envelope(TYPE, PAYLOAD), [ed.public_key()])
    assert not unsigned.ok
    assert unsigned.missing == 1
    assert unsigned.failures == ()


def test_bad_arguments_are_caller_errors(ed: PrivateKey) -> None:
    envelope = sign_envelope(TYPE, PAYLOAD, [ed])
    with pytest.raises(ValueError, match="threshold"):
        verify_envelope(envelope, [ed.public_key()], threshold=0)
    with pytest.raises(ValueError, match="signer"):
        sign_envelope(TYPE, PAYLOAD, [])
    with pytest.raises(ValueError, match="keyids"):
        sign_envelope(TYPE, PAYLOAD, [ed], keyids=["a", "b"])


def test_garbage_signatures_never_raise(
    ed: PrivateKey, p256: PrivateKey, mldsa: PrivateKey
) -> None:
    envelope = Envelope(
        TYPE, PAYLOAD, tuple(Signature(s) for s in (b"", b"\x00" * 64, b"\x30\x00", b"x" * 3309))
    )
    trusted = [ed.public_key(), p256.public_key(), mldsa.public_key()]
    result = verify_envelope(envelope, trusted)
    assert not result.ok
    assert [f.signature_index for f in result.failures] == [0, 1, 2, 3]
