"""Decoding private keys that only the system libcrypto understands: SM2 and GOST R 34.10-2012.

Apart from ``_native`` (which picks the algorithm) so that ``_gost`` and ``_sm2`` can decode
without importing the module that imports them (no import cycle).

The registry hands us a PEM that ``cryptography`` could not use. We accept PKCS#8 only
("PRIVATE KEY", or "ENCRYPTED PRIVATE KEY" with a passphrase): it is what OpenSSL's genpkey and
pkcs8 write and what we export. The PEM is decrypted once, by OpenSSL; the algorithm OID of the
decrypted PrivateKeyInfo decides whether the gost engine has to be loaded before OpenSSL can
turn it into a key, so an SM2 user never needs the engine.
"""

from __future__ import annotations

import stellakeys.crypto._libcrypto as native
from stellakeys.crypto._base import der_from_pem
from stellakeys.errors import MalformedKeyError, UnsupportedKeyError

_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
_GOST_2012_256 = "1.2.643.7.1.1.1.1"
_GOST_2012_512 = "1.2.643.7.1.1.1.2"

_VAGUE = "cannot decrypt or parse private key (wrong passphrase or corrupt PEM)"


def decode_native_private_pem(pem: bytes, passphrase: bytes | None) -> native.Pkey:
    """Decrypt and parse a PKCS#8 PEM into an EVP_PKEY (not yet validated).

    Wrong passphrase and corrupt input give the same message on purpose; no message carries key
    bytes.
    """
    if b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in pem:
        if passphrase is None:
            raise MalformedKeyError("private key is encrypted; a passphrase is required")
        der = der_from_pem(pem, "ENCRYPTED PRIVATE KEY")
    elif b"-----BEGIN PRIVATE KEY-----" in pem:
        if passphrase is not None:
            raise MalformedKeyError("a passphrase was given but the private key is not encrypted")
        der = der_from_pem(pem, "PRIVATE KEY")
    else:
        raise UnsupportedKeyError(
            "SM2 and GOST private keys must be PKCS#8 PEM "
            "(convert with: openssl pkcs8 -topk8 -v2 aes-256-cbc)"
        )
    info = native.decode_pkcs8(der, passphrase)
    if info is None:
        raise MalformedKeyError(_VAGUE)
    with info:
        oid = info.algorithm_oid()
        if oid in (_GOST_2012_256, _GOST_2012_512):
            native.ensure_gost_engine()
        elif oid != _EC_PUBLIC_KEY:
            raise UnsupportedKeyError(f"no registered algorithm for private key type {oid}")
        key = info.to_pkey()
    if key is None:
        # Decryption worked (or there was none), so this is not about the passphrase.
        raise MalformedKeyError("private key is malformed")
    return key
