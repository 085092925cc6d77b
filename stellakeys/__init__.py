"""stellakeys: the life of signing keys, from generation to forensic verification.

>>> from stellakeys import KeyManager
>>> with KeyManager.open("/tmp/stellakeys-home") as km:          # doctest: +SKIP
...     km.generate_key("key-2025-prod", profile="default")
...     anchor = km.create_anchor("pkg:npm/*", ["key-2025-prod"], ["evidence.stella/v1"])
...     proof = km.sign(statement_bytes, "key-2025-prod")
...     km.verify(proof).ok

Names are imported on first use (PEP 562), so ``import stellakeys`` -- which every pytest run
pays in an environment with stellakeys installed, through the pytest plugin -- loads no crypto
until something is used. Type checkers see the ordinary imports below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stellakeys.anchors import COMPROMISE, KeyHistoryEntry, TrustAnchor
    from stellakeys.audit import AuditEvent, AuditQuery, ChainVerification, EventType
    from stellakeys.audit_replay import StateDifference
    from stellakeys.clock import Clock, FrozenClock, SystemClock
    from stellakeys.crypto import (
        Algorithm,
        PrivateKey,
        PublicKey,
        algorithm_of_spki,
        algorithms,
        fingerprint_of_spki,
        get_algorithm,
        load_private_key_pem,
        load_public_key_der,
        load_public_key_pem,
    )
    from stellakeys.dsse import Envelope, EnvelopeVerification, sign_envelope, verify_envelope
    from stellakeys.errors import (
        AlgorithmOptionError,
        ConfigError,
        ConfigSchemaError,
        ConflictError,
        DuplicateConfigKeyError,
        DuplicateEnvelopeMemberError,
        DuplicateMemberError,
        InvalidSignatureError,
        KeyIdentityError,
        KeyStoreError,
        MalformedEnvelopeError,
        MalformedKeyError,
        MalformedPurlError,
        MalformedTimeError,
        NotFoundError,
        PolicyError,
        ProofIntegrityError,
        StellaKeysError,
        StorageError,
        TimestampError,
        UnknownAlgorithmError,
        UnknownRevocationReasonError,
        UnsupportedKeyError,
        UnverifiablePayloadError,
        WeakKeyError,
    )
    from stellakeys.intents import KeyIntent
    from stellakeys.intoto import Statement, Subject
    from stellakeys.jwk import anchor_jwks, anchor_pem, public_key_jwk
    from stellakeys.keys import KeyRecord
    from stellakeys.manager import ALL_ANCHORS, AnchorStatus, KeyManager, KeyValidity
    from stellakeys.profiles import KeyProfile, RotationPolicy, SignerConfig
    from stellakeys.purl import PurlPattern, parse_purl
    from stellakeys.reasons import Reason, ReasonCode
    from stellakeys.revocation import RevocationReason, is_compromise, parse_reason
    from stellakeys.store_verifier import StoreVerifier
    from stellakeys.verification import (
        SigningTime,
        SubjectResult,
        TimeSource,
        VerificationPolicy,
        VerificationResult,
    )
    from stellakeys.verifier import AnchorLookup, AnchorSource, KeySource, StaticSource, Verifier

__version__ = "0.1.0"

__all__ = [
    "ALL_ANCHORS",
    "COMPROMISE",
    "Algorithm",
    "AnchorStatus",
    "AuditEvent",
    "AuditQuery",
    "ChainVerification",
    "Clock",
    "ConfigError",
    "ConfigSchemaError",
    "ConflictError",
    "DuplicateConfigKeyError",
    "DuplicateEnvelopeMemberError",
    "DuplicateMemberError",
    "Envelope",
    "EnvelopeVerification",
    "EventType",
    "FrozenClock",
    "InvalidSignatureError",
    "KeyHistoryEntry",
    "KeyManager",
    "KeyProfile",
    "KeyRecord",
    "KeyIdentityError",
    "KeyIntent",
    "KeyStoreError",
    "KeyValidity",
    "MalformedEnvelopeError",
    "MalformedKeyError",
    "MalformedPurlError",
    "MalformedTimeError",
    "NotFoundError",
    "PolicyError",
    "PrivateKey",
    "ProofIntegrityError",
    "PublicKey",
    "PurlPattern",
    "RevocationReason",
    "RotationPolicy",
    "SignerConfig",
    "SigningTime",
    "StateDifference",
    "Statement",
    "StellaKeysError",
    "StorageError",
    "TimestampError",
    "Subject",
    "SubjectResult",
    "SystemClock",
    "TimeSource",
    "TrustAnchor",
    "UnknownAlgorithmError",
    "UnknownRevocationReasonError",
    "UnsupportedKeyError",
    "UnverifiablePayloadError",
    "VerificationPolicy",
    "VerificationResult",
    "WeakKeyError",
    "algorithms",
    "get_algorithm",
    "is_compromise",
    "load_private_key_pem",
    "load_public_key_pem",
    "parse_purl",
    "parse_reason",
    "sign_envelope",
    # issue 16: the standalone verifier and typed reasons
    "AnchorLookup",
    "AnchorSource",
    "KeySource",
    "Reason",
    "ReasonCode",
    "StaticSource",
    "Verifier",
    "verify_envelope",
    # issue 20: verification against a store without the facade
    "StoreVerifier",
    # issue 18: ecosystem formats
    "AlgorithmOptionError",
    "algorithm_of_spki",
    "anchor_jwks",
    "anchor_pem",
    "fingerprint_of_spki",
    "load_public_key_der",
    "public_key_jwk",
]

#: public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "ALL_ANCHORS": "stellakeys.manager",
    "COMPROMISE": "stellakeys.anchors",
    "Algorithm": "stellakeys.crypto",
    "AnchorStatus": "stellakeys.manager",
    "AuditEvent": "stellakeys.audit",
    "AuditQuery": "stellakeys.audit",
    "ChainVerification": "stellakeys.audit",
    "Clock": "stellakeys.clock",
    "ConfigError": "stellakeys.errors",
    "ConfigSchemaError": "stellakeys.errors",
    "ConflictError": "stellakeys.errors",
    "DuplicateConfigKeyError": "stellakeys.errors",
    "DuplicateEnvelopeMemberError": "stellakeys.errors",
    "DuplicateMemberError": "stellakeys.errors",
    "Envelope": "stellakeys.dsse",
    "EnvelopeVerification": "stellakeys.dsse",
    "EventType": "stellakeys.audit",
    "FrozenClock": "stellakeys.clock",
    "InvalidSignatureError": "stellakeys.errors",
    "KeyHistoryEntry": "stellakeys.anchors",
    "KeyManager": "stellakeys.manager",
    "KeyProfile": "stellakeys.profiles",
    "KeyRecord": "stellakeys.keys",
    "KeyIdentityError": "stellakeys.errors",
    "KeyIntent": "stellakeys.intents",
    "KeyStoreError": "stellakeys.errors",
    "KeyValidity": "stellakeys.manager",
    "MalformedEnvelopeError": "stellakeys.errors",
    "MalformedKeyError": "stellakeys.errors",
    "MalformedPurlError": "stellakeys.errors",
    "MalformedTimeError": "stellakeys.errors",
    "NotFoundError": "stellakeys.errors",
    "PolicyError": "stellakeys.errors",
    "PrivateKey": "stellakeys.crypto",
    "PublicKey": "stellakeys.crypto",
    "PurlPattern": "stellakeys.purl",
    "RotationPolicy": "stellakeys.profiles",
    "SignerConfig": "stellakeys.profiles",
    "SigningTime": "stellakeys.verification",
    "Statement": "stellakeys.intoto",
    "StellaKeysError": "stellakeys.errors",
    "StorageError": "stellakeys.errors",
    "TimestampError": "stellakeys.errors",
    "Subject": "stellakeys.intoto",
    "SubjectResult": "stellakeys.verification",
    "SystemClock": "stellakeys.clock",
    "TimeSource": "stellakeys.verification",
    "TrustAnchor": "stellakeys.anchors",
    "UnknownAlgorithmError": "stellakeys.errors",
    "UnsupportedKeyError": "stellakeys.errors",
    "WeakKeyError": "stellakeys.errors",
    "VerificationPolicy": "stellakeys.verification",
    "VerificationResult": "stellakeys.verification",
    "algorithms": "stellakeys.crypto",
    "get_algorithm": "stellakeys.crypto",
    "is_compromise": "stellakeys.revocation",
    "load_private_key_pem": "stellakeys.crypto",
    "load_public_key_pem": "stellakeys.crypto",
    "parse_purl": "stellakeys.purl",
    "sign_envelope": "stellakeys.dsse",
    "verify_envelope": "stellakeys.dsse",
    # issue 14: revocation state and stored evidence
    "ProofIntegrityError": "stellakeys.errors",
    "RevocationReason": "stellakeys.revocation",
    "StateDifference": "stellakeys.audit_replay",
    "UnknownRevocationReasonError": "stellakeys.errors",
    "UnverifiablePayloadError": "stellakeys.errors",
    "parse_reason": "stellakeys.revocation",
    # issue 18: ecosystem formats
    "AlgorithmOptionError": "stellakeys.errors",
    "algorithm_of_spki": "stellakeys.crypto",
    "anchor_jwks": "stellakeys.jwk",
    "anchor_pem": "stellakeys.jwk",
    "fingerprint_of_spki": "stellakeys.crypto",
    "load_public_key_der": "stellakeys.crypto",
    "public_key_jwk": "stellakeys.jwk",
    # issue 16: the standalone verifier and typed reasons
    "AnchorLookup": "stellakeys.verifier",
    "AnchorSource": "stellakeys.verifier",
    "KeySource": "stellakeys.verifier",
    "Reason": "stellakeys.reasons",
    "ReasonCode": "stellakeys.reasons",
    "StaticSource": "stellakeys.verifier",
    "Verifier": "stellakeys.verifier",
    "StoreVerifier": "stellakeys.store_verifier",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stellakeys' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
