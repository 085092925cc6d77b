"""The KeyManager facade's vocabulary: operation names, the ``ALL`` anchor id, the value
classes its queries return and the pure checks its operations share (stellakeys.manager
re-exports the public names). Nothing here reads a store or a clock."""

from __future__ import annotations

import functools
import uuid
from datetime import datetime
from typing import Any

import attrs

from stellakeys.anchors import KeyHistoryEntry, TrustAnchor
from stellakeys.binding import payload_facts
from stellakeys.dsse import Envelope
from stellakeys.errors import MalformedPurlError, NotFoundError, PolicyError
from stellakeys.keys import KeyRecord
from stellakeys.limits import check_key_id
from stellakeys.purl import PurlPattern
from stellakeys.times import format_time

#: Operation names given to the authorizer; they are the ceremony types of the dual-control
#: runbook (stellakeys.ceremony.operations names the same ones).
OP_HSM_KEY_GENERATION = "hsm-key-generation"
OP_KEY_GENERATION = "key-generation"
OP_KEY_REVOCATION = "key-revocation"
OP_KEY_ROTATION = "key-rotation"
OP_TRUST_ANCHOR_UPDATE = "trust-anchor-update"

#: The anchor id that means "every anchor holding the key" (emergency revocation).
ALL_ANCHORS = "ALL"


@attrs.frozen
class AnchorKeyValidity:
    anchor_id: uuid.UUID
    purl_pattern: str
    valid: bool
    entry: KeyHistoryEntry

    def to_dict(self) -> dict[str, Any]:
        return {
            "anchorId": str(self.anchor_id),
            "purlPattern": self.purl_pattern,
            "valid": self.valid,
            **self.entry.to_dict(),
        }


@attrs.frozen
class KeyValidity:
    """Whether a key was valid at a time, per anchor it belongs to."""

    key_id: str
    at: datetime
    anchors: tuple[AnchorKeyValidity, ...]

    @property
    def valid(self) -> bool:
        return any(a.valid for a in self.anchors)

    def to_dict(self) -> dict[str, Any]:
        return {
            "keyId": self.key_id,
            "atTime": format_time(self.at),
            "valid": self.valid,
            "anchors": [a.to_dict() for a in self.anchors],
        }


@attrs.frozen
class AnchorStatus:
    """The runbook's ``anchor status``: active keys and how the anchor's stored proofs fare.

    ``pending_rescans`` counts stored proofs under this anchor that were signed by a key later
    revoked for compromise and carry no trusted timestamp: the proofs an incident review must
    look at again (the runbook's post-incident step 1).

    The proofs are read and verified in chunks, each judged under one change token of the
    store read after it (``StoreVerifier.one_token``): a revocation committed before the call
    is always counted; one committed during it, from the next chunk on.
    """

    anchor: TrustAnchor
    at: datetime
    proofs_total: int
    proofs_verified: int
    pending_rescans: int

    @property
    def success_rate(self) -> float | None:
        return self.proofs_verified / self.proofs_total if self.proofs_total else None

    def to_dict(self) -> dict[str, Any]:
        rate = self.success_rate
        return {
            "anchor": str(self.anchor.anchor_id),
            "purlPattern": self.anchor.purl_pattern,
            "active": self.anchor.active,
            "activeKeys": list(self.anchor.allowed_keyids(self.at)),
            "revokedKeys": list(self.anchor.revoked_keys(self.at)),
            "proofs": self.proofs_total,
            "verificationSuccessRate": rate,
            "pendingRescans": self.pending_rescans,
        }


#: Patterns are immutable and anchors few compared with lookups: parse each pattern text once.
parsed_pattern = functools.lru_cache(maxsize=65536)(PurlPattern.parse)


def subject_purls(envelope: Envelope) -> list[str]:
    """The PURL subject names of a well-formed in-toto payload; none otherwise."""
    facts = payload_facts(envelope)
    return [n for n in facts.subjects if n.startswith("pkg:")] if facts.error is None else []


def history_entry(anchor_id: uuid.UUID, record: KeyRecord, added_at: datetime) -> KeyHistoryEntry:
    return KeyHistoryEntry(
        anchor_id=anchor_id,
        key_id=record.key_id,
        algorithm=record.algorithm,
        public_key_pem=record.public_key_pem,
        fingerprint=record.fingerprint,
        added_at=added_at,
    )


def anchor_uuid(anchor_id: uuid.UUID | str) -> uuid.UUID:
    if isinstance(anchor_id, uuid.UUID):
        return anchor_id
    try:
        return uuid.UUID(anchor_id)
    except ValueError:
        raise NotFoundError(f"invalid trust anchor id {anchor_id!r}: expected a UUID") from None


def check_new_key_id(key_id: str) -> None:
    # The same check a ceremony's payload passes at create (stellakeys.limits), so what a
    # ceremony accepts, execution can run.
    check_key_id(key_id)


def check_signable(record: KeyRecord, history: list[KeyHistoryEntry], now: datetime) -> None:
    if any(e.compromised for e in history):
        raise PolicyError(f"key {record.key_id} was revoked for compromise; it cannot sign")
    if history and all(e.is_revoked_at(now) for e in history):
        raise PolicyError(f"key {record.key_id} is revoked in every anchor; it cannot sign")


def store_family(uri: str) -> str:
    scheme = uri.split(":", 1)[0].lower()
    return "pkcs11" if scheme == "hsm" else scheme


def is_hsm(key_store_uri: str) -> bool:
    return key_store_uri.startswith(("hsm:", "pkcs11:"))


def safe_match(pattern: PurlPattern, purl: str) -> bool:
    try:
        return pattern.matches(purl)
    except MalformedPurlError:
        return False
