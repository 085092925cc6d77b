"""Signature algorithms behind one registry.

>>> from stellakeys.crypto import get_algorithm
>>> key = get_algorithm("ed25519").generate()
>>> key.public_key().verify(key.sign(b"hello"), b"hello")
"""

from stellakeys.crypto._base import (
    Algorithm,
    PrivateKey,
    PublicKey,
    fingerprint_of_spki,
)
from stellakeys.crypto._registry import (
    algorithm_of_spki,
    algorithms,
    canonical_id,
    get_algorithm,
    load_private_key_pem,
    load_public_key_der,
    load_public_key_pem,
)

__all__ = [
    "Algorithm",
    "PrivateKey",
    "PublicKey",
    "algorithm_of_spki",
    "algorithms",
    "canonical_id",
    "fingerprint_of_spki",
    "get_algorithm",
    "load_private_key_pem",
    "load_public_key_der",
    "load_public_key_pem",
]
