"""The one registry of algorithms: canonical ids, aliases, and SPKI dispatch."""

from __future__ import annotations

from collections.abc import Iterable

from stellakeys.crypto._base import Algorithm, PrivateKey, PublicKey, der_from_pem
from stellakeys.crypto._gost import GOST_256, GOST_512
from stellakeys.crypto._native import load_native_private_pem
from stellakeys.crypto._pyca import (
    ED25519,
    ML_DSA_44,
    ML_DSA_65,
    ML_DSA_87,
    P256,
    P384,
    NotPycaKeyError,
    load_pyca_private_pem,
)
from stellakeys.crypto._sm2 import SM2_SM3
from stellakeys.crypto._spki import read_spki_algorithm
from stellakeys.errors import MalformedKeyError, UnknownAlgorithmError, UnsupportedKeyError

_ALGORITHMS: tuple[Algorithm, ...] = (
    ED25519,
    P256,
    P384,
    GOST_256,
    GOST_512,
    SM2_SM3,
    ML_DSA_44,
    ML_DSA_65,
    ML_DSA_87,
)


def _index(algorithms: Iterable[Algorithm]) -> dict[str, Algorithm]:
    index: dict[str, Algorithm] = {}
    for alg in algorithms:
        for name in (alg.id, *alg.aliases):
            key = name.casefold()
            if index.get(key, alg) is not alg:
                raise AssertionError(f"alias {name!r} names two algorithms")
            index[key] = alg
    return index


_BY_NAME = _index(_ALGORITHMS)
_BY_SPKI = {(a.spki_oid, a.spki_parameter_oid): a for a in _ALGORITHMS}


def algorithms() -> tuple[Algorithm, ...]:
    """Every registered algorithm, in a stable order."""
    return _ALGORITHMS


def get_algorithm(name: str) -> Algorithm:
    """The algorithm with this canonical id or alias (case-insensitive)."""
    try:
        return _BY_NAME[name.casefold()]
    except (KeyError, AttributeError):
        raise UnknownAlgorithmError(str(name), [a.id for a in _ALGORITHMS]) from None


def algorithm_of_spki(spki_der: bytes) -> Algorithm:
    oid, parameter = read_spki_algorithm(spki_der)
    alg = _BY_SPKI.get((oid, parameter)) or _BY_SPKI.get((oid, None))
    if alg is None:
        detail = oid if parameter is None else f"{oid} with parameter {parameter}"
        raise UnsupportedKeyError(f"no registered algorithm for public key type {detail}")
    return alg


def load_public_key_der(spki_der: bytes) -> PublicKey:
    return algorithm_of_spki(spki_der).load_public_der(spki_der)


def load_public_key_pem(pem: str | bytes) -> PublicKey:
    """A public key from PEM SubjectPublicKeyInfo, whatever its algorithm."""
    return load_public_key_der(der_from_pem(pem, "PUBLIC KEY"))


def load_private_key_pem(pem: bytes, passphrase: bytes | None) -> PrivateKey:
    """A private key from PKCS#8 PEM (encrypted when a passphrase is given), any algorithm.

    The PEM is decrypted once by ``cryptography``; only the key types it does not support
    (SM2, GOST) are handed to the native backend.
    """
    if b"-----BEGIN" not in pem:
        raise MalformedKeyError("not a PEM private key")
    try:
        return load_pyca_private_pem(pem, passphrase)
    except NotPycaKeyError:
        return load_native_private_pem(pem, passphrase)
