"""SM2 with SM3 (GB/T 32918): placeholder until the native backend lands."""

from __future__ import annotations

from stellakeys.crypto._base import Algorithm, PrivateKey, PublicKey
from stellakeys.errors import BackendUnavailableError

DEFAULT_DISTINGUISHING_ID = b"1234567812345678"


class Sm2(Algorithm):
    id = "sm2-sm3"
    aliases = ("SM2-P256", "SM2", "sm2")
    spki_oid = "1.2.840.10045.2.1"
    spki_parameter_oid = "1.2.156.10197.1.301"
    display_name = "SM2 with SM3 (GB/T 32918)"

    def __init__(self, distinguishing_id: bytes = DEFAULT_DISTINGUISHING_ID) -> None:
        self.distinguishing_id = distinguishing_id

    def generate(self) -> PrivateKey:
        raise BackendUnavailableError("SM2 backend not implemented yet")

    def load_public_der(self, spki_der: bytes) -> PublicKey:
        raise BackendUnavailableError("SM2 backend not implemented yet")

    def load_private_pem(self, pem: bytes, passphrase: bytes | None) -> PrivateKey:
        raise BackendUnavailableError("SM2 backend not implemented yet")


SM2_SM3 = Sm2()
