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


def get_algorithm(
    name: str, *, distinguishing_id: bytes | str | None = None, paramset: str | None = None
) -> Algorithm:
    """The algorithm with this canonical id or alias (case-insensitive), with options.

    ``distinguishing_id`` (SM2) and ``paramset`` (GOST) are described on
    :meth:`Algorithm.with_options`; an algorithm without the option raises
    AlgorithmOptionError. UnknownAlgorithmError for a name that is not registered.
    """
    try:
        alg = _BY_NAME[name.casefold()]
    except (KeyError, AttributeError):
        raise UnknownAlgorithmError(str(name), [a.id for a in _ALGORITHMS]) from None
    return alg.with_options(distinguishing_id=distinguishing_id, paramset=paramset)


def algorithm_of_spki(spki_der: bytes) -> Algorithm:
    oid, parameter = read_spki_algorithm(spki_der)
    alg = _BY_SPKI.get((oid, parameter)) or _BY_SPKI.get((oid, None))
    if alg is None:
        detail = oid if parameter is None else f"{oid} with parameter {parameter}"
        raise UnsupportedKeyError(f"no registered algorithm for public key type {detail}")
    return alg


def load_public_key_der(
    spki_der: bytes, *, distinguishing_id: bytes | str | None = None, paramset: str | None = None
) -> PublicKey:
    """A public key from DER SubjectPublicKeyInfo, whatever its algorithm.

    Options as in :func:`get_algorithm`: an SM2 key verifies with ``distinguishing_id``; a
    GOST key must be on ``paramset``; a key whose algorithm has no such option is refused
    with AlgorithmOptionError.
    """
    alg = algorithm_of_spki(spki_der)
    return alg.with_options(distinguishing_id=distinguishing_id, paramset=paramset).load_public_der(
        spki_der
    )


def load_public_key_pem(
    pem: str | bytes, *, distinguishing_id: bytes | str | None = None, paramset: str | None = None
) -> PublicKey:
    """A public key from PEM SubjectPublicKeyInfo, whatever its algorithm (options as in
    :func:`load_public_key_der`)."""
    return load_public_key_der(
        der_from_pem(pem, "PUBLIC KEY"), distinguishing_id=distinguishing_id, paramset=paramset
    )


def load_private_key_pem(
    pem: bytes,
    passphrase: bytes | None,
    *,
    distinguishing_id: bytes | str | None = None,
    paramset: str | None = None,
) -> PrivateKey:
    """A private key from PKCS#8 PEM (encrypted when a passphrase is given), any algorithm.

    Options as in :func:`load_public_key_der`. The PEM is decrypted once by ``cryptography``;
    only the key types it does not support (SM2, GOST) are handed to the native backend.
    """
    if b"-----BEGIN" not in pem:
        raise MalformedKeyError("not a PEM private key")
    try:
        key = load_pyca_private_pem(pem, passphrase)
    except NotPycaKeyError:
        key = load_native_private_pem(pem, passphrase)
    if distinguishing_id is None and paramset is None:
        return key
    configured = key.algorithm.with_options(distinguishing_id=distinguishing_id, paramset=paramset)
    # Re-load through the configured algorithm: it signs with the ID / checks the paramset.
    return configured.load_private_pem(pem, passphrase)
