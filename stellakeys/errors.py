"""Typed exceptions.

Every error a caller can provoke with bad input derives from :class:`StellaKeysError`, so the CLI
can turn any of them into one line and a non-zero exit. Messages never carry key material.
"""

from __future__ import annotations


class StellaKeysError(Exception):
    """Base class of every error stellakeys raises on purpose."""


class UnknownAlgorithmError(StellaKeysError, ValueError):
    """An algorithm id or alias that the registry does not know."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(f"unknown algorithm {name!r}; known: {', '.join(known)}")


class UnsupportedKeyError(StellaKeysError, ValueError):
    """A key whose type or parameters no registered algorithm handles."""


class MalformedKeyError(StellaKeysError, ValueError):
    """A PEM or DER key that cannot be parsed."""


class WeakKeyError(MalformedKeyError):
    """A public key that parses but must never be trusted: a small-order, non-canonical or
    off-curve point, the point at infinity, a point outside the prime-order subgroup, or a
    key of the wrong length. Refused on every import path (docs/decisions/0014)."""


class InvalidSignatureError(StellaKeysError):
    """A signature that does not verify. The message says why, never how close it came."""


class MalformedEnvelopeError(StellaKeysError, ValueError):
    """A DSSE envelope that is not valid JSON, base64 or shape."""


class DuplicateMemberError(StellaKeysError, ValueError):
    """A JSON object (or YAML mapping) that names the same member twice.

    Parsers disagree on which copy wins (Python's json keeps the last, others the first or
    refuse), so a document with a duplicate can mean one thing to us and another to a peer.
    """

    noun = "member"

    def __init__(self, member: str, document: str = "JSON document") -> None:
        self.member = member
        self.document = document
        super().__init__(
            f"{document}: duplicate {self.noun} {member!r} (parsers disagree on which copy"
            " wins; remove one)"
        )


class DuplicateEnvelopeMemberError(DuplicateMemberError, MalformedEnvelopeError):
    """A duplicate member in a DSSE envelope or a statement it carries (in-toto, approval)."""


class UnverifiablePayloadError(StellaKeysError, ValueError):
    """A payload refused at signing because no verifier could accept the proof: an in-toto
    payloadType over a payload that is not a valid in-toto Statement, or a Statement under
    another payloadType (verification refuses both, so the proof would only ever fail)."""


class MalformedPurlError(StellaKeysError, ValueError):
    """A package URL or PURL pattern that cannot be parsed."""


class BackendUnavailableError(StellaKeysError, RuntimeError):
    """A native backend (system libcrypto, the gost engine) that is missing on this machine."""


class MalformedTimeError(StellaKeysError, ValueError):
    """A time that is not ISO 8601 with a zone (or ``NOW`` where allowed)."""


class ConfigError(StellaKeysError, ValueError):
    """A configuration file (signer.yaml, approvers.yaml, ...) with a missing or bad field."""


class ConfigSchemaError(ConfigError):
    """A configuration file that does not match its schema: an unknown key or a wrong type.

    ``source`` is the file, ``path`` the dotted path of the problem
    (``signer.profiles.release.keystore``).
    """

    def __init__(self, message: str, *, path: str, source: str) -> None:
        super().__init__(message)
        self.path = path
        self.source = source


class DuplicateConfigKeyError(DuplicateMemberError, ConfigError):
    """A duplicate key in a configuration file (YAML or JSON)."""

    noun = "key"


class NotFoundError(StellaKeysError, LookupError):
    """A key, anchor, proof or ceremony that does not exist."""


class ConflictError(StellaKeysError):
    """A write that contradicts existing state: a duplicate id, a pattern tie, a double revoke."""


class StorageError(StellaKeysError):
    """The store failed; the transaction was rolled back and nothing was written."""


class KeyStoreError(StellaKeysError):
    """A key store could not generate, find or use a key (wrong PIN or passphrase included)."""


class PolicyError(StellaKeysError):
    """An operation refused by policy (for example a protected operation outside a ceremony)."""


class TimestampError(StellaKeysError, ValueError):
    """An RFC 3161 timestamp that cannot be used at all: malformed DER, a TSA that refused or
    could not be reached, a reply that does not answer the request. A well-formed token that
    merely fails verification (other bytes, untrusted TSA, ...) is a verification reason, not
    this error."""


class KeyIdentityError(KeyStoreError):
    """A key store's key is not the key recorded for its key id: refused before (or instead
    of) signing. Names both fingerprints (public values), never key material."""

    def __init__(self, key_id: str, recorded: str, found: str, where: str) -> None:
        self.key_id = key_id
        self.recorded = recorded
        self.found = found
        super().__init__(
            f"key {key_id!r}: {where} holds key {found}, but the record holds {recorded}; "
            "refusing to use it (the key store was changed or re-initialised: restore the "
            "recorded key, or generate a new key id)"
        )


class UnknownRevocationReasonError(StellaKeysError, ValueError):
    """A revocation reason outside the vocabulary of stellakeys.revocation."""

    def __init__(self, reason: str, accepted: list[str]) -> None:
        self.reason = reason
        self.accepted = accepted
        super().__init__(
            f"unknown revocation reason {reason!r}; accepted: {', '.join(accepted)}"
            " (RFC 5280 names such as keyCompromise, superseded, cessationOfOperation,"
            " affiliationChanged, privilegeWithdrawn also work; case does not matter)"
        )


class ProofIntegrityError(StellaKeysError):
    """A stored proof whose bytes do not hash to the address it is stored under."""

    def __init__(self, address: str, actual: str) -> None:
        self.address = address
        self.actual = actual
        super().__init__(
            f"stored proof {address} does not match its address: its bytes hash to {actual}"
            " (the store was changed outside stellakeys)"
        )


class AlgorithmOptionError(StellaKeysError, ValueError):
    """An algorithm option the algorithm does not have (``paramset`` for Ed25519, ...), or a
    value it does not accept (an unknown GOST paramset, an SM2 ID over 8190 bytes)."""
