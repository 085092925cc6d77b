"""stellakeys: the life of signing keys, from generation to forensic verification.

>>> from stellakeys import KeyManager
>>> with KeyManager.open("/tmp/stellakeys-home") as km:          # doctest: +SKIP
...     km.generate_key("key-2025-prod", profile="default")
...     anchor = km.create_anchor("pkg:npm/*", ["key-2025-prod"], ["evidence.stella/v1"])
...     proof = km.sign(statement_bytes, "key-2025-prod")
...     km.verify(proof).ok
"""

from stellakeys.anchors import COMPROMISE, KeyHistoryEntry, TrustAnchor
from stellakeys.audit import AuditEvent, AuditQuery, ChainVerification, EventType
from stellakeys.clock import Clock, FrozenClock, SystemClock
from stellakeys.crypto import (
    Algorithm,
    PrivateKey,
    PublicKey,
    algorithms,
    get_algorithm,
    load_private_key_pem,
    load_public_key_pem,
)
from stellakeys.dsse import Envelope, EnvelopeVerification, sign_envelope, verify_envelope
from stellakeys.errors import (
    ConfigError,
    ConflictError,
    InvalidSignatureError,
    KeyStoreError,
    MalformedEnvelopeError,
    MalformedKeyError,
    MalformedPurlError,
    MalformedTimeError,
    NotFoundError,
    PolicyError,
    StellaKeysError,
    StorageError,
    UnknownAlgorithmError,
    UnsupportedKeyError,
)
from stellakeys.intoto import Statement, Subject
from stellakeys.keys import KeyRecord
from stellakeys.manager import ALL_ANCHORS, AnchorStatus, KeyManager, KeyValidity
from stellakeys.profiles import KeyProfile, RotationPolicy, SignerConfig
from stellakeys.purl import PurlPattern, parse_purl
from stellakeys.verification import (
    SigningTime,
    TimeSource,
    VerificationPolicy,
    VerificationResult,
)

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
    "ConflictError",
    "Envelope",
    "EnvelopeVerification",
    "EventType",
    "FrozenClock",
    "InvalidSignatureError",
    "KeyHistoryEntry",
    "KeyManager",
    "KeyProfile",
    "KeyRecord",
    "KeyStoreError",
    "KeyValidity",
    "MalformedEnvelopeError",
    "MalformedKeyError",
    "MalformedPurlError",
    "MalformedTimeError",
    "NotFoundError",
    "PolicyError",
    "PrivateKey",
    "PublicKey",
    "PurlPattern",
    "RotationPolicy",
    "SignerConfig",
    "SigningTime",
    "Statement",
    "StellaKeysError",
    "StorageError",
    "Subject",
    "SystemClock",
    "TimeSource",
    "TrustAnchor",
    "UnknownAlgorithmError",
    "UnsupportedKeyError",
    "VerificationPolicy",
    "VerificationResult",
    "algorithms",
    "get_algorithm",
    "load_private_key_pem",
    "load_public_key_pem",
    "parse_purl",
    "sign_envelope",
    "verify_envelope",
]
