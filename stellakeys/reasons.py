"""Typed verification failure reasons. Pure.

A :class:`Reason` is its message (it *is* a ``str``: ``str(reason)``, ``"revoked" in reason``,
JSON output and every printed line stay what they were) plus a :class:`ReasonCode`, so that
programs (batch summaries, metrics, dashboards) count failures by code instead of matching the
English wording. docs/verification.md lists the codes.
"""

from __future__ import annotations

import enum

__all__ = ["Reason", "ReasonCode", "reason_code"]


class ReasonCode(enum.StrEnum):
    """Why a proof does not verify. Values are stable identifiers (JSON ``reasonCodes``)."""

    #: The key joined the anchor after T.
    KEY_NOT_YET_VALID = "key-not-yet-valid"
    #: The key was revoked (not for compromise) at or before T.
    KEY_REVOKED = "key-revoked"
    #: The key was revoked for compromise at or before T.
    KEY_COMPROMISED = "key-compromised"
    #: The key was revoked for compromise and the signature has no trusted time before that.
    COMPROMISED_WITHOUT_TRUSTED_TIME = "compromised-key-without-trusted-time"
    #: The key's validity ended at or before T.
    KEY_EXPIRED = "key-expired"
    #: The policy requires trusted time and the signature has none.
    TRUSTED_TIME_REQUIRED = "trusted-time-required"
    #: A timestamp token gave no trusted time (no roots, does not verify).
    TIMESTAMP_NO_TRUSTED_TIME = "timestamp-no-trusted-time"
    #: A timestamp token covers none of the envelope's signatures.
    TIMESTAMP_UNUSED = "timestamp-unused"
    #: No active trust anchor matches the artifact.
    NO_TRUST_ANCHOR = "no-trust-anchor"
    #: Two active anchors apply equally (a store that broke the one-anchor rule).
    AMBIGUOUS_ANCHORS = "ambiguous-anchors"
    #: The payload names no artifact and the policy requires an anchor.
    NO_ARTIFACT = "no-artifact"
    #: The requested artifact is not one of the statement's subjects.
    NOT_A_SUBJECT = "artifact-not-a-subject"
    #: An in-toto payloadType whose payload does not parse, or a statement under another type.
    MALFORMED_STATEMENT = "malformed-statement"
    #: A subject whose name is not a package URL, and no universal anchor.
    SUBJECT_NOT_A_PURL = "subject-not-a-purl"
    #: The anchor does not allow the statement's predicateType.
    PREDICATE_TYPE_NOT_ALLOWED = "predicate-type-not-allowed"
    #: An anchor applies but the payload is not an in-toto statement.
    NOT_A_STATEMENT = "not-a-statement"
    #: Some, but fewer than the threshold, distinct keys signed.
    THRESHOLD_NOT_MET = "threshold-not-met"
    #: No signature verifies with a key trusted at T.
    NO_VALID_SIGNATURE = "no-valid-signature"
    #: A reason given as plain text (callers' own context reasons).
    OTHER = "other"


class Reason(str):
    """A failure reason: the message, with its :class:`ReasonCode` as ``.code``.

    A ``str`` subclass rather than a plain record so that every consumer of the message
    (tests, the CLI, ``"text" in reason``) keeps working; two reasons are equal when their
    messages are (the code is derived from the same fact).
    """

    __slots__ = ("code",)
    code: ReasonCode

    def __new__(cls, code: ReasonCode, message: str) -> Reason:
        self = super().__new__(cls, message)
        self.code = ReasonCode(code)
        return self

    @property
    def message(self) -> str:
        return str.__str__(self)

    def __str__(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"Reason({self.code.value!r}, {str.__repr__(self)})"

    def __getnewargs__(self) -> tuple[ReasonCode, str]:  # type: ignore[override]
        # Pickled results travel back from batch workers with their codes.
        return (self.code, self.message)

    def prefixed(self, prefix: str) -> Reason:
        """The same reason, its message prefixed (``subject pkg:...: ``)."""
        return Reason(self.code, prefix + self.message)


def reason_code(reason: str) -> ReasonCode:
    """The code of ``reason`` (``OTHER`` for a plain string)."""
    return reason.code if isinstance(reason, Reason) else ReasonCode.OTHER
