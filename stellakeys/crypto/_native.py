"""Native (system libcrypto) key loading: placeholder until the SM2/GOST backend lands."""

from __future__ import annotations

from stellakeys.crypto._base import PrivateKey
from stellakeys.errors import BackendUnavailableError


def load_native_private_pem(pem: bytes, passphrase: bytes | None) -> PrivateKey:
    raise BackendUnavailableError("native backend not implemented yet")
