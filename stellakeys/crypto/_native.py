"""SM2 and GOST private keys from PKCS#8 PEM: decode (``_native_pem``), then pick the algorithm."""

from __future__ import annotations

import stellakeys.crypto._libcrypto as native
from stellakeys.crypto._base import PrivateKey
from stellakeys.crypto._gost import GOST_256, GOST_512
from stellakeys.crypto._native_pem import decode_native_private_pem
from stellakeys.crypto._sm2 import SM2_SM3
from stellakeys.errors import UnsupportedKeyError

__all__ = ["decode_native_private_pem", "load_native_private_pem"]


def load_native_private_pem(pem: bytes, passphrase: bytes | None) -> PrivateKey:
    """An SM2 (default distinguishing ID) or GOST private key from PKCS#8 PEM."""
    key = decode_native_private_pem(pem, passphrase)
    if key.is_a("SM2"):
        return SM2_SM3.wrap_private(key)
    for alg in (GOST_256, GOST_512):
        if key.type_id == native.nid_of_oid(alg.spki_oid):
            return alg.wrap_private(key)
    raise UnsupportedKeyError("no registered algorithm for this private key (an EC key?)")
