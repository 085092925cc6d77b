"""The signed approval statement: canonical payload, DSSE signing, strict parsing, verification
against an approver's registered keys (any algorithm of the registry)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import attrs
import pytest

from stellakeys.ceremony.model import Ceremony, CeremonyState, Decision, new_ceremony_id
from stellakeys.ceremony.statement import (
    PAYLOAD_TYPE,
    ApprovalStatement,
    verify_statement,
)
from stellakeys.crypto import get_algorithm
from stellakeys.dsse import Envelope, Signature
from stellakeys.errors import InvalidSignatureError, MalformedEnvelopeError

T0 = datetime(2026, 1, 16, 10, 0, tzinfo=UTC)


def ceremony() -> Ceremony:
    return Ceremony(
        ceremony_id=new_ceremony_id(),
        type="key-rotation",
        subject="Root signing key Q1-2026",
        state=CeremonyState.PENDING,
        threshold=2,
        required_approvers=3,
        payload_json={"keyId": "root-2026-q1"},  # type: ignore[arg-type]
        created_at=T0,
        expires_at=T0 + timedelta(hours=24),
        initiator="admin@company.com",
        allowed_approvers=("lead@x",),
    )


@pytest.mark.parametrize("algorithm", ["ed25519", "ecdsa-p256-sha256", "ml-dsa-65"])
def test_sign_and_verify_with_registered_key(algorithm: str) -> None:
    key = get_algorithm(algorithm).generate()
    c = ceremony()
    st = ApprovalStatement.for_ceremony(c, "lead@x", Decision.APPROVE, " Reviewed ", T0)
    envelope = st.sign(key, "lead-key")
    assert envelope.payload_type == PAYLOAD_TYPE
    verified = verify_statement(envelope, {"lead-key": key.public_key()})
    assert verified.statement == attrs.evolve(st, reason="Reviewed")
    assert verified.key.key_id == "lead-key"
    assert verified.key.algorithm == get_algorithm(algorithm).id
    # The envelope survives JSON transport (what the CLI and the store carry).
    again = Envelope.from_json(envelope.to_json())
    assert verify_statement(again, {"lead-key": key.public_key()}).statement.ceremony_id == (
        c.ceremony_id
    )


def test_payload_is_canonical_and_binds_id_and_digest() -> None:
    c = ceremony()
    st = ApprovalStatement.for_ceremony(c, "lead@x", Decision.REJECT, "no", T0)
    payload = st.to_json()
    obj = json.loads(payload)
    assert obj == {
        "_type": "https://stellakeys.dev/ceremony-approval/v1",
        "ceremonyId": c.ceremony_id,
        "ceremonyDigest": {"sha256": c.digest.removeprefix("sha256:")},
        "approver": "lead@x",
        "decision": "reject",
        "reason": "no",
        "approvedAt": "2026-01-16T10:00:00Z",
    }
    assert payload == json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    assert ApprovalStatement.from_json(payload) == st


def test_tampered_or_foreign_signatures_fail() -> None:
    key = get_algorithm("ed25519").generate()
    other = get_algorithm("ed25519").generate()
    st = ApprovalStatement.for_ceremony(ceremony(), "lead@x", Decision.APPROVE, "ok", T0)
    envelope = st.sign(key, "lead-key")
    keyring = {"lead-key": key.public_key()}
    # A different statement under the original signature.
    changed = attrs.evolve(st, reason="ok!").to_json()
    with pytest.raises(InvalidSignatureError):
        verify_statement(attrs.evolve(envelope, payload=changed), keyring)
    # A flipped bit in the signature.
    sig = envelope.signatures[0]
    bad = Signature(bytes([sig.sig[0] ^ 1]) + sig.sig[1:], sig.keyid)
    with pytest.raises(InvalidSignatureError):
        verify_statement(attrs.evolve(envelope, signatures=(bad,)), keyring)
    # Signed by a key that is not registered for the approver (keyid hint is not trusted).
    with pytest.raises(InvalidSignatureError):
        verify_statement(st.sign(other, "lead-key"), keyring)
    with pytest.raises(InvalidSignatureError, match="no signature"):
        verify_statement(attrs.evolve(envelope, signatures=()), keyring)
    with pytest.raises(InvalidSignatureError, match="no registered"):
        verify_statement(envelope, {})


def test_payload_type_is_domain_separation() -> None:
    key = get_algorithm("ed25519").generate()
    st = ApprovalStatement.for_ceremony(ceremony(), "lead@x", Decision.APPROVE, "ok", T0)
    from stellakeys.dsse import sign_envelope

    intoto = sign_envelope("application/vnd.in-toto+json", st.to_json(), [key])
    with pytest.raises(MalformedEnvelopeError, match="payloadType"):
        verify_statement(intoto, {"k": key.public_key()})


@pytest.mark.parametrize(
    "mutate",
    [
        lambda o: o.pop("reason"),
        lambda o: o.update(extra=1),
        lambda o: o.update(decision="maybe"),
        lambda o: o.update(ceremonyId="cer-123"),
        lambda o: o.update(ceremonyDigest={"sha256": "zz"}),
        lambda o: o.update(ceremonyDigest={"sha512": "ab" * 64}),
        lambda o: o.update(approvedAt="2026-01-16T10:00:00"),
        lambda o: o.update(reason=""),
        lambda o: o.update(approver=1),
        lambda o: o.update(_type="https://in-toto.io/Statement/v1"),
    ],
)
def test_strict_parse(mutate: object) -> None:
    st = ApprovalStatement.for_ceremony(ceremony(), "lead@x", Decision.APPROVE, "ok", T0)
    obj = json.loads(st.to_json())
    mutate(obj)  # type: ignore[operator]
    with pytest.raises(MalformedEnvelopeError):
        ApprovalStatement.from_json(json.dumps(obj).encode())
    with pytest.raises(MalformedEnvelopeError):
        ApprovalStatement.from_json(b"\xff")
    with pytest.raises(MalformedEnvelopeError):
        ApprovalStatement.from_json(b"[" * 100000)
