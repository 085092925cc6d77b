"""Our in-toto Statements against a peer implementation: the in-toto-attestation Python
bindings (the spec repository's own protobuf definitions and validator).

Its validator requires a non-empty ``predicate``, which the Statement v1 spec does not
("unset is treated the same as set-but-empty"); statements without a predicate are therefore
checked to fail that one rule and no other, never padded with a fake predicate.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import json_format
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import Statement as PeerStatement

from stellakeys.intoto import Statement, Subject, statement_facts

PROVENANCE = "https://slsa.dev/provenance/v1"
SUBJECTS = (
    Subject("pkg:npm/left-pad@1.3.0", {"sha256": "ab" * 32}),
    Subject("left-pad.tgz", {"sha512": "cd" * 64, "sha256": "ef" * 32}),
)


def peer_parse(blob: bytes) -> PeerStatement:
    """Strict protobuf JSON parsing (an unknown or mistyped field is an error) + the peer's
    model around it."""
    message = statement_pb2.Statement()  # type: ignore[attr-defined]
    json_format.Parse(blob, message, ignore_unknown_fields=False)
    return PeerStatement.copy_from_pb(message)


@pytest.mark.parametrize(
    "predicate",
    [
        {"buildDefinition": {"buildType": "https://example.com/build@v1"}},
        {"n": [1, 2.5, None, True], "nested": {"k": "v"}},
    ],
)
def test_statements_with_a_predicate_pass_the_peer_validator(predicate: dict[str, Any]) -> None:
    ours = Statement(SUBJECTS, PROVENANCE, predicate)
    peer = peer_parse(ours.to_json())
    peer.validate()
    assert peer.pb.predicate_type == PROVENANCE
    assert [s.name for s in peer.pb.subject] == [s.name for s in SUBJECTS]
    assert dict(peer.pb.subject[1].digest) == dict(SUBJECTS[1].digest)
    assert json_format.MessageToDict(peer.pb.predicate) == predicate


def test_statement_without_predicate_omits_it_and_breaks_only_the_peers_extra_rule() -> None:
    ours = Statement(SUBJECTS, "evidence.stella/v1")
    written = json.loads(ours.to_json())
    assert "predicate" not in written  # the spec's form for "no predicate"
    peer = peer_parse(ours.to_json())
    with pytest.raises(ValueError, match=r"^Predicate object required$"):
        peer.validate()
    # An explicit empty predicate reads the same as an omitted one, on both sides.
    explicit = json.dumps({**written, "predicate": {}}).encode()
    assert Statement.from_json(explicit) == Statement.from_json(ours.to_json())
    with pytest.raises(ValueError, match=r"^Predicate object required$"):
        peer_parse(explicit).validate()


def test_peer_written_statements_parse_here() -> None:
    subject = ResourceDescriptor(name="pkg:pypi/x@1", digest={"sha256": "12" * 32}).pb
    for predicate in ({"k": "v"}, {}):
        peer = PeerStatement([subject], PROVENANCE, predicate)
        blob = json_format.MessageToJson(peer.pb).encode()
        parsed = Statement.from_json(blob)
        assert parsed.predicate == predicate
        assert parsed.subjects == (Subject("pkg:pypi/x@1", {"sha256": "12" * 32}),)
        assert statement_facts(blob) == (PROVENANCE, ("pkg:pypi/x@1",))


def test_statements_the_peer_refuses_we_refuse_too() -> None:
    from stellakeys.errors import MalformedEnvelopeError

    good = json.loads(Statement(SUBJECTS, PROVENANCE, {"k": 1}).to_json())
    for broken in (
        {**good, "subject": []},
        {**good, "predicateType": ""},
        {**good, "_type": "https://in-toto.io/Statement/v2"},
        {**good, "subject": [{"name": "x", "digest": {}}]},
    ):
        blob = json.dumps(broken).encode()
        with pytest.raises(ValueError):
            peer_parse(blob).validate()
        with pytest.raises(MalformedEnvelopeError):
            Statement.from_json(blob)
