"""in-toto Statement v1 helper (https://github.com/in-toto/attestation, spec/v1/statement.md)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packageurl import PackageURL

from stellakeys.crypto import get_algorithm
from stellakeys.dsse import Envelope, sign_envelope, verify_envelope
from stellakeys.errors import MalformedEnvelopeError
from stellakeys.intoto import PAYLOAD_TYPE, STATEMENT_TYPE, Statement, Subject, statement_facts

SHA = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
PURL = "pkg:oci/scanner@sha256%3A" + SHA + "?repository_url=registry.example.com%2Fstellaops"
PROVENANCE = "https://slsa.dev/provenance/v1"


def statement() -> Statement:
    return Statement(
        subjects=(
            Subject(PURL, {"sha256": SHA}),
            Subject("pkg:npm/%40angular/core@16.2.0", {"sha512": "ab" * 64, "sha256": SHA}),
        ),
        predicate_type=PROVENANCE,
        predicate={"buildDefinition": {"buildType": "https://example.com/build@v1"}, "n": [1, 2]},
    )


def test_constants_are_those_of_the_spec() -> None:
    assert PAYLOAD_TYPE == "application/vnd.in-toto+json"
    assert STATEMENT_TYPE == "https://in-toto.io/Statement/v1"
    assert Envelope.PAYLOAD_TYPE_INTOTO == PAYLOAD_TYPE


def test_statement_json_shape() -> None:
    obj = json.loads(statement().to_json())
    assert obj == {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [
            {"name": PURL, "digest": {"sha256": SHA}},
            {
                "name": "pkg:npm/%40angular/core@16.2.0",
                "digest": {"sha256": SHA, "sha512": "ab" * 64},
            },
        ],
        "predicateType": PROVENANCE,
        "predicate": {
            "buildDefinition": {"buildType": "https://example.com/build@v1"},
            "n": [1, 2],
        },
    }
    # Canonical bytes: sorted keys, no whitespace, so equal statements have equal digests.
    blob = statement().to_json()
    assert blob == json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def test_statement_round_trip() -> None:
    original = statement()
    parsed = Statement.from_json(original.to_json())
    assert parsed == original
    assert parsed.to_json() == original.to_json()
    assert Statement.from_json(original.to_json().decode()) == original
    assert Statement.from_json(json.dumps(original.to_dict(), indent=2)) == original


def test_subject_digest_order_does_not_matter() -> None:
    a = Subject("x", {"sha256": SHA, "sha512": "cd" * 64})
    b = Subject("x", {"sha512": "cd" * 64, "sha256": SHA})
    assert a == b
    assert list(a.digest) == ["sha256", "sha512"]


def test_purl_subject_name_survives_byte_for_byte() -> None:
    parsed = Statement.from_json(statement().to_json())
    names = [s.name for s in parsed.subjects]
    assert names[0] == PURL
    purl = PackageURL.from_string(names[0])
    assert (purl.type, purl.name, purl.version) == ("oci", "scanner", "sha256:" + SHA)
    assert purl.qualifiers == {"repository_url": "registry.example.com/stellaops"}
    angular = PackageURL.from_string(names[1])
    assert (angular.namespace, angular.name, angular.version) == ("@angular", "core", "16.2.0")


def test_statement_in_a_signed_envelope() -> None:
    key = get_algorithm("ed25519").generate()
    envelope = sign_envelope(PAYLOAD_TYPE, statement().to_json(), [key])
    received = Envelope.from_json(envelope.to_json())
    assert verify_envelope(received, [key.public_key()]).ok
    assert received.payload_type == PAYLOAD_TYPE
    assert Statement.from_json(received.payload) == statement()


def test_predicate_is_optional() -> None:
    blob = json.dumps(
        {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": "a", "digest": {"sha256": SHA}}],
            "predicateType": "t",
        }
    )
    assert Statement.from_json(blob).predicate == {}


def _valid() -> dict[str, Any]:
    return json.loads(statement().to_json())


@pytest.mark.parametrize(
    "mutate",
    [
        lambda o: o.pop("_type"),
        lambda o: o.update(_type="https://in-toto.io/Statement/v0.2"),
        lambda o: o.update(_type="https://in-toto.io/Statement/v1 "),
        lambda o: o.update(_type="https://in-toto.io/Statement/V1"),
        lambda o: o.update(_type=["https://in-toto.io/Statement/v1"]),
        # v1 field rules: every subject has a non-empty DigestSet of non-empty strings, the
        # spec's named algorithms in lowercase hex; a name, when present, is a string.
        lambda o: o["subject"][0].update(digest={}),
        lambda o: o["subject"][0].update(digest={"sha256": ""}),
        lambda o: o["subject"][0].update(digest={"sha256": SHA.upper()}),
        lambda o: o["subject"][0].update(digest={"sha512": "not hex"}),
        lambda o: o["subject"][0].update(digest={"gitCommit": "ABCDEF"}),
        lambda o: o["subject"][0].update(name=None),
        lambda o: o["subject"].append({"name": "second"}),
        lambda o: o["subject"].append("pkg:npm/b@1"),
        lambda o: o.update(predicateType="   "),
        lambda o: o.update(predicate=None),
        lambda o: o.pop("subject"),
        lambda o: o.update(subject=[]),
        lambda o: o.update(subject={"name": "a", "digest": {"sha256": SHA}}),
        lambda o: o.update(subject=["pkg:npm/a"]),
        lambda o: o["subject"][0].update(name=7),
        lambda o: o["subject"][0].pop("digest"),
        lambda o: o["subject"][0].update(digest=SHA),
        lambda o: o["subject"][0].update(digest={"sha256": 1}),
        lambda o: o["subject"][0].update(digest=[["sha256", SHA]]),
        lambda o: o.pop("predicateType"),
        lambda o: o.update(predicateType=""),
        lambda o: o.update(predicateType=["t"]),
        lambda o: o.update(predicate=[1, 2]),
        lambda o: o.update(predicate="x"),
    ],
)
def test_malformed_statements_are_typed_errors(mutate: Any) -> None:
    obj = _valid()
    mutate(obj)
    with pytest.raises(MalformedEnvelopeError):
        Statement.from_json(json.dumps(obj))


def test_statement_v01_is_accepted_with_its_own_rules() -> None:
    obj = _valid()
    obj["_type"] = "https://in-toto.io/Statement/v0.1"
    parsed = Statement.from_json(json.dumps(obj))
    assert parsed.statement_type == "https://in-toto.io/Statement/v0.1"
    assert [s.name for s in parsed.subjects] == [PURL, "pkg:npm/%40angular/core@16.2.0"]
    assert json.loads(parsed.to_json())["_type"] == obj["_type"]  # round trip keeps it
    # v0.1 requires a subject name; v1 does not.
    del obj["subject"][0]["name"]
    with pytest.raises(MalformedEnvelopeError, match=r"subject\[0\]\.name"):
        Statement.from_json(json.dumps(obj))
    obj["_type"] = STATEMENT_TYPE
    assert statement_facts(json.dumps(obj))[1] == ("", "pkg:npm/%40angular/core@16.2.0")


def test_unknown_fields_and_other_algorithms_are_accepted() -> None:
    # The spec's parsing rules: ignore unrecognised fields; other digest algorithms are
    # opaque strings (consumers ignore what they do not accept).
    obj = _valid()
    obj["extension.example.com"] = {"x": 1}
    obj["subject"][0]["uri"] = "https://example.com/a"
    obj["subject"][0]["digest"]["customHash"] = "Base64+/="
    assert Statement.from_json(json.dumps(obj)).subjects[0].digest["customHash"] == "Base64+/="


def test_statement_type_in_error_is_bounded() -> None:
    obj = _valid()
    obj["_type"] = "x" * 100_000
    with pytest.raises(MalformedEnvelopeError) as err:
        Statement.from_json(json.dumps(obj))
    assert len(str(err.value)) < 300


@pytest.mark.parametrize("blob", [b"", b"{", b"\xff", b"[]", b"null", b'"statement"', b"{}"])
def test_statement_that_is_not_a_json_object(blob: bytes) -> None:
    with pytest.raises(MalformedEnvelopeError):
        Statement.from_json(blob)


def test_deeply_nested_statement_is_a_typed_error() -> None:
    with pytest.raises(MalformedEnvelopeError):
        Statement.from_json("[" * 100_000)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@given(
    st.lists(
        st.builds(
            Subject,
            name=st.text(),
            digest=st.dictionaries(
                st.text(min_size=1).map(lambda k: "x-" + k), st.text(min_size=1), min_size=1
            )
            | st.fixed_dictionaries({"sha256": st.from_regex(r"[0-9a-f]{64}", fullmatch=True)}),
        ),
        min_size=1,
        max_size=3,
    ),
    st.text(min_size=1).filter(lambda t: bool(t.strip())),
    st.dictionaries(st.text(), json_values, max_size=4),
)
def test_statement_round_trip_property(
    subjects: list[Subject], predicate_type: str, predicate: dict[str, Any]
) -> None:
    original = Statement(tuple(subjects), predicate_type, predicate)
    assert Statement.from_json(original.to_json()) == original


def test_statements_are_immutable_and_hashable() -> None:
    statement = Statement((Subject("pkg:npm/a@1", {"sha256": "00"}),), "t", {"k": "v"})
    with pytest.raises(TypeError):
        statement.predicate["k"] = "changed"  # type: ignore[index]
    with pytest.raises(TypeError):
        statement.subjects[0].digest["sha256"] = "ff"  # type: ignore[index]
    assert hash(statement) == hash(Statement.from_json(statement.to_json()))


@given(json_values)
def test_statement_facts_agree_with_from_json(value: object) -> None:
    blob = json.dumps(
        {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": "pkg:npm/a@1", "digest": {"sha256": "0"}}],
            "predicateType": "t",
            "predicate": value,
        }
    )
    try:
        statement = Statement.from_json(blob)
    except MalformedEnvelopeError:
        with pytest.raises(MalformedEnvelopeError):
            statement_facts(blob)
        return
    assert statement_facts(blob) == (statement.predicate_type, ("pkg:npm/a@1",))
