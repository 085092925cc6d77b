"""GOST R 34.10-2012 with Streebog: placeholder until the native backend lands."""

from __future__ import annotations

from stellakeys.crypto._base import Algorithm, PrivateKey, PublicKey
from stellakeys.errors import BackendUnavailableError


class Gost(Algorithm):
    def __init__(self, bits: int, oid: str, aliases: tuple[str, ...]) -> None:
        self.id = f"gost-r-34.10-2012-{bits}"
        self.aliases = aliases
        self.spki_oid = oid
        self.bits = bits
        self.display_name = f"GOST R 34.10-2012 {bits}-bit with Streebog-{bits}"

    def generate(self) -> PrivateKey:
        raise BackendUnavailableError("GOST backend not implemented yet")

    def load_public_der(self, spki_der: bytes) -> PublicKey:
        raise BackendUnavailableError("GOST backend not implemented yet")

    def load_private_pem(self, pem: bytes, passphrase: bytes | None) -> PrivateKey:
        raise BackendUnavailableError("GOST backend not implemented yet")


GOST_256 = Gost(256, "1.2.643.7.1.1.1.1", ("GOST-R-34.10-2012", "GOST-R-34.10-2012-256", "gost2012_256"))
GOST_512 = Gost(512, "1.2.643.7.1.1.1.2", ("GOST-R-34.10-2012-512", "gost2012_512"))
