"""The one registry of algorithms: canonical ids, aliases, and SPKI dispatch."""

from __future__ import annotations

import importlib
from typing import NamedTuple

import stellakeys.crypto._pyca as _pyca
from stellakeys.crypto._base import Algorithm, PrivateKey, PublicKey, der_from_pem
from stellakeys.crypto._spki import read_spki_algorithm
from stellakeys.errors import MalformedKeyError, UnknownAlgorithmError, UnsupportedKeyError


class _Entry(NamedTuple):
    """What dispatch needs to know of an algorithm without importing its backend.

    A backend is imported the first time its algorithm is asked for: verifying an Ed25519
    proof does not load the GOST and SM2 backends (libcrypto through ctypes) nor ML-DSA
    (issue 20: CLI start-up). ``tests/test_algorithms.py`` checks that each entry says what
    the algorithm object says (id, aliases, SPKI OIDs), so the two cannot drift apart.
    """

    id: str
    aliases: tuple[str, ...]
    spki_oid: str
    spki_parameter_oid: str | None
    module: str
    attribute: str


_EC = "1.2.840.10045.2.1"
_ENTRIES: tuple[_Entry, ...] = (
    _Entry(
        "ed25519", ("SHA256-ED25519", "EdDSA", "Ed25519"), "1.3.101.112", None, "_pyca", "ED25519"
    ),
    _Entry(
        "ecdsa-p256-sha256",
        ("SHA256-ECDSA-P256", "ecdsa-p256", "ecdsa-sha2-nistp256", "ES256", "P-256"),
        _EC,
        "1.2.840.10045.3.1.7",
        "_pyca_ec",
        "P256",
    ),
    _Entry(
        "ecdsa-p384-sha384",
        ("SHA384-ECDSA-P384", "ecdsa-p384", "ecdsa-sha2-nistp384", "ES384", "P-384"),
        _EC,
        "1.3.132.0.34",
        "_pyca_ec",
        "P384",
    ),
    _Entry(
        "gost-r-34.10-2012-256",
        ("GOST-R-34.10-2012", "GOST-R-34.10-2012-256", "gost2012_256"),
        "1.2.643.7.1.1.1.1",
        None,
        "_gost",
        "GOST_256",
    ),
    _Entry(
        "gost-r-34.10-2012-512",
        ("GOST-R-34.10-2012-512", "gost2012_512"),
        "1.2.643.7.1.1.1.2",
        None,
        "_gost",
        "GOST_512",
    ),
    _Entry("sm2-sm3", ("SM2-P256", "SM2", "sm2"), _EC, "1.2.156.10197.1.301", "_sm2", "SM2_SM3"),
    *(
        _Entry(
            f"ml-dsa-{level}",
            (f"ML-DSA-{level}", f"MLDSA{level}", f"mldsa{level}"),
            f"2.16.840.1.101.3.4.3.{arc}",
            None,
            "_pyca_mldsa",
            f"ML_DSA_{level}",
        )
        for level, arc in ((44, 17), (65, 18), (87, 19))
    ),
)
_IDS = [e.id for e in _ENTRIES]


def _index(entries: tuple[_Entry, ...]) -> dict[str, _Entry]:
    index: dict[str, _Entry] = {}
    for entry in entries:
        for name in (entry.id, *entry.aliases):
            key = name.casefold()
            if index.get(key, entry) is not entry:
                raise AssertionError(f"alias {name!r} names two algorithms")
            index[key] = entry
    return index


_BY_NAME = _index(_ENTRIES)
_BY_SPKI = {(e.spki_oid, e.spki_parameter_oid): e for e in _ENTRIES}


_LOADED: dict[str, Algorithm] = {}


def _load(entry: _Entry) -> Algorithm:
    alg = _LOADED.get(entry.id)
    if alg is None:
        module = importlib.import_module(f"stellakeys.crypto.{entry.module}")
        alg = getattr(module, entry.attribute)
        if not isinstance(alg, Algorithm) or alg.id != entry.id:
            raise AssertionError(f"registry entry {entry.id} names {alg!r}")
        _LOADED[entry.id] = alg
    return alg


def algorithms() -> tuple[Algorithm, ...]:
    """Every registered algorithm, in a stable order (this imports every backend)."""
    return tuple(_load(e) for e in _ENTRIES)


def get_algorithm(
    name: str, *, distinguishing_id: bytes | str | None = None, paramset: str | None = None
) -> Algorithm:
    """The algorithm with this canonical id or alias (case-insensitive), with options.

    ``distinguishing_id`` (SM2) and ``paramset`` (GOST) are described on
    :meth:`Algorithm.with_options`; an algorithm without the option raises
    AlgorithmOptionError. UnknownAlgorithmError for a name that is not registered.
    """
    try:
        entry = _BY_NAME[name.casefold()]
    except (KeyError, AttributeError):
        raise UnknownAlgorithmError(str(name), list(_IDS)) from None
    return _load(entry).with_options(distinguishing_id=distinguishing_id, paramset=paramset)


def canonical_id(name: str) -> str:
    """The canonical id of an algorithm id or alias (case-insensitive), without importing its
    backend: configuration names algorithms it may never use. UnknownAlgorithmError as in
    :func:`get_algorithm`."""
    try:
        return _BY_NAME[name.casefold()].id
    except (KeyError, AttributeError):
        raise UnknownAlgorithmError(str(name), list(_IDS)) from None


def algorithm_of_spki(spki_der: bytes) -> Algorithm:
    oid, parameter = read_spki_algorithm(spki_der)
    entry = _BY_SPKI.get((oid, parameter)) or _BY_SPKI.get((oid, None))
    if entry is None:
        detail = oid if parameter is None else f"{oid} with parameter {parameter}"
        raise UnsupportedKeyError(f"no registered algorithm for public key type {detail}")
    return _load(entry)


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
        key = _load_pyca_private_pem(pem, passphrase)
    except _pyca.NotPycaKeyError:
        from stellakeys.crypto._native import load_native_private_pem

        key = load_native_private_pem(pem, passphrase)
    if distinguishing_id is None and paramset is None:
        return key
    configured = key.algorithm.with_options(distinguishing_id=distinguishing_id, paramset=paramset)
    # Re-load through the configured algorithm: it signs with the ID / checks the paramset.
    return configured.load_private_pem(pem, passphrase)


def _load_pyca_private_pem(pem: bytes, passphrase: bytes | None) -> PrivateKey:
    """Decrypt once and dispatch on the key type; NotPycaKeyError for SM2 and GOST keys."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    key = _pyca.decode_private(pem, passphrase)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return _pyca.ED25519.wrap(key)
    from stellakeys.crypto._pyca_ec import P256, P384
    from stellakeys.crypto._pyca_mldsa import ML_DSA_44, ML_DSA_65, ML_DSA_87

    if isinstance(key, ec.EllipticCurvePrivateKey):
        for alg in (P256, P384):
            if key.curve.name == alg.curve.name:
                return alg.wrap(key)
    for mlalg in (ML_DSA_44, ML_DSA_65, ML_DSA_87):
        if isinstance(key, mlalg.private_cls):
            return mlalg.wrap(key)
    raise UnsupportedKeyError(f"no registered algorithm for a {type(key).__name__}")
