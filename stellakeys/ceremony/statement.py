"""The signed approval statement: what an approver's key signs to approve (or reject).

The payload is canonical JSON (RFC 8785 on a float-free subset, see ``_canonical``)::

    {
      "_type": "https://stellakeys.dev/ceremony-approval/v1",
      "approvedAt": "2026-01-16T11:30:00Z",
      "approver": "security-lead@company.com",
      "ceremonyDigest": {"sha256": "<hex>"},
      "ceremonyId": "cer-0123456789abcdef",
      "decision": "approve",
      "reason": "Reviewed rotation plan, verified key parameters"
    }

wrapped in a DSSE envelope with payloadType ``application/vnd.stellakeys.ceremony-approval+json``.
The dedicated payload type is domain separation: DSSE signs the type with the payload, so an
approval can never be mistaken for an in-toto attestation (or the reverse) even when the
approver's key also signs artifacts.

``ceremonyId`` stops replay onto another ceremony, ``ceremonyDigest`` (over type, subject,
payload, threshold, requiredApprovers and expiresAt) stops replay onto a changed request, and
``approver`` ties the statement to the identity whose registered keys must verify it.
``approvedAt`` is the signer's own claim, kept as evidence; the service records its own time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

import attrs

import stellakeys.strict_json as strict_json
from stellakeys.ceremony._canonical import canonical_json
from stellakeys.ceremony.model import MAX_REASON, Ceremony, Decision, is_ceremony_id
from stellakeys.crypto import PublicKey
from stellakeys.dsse import Envelope, Signer, VerifiedKey, sign_envelope, verify_envelope
from stellakeys.errors import (
    DuplicateEnvelopeMemberError,
    DuplicateMemberError,
    InvalidSignatureError,
    MalformedEnvelopeError,
    MalformedTimeError,
)
from stellakeys.times import format_time, parse_time

__all__ = [
    "PAYLOAD_TYPE",
    "STATEMENT_TYPE",
    "ApprovalStatement",
    "VerifiedStatement",
    "verify_statement",
]

PAYLOAD_TYPE = "application/vnd.stellakeys.ceremony-approval+json"
STATEMENT_TYPE = "https://stellakeys.dev/ceremony-approval/v1"
_FIELDS = frozenset(
    {"_type", "ceremonyId", "ceremonyDigest", "approver", "decision", "reason", "approvedAt"}
)
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_MAX_PAYLOAD = 16 * 1024


@attrs.frozen
class ApprovalStatement:
    ceremony_id: str
    #: ``sha256:<hex>``, as :attr:`Ceremony.digest`.
    ceremony_digest: str
    approver: str
    decision: Decision
    reason: str
    approved_at: datetime

    @classmethod
    def for_ceremony(
        cls,
        ceremony: Ceremony,
        approver: str,
        decision: Decision,
        reason: str,
        now: datetime,
    ) -> ApprovalStatement:
        return cls(ceremony.ceremony_id, ceremony.digest, approver, decision, reason.strip(), now)

    def to_dict(self) -> dict[str, object]:
        return {
            "_type": STATEMENT_TYPE,
            "ceremonyId": self.ceremony_id,
            "ceremonyDigest": {"sha256": self.ceremony_digest.removeprefix("sha256:")},
            "approver": self.approver,
            "decision": self.decision.value,
            "reason": self.reason,
            "approvedAt": format_time(self.approved_at),
        }

    def to_json(self) -> bytes:
        """The canonical payload bytes that get signed."""
        return canonical_json(self.to_dict())

    def sign(self, signer: Signer, keyid: str | None = None) -> Envelope:
        return sign_envelope(PAYLOAD_TYPE, self.to_json(), [signer], [keyid])

    @classmethod
    def from_json(cls, payload: bytes) -> ApprovalStatement:
        """Strict parse: exactly the statement's fields, each of the right type."""
        if len(payload) > _MAX_PAYLOAD:
            raise MalformedEnvelopeError("approval statement is too large")
        try:
            obj = strict_json.loads(
                payload, document="approval statement", error=DuplicateEnvelopeMemberError
            )
        except DuplicateMemberError:
            raise
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise MalformedEnvelopeError("approval statement is not UTF-8 JSON") from None
        if not isinstance(obj, Mapping):
            raise MalformedEnvelopeError("approval statement must be a JSON object")
        if set(obj) != _FIELDS:
            missing = sorted(_FIELDS - set(obj))
            extra = sorted(set(obj) - _FIELDS)
            raise MalformedEnvelopeError(
                f"approval statement fields differ (missing: {missing}, unexpected: {extra})"
            )
        if obj["_type"] != STATEMENT_TYPE:
            raise MalformedEnvelopeError(f"approval statement _type must be {STATEMENT_TYPE}")
        for name in ("ceremonyId", "approver", "decision", "reason", "approvedAt"):
            if not isinstance(obj[name], str):
                raise MalformedEnvelopeError(f"approval statement {name} must be a string")
        if not is_ceremony_id(obj["ceremonyId"]):
            raise MalformedEnvelopeError("approval statement ceremonyId is not a ceremony id")
        digest = obj["ceremonyDigest"]
        if (
            not isinstance(digest, Mapping)
            or set(digest) != {"sha256"}
            or not isinstance(digest["sha256"], str)
            or not _SHA256_HEX.fullmatch(digest["sha256"])
        ):
            raise MalformedEnvelopeError('ceremonyDigest must be {"sha256": "<64 hex>"}')
        if obj["decision"] not in ("approve", "reject"):
            raise MalformedEnvelopeError("decision must be 'approve' or 'reject'")
        reason = obj["reason"]
        if not reason.strip() or len(reason) > MAX_REASON:
            raise MalformedEnvelopeError(f"reason must be 1 to {MAX_REASON} characters")
        try:
            approved_at = parse_time(obj["approvedAt"])
        except MalformedTimeError as exc:
            raise MalformedEnvelopeError(f"approvedAt: {exc}") from None
        return cls(
            obj["ceremonyId"],
            "sha256:" + digest["sha256"],
            obj["approver"],
            Decision(obj["decision"]),
            reason,
            approved_at,
        )

    @classmethod
    def from_envelope(cls, envelope: Envelope) -> ApprovalStatement:
        """The statement inside an envelope, *unverified*: use :func:`verify_statement` to
        trust it."""
        if envelope.payload_type != PAYLOAD_TYPE:
            raise MalformedEnvelopeError(
                f"payloadType is {envelope.payload_type!r}, expected {PAYLOAD_TYPE!r}"
            )
        return cls.from_json(envelope.payload)


@attrs.frozen
class VerifiedStatement:
    statement: ApprovalStatement
    key: VerifiedKey


def verify_statement(envelope: Envelope, keyring: Mapping[str, PublicKey]) -> VerifiedStatement:
    """The statement, if a key of ``keyring`` (one approver's registered keys) signed it.

    Raises MalformedEnvelopeError for a wrong payload type or shape and InvalidSignatureError
    when no registered key verifies a signature.
    """
    statement = ApprovalStatement.from_envelope(envelope)
    if not envelope.signatures:
        raise InvalidSignatureError("the approval envelope has no signature")
    if not keyring:
        raise InvalidSignatureError(f"{statement.approver} has no registered approval key")
    result = verify_envelope(envelope, dict(keyring), threshold=1)
    if not result.ok:
        reasons = "; ".join(f.reason for f in result.failures) or "no valid signature"
        raise InvalidSignatureError(
            f"no key registered for {statement.approver} verifies the signature ({reasons})"
        )
    return VerifiedStatement(statement, result.verified[0])
