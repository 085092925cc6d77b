"""A real RFC 3161 TSA for tests: ``openssl ts -reply`` with a CA hierarchy made here.

Certificates (``cryptography``'s builder, so validity periods can lie in the past):

* ``root``: the TSA root the tests trust; ``intermediate`` under it; TSA ``tsa`` under that
  (critical timeStamping EKU, valid now +- 1 day). Tokens carry the chain through
  ``-chain``, so verification has to build root <- intermediate <- TSA from the token.
* ``expired``: a TSA certificate under the same intermediate that expired yesterday
  (``openssl ts`` signs with it regardless, which is what an attacker's TSA would do).
* ``rogue``: a well-formed TSA under ``other-root``, which no test trusts.

``HttpTsa`` serves it over HTTP (``application/timestamp-query``) from a thread, with paths
that misbehave: ``/reject`` (status rejection), ``/garbage`` (not DER), ``/stale`` (the reply
to a different nonce), anything unknown (HTTP 404).
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    from conftest import OpenSSL

    from stellakeys import KeyManager

TSA_CONFIG = """\
[ tsa ]
default_tsa = tsa_config

[ tsa_config ]
serial = {serial}
crypto_device = builtin
signer_digest = sha256
default_policy = 1.3.6.1.4.1.55555.1
other_policies = 1.3.6.1.4.1.55555.2
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = no
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "StellaKeys Tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


class TestTsa:
    __test__ = False  # not a test class, despite the name

    def __init__(self, directory: Path, openssl: OpenSSL) -> None:
        self.dir = directory
        self.openssl = openssl
        self._lock = threading.Lock()  # openssl ts -reply updates the serial file
        self._count = 0
        now = datetime.now(UTC)
        day = timedelta(days=1)
        root_key, root = self._ca("StellaKeys Test TSA Root", None, None, now - 10 * day)
        inter_key, inter = self._ca("StellaKeys Test TSA Intermediate", root_key, root, now - day)
        other_key, other = self._ca("Other Root", None, None, now - 10 * day)
        self.root_pem = self._write_cert("root", root)
        self.other_root_pem = self._write_cert("other-root", other)
        self._write_cert("intermediate", inter)
        self._leaf("tsa", "StellaKeys Test TSA", inter_key, inter, now - day, now + day)
        self._leaf("expired", "Expired Test TSA", inter_key, inter, now - 10 * day, now - day)
        self._leaf("rogue", "Rogue TSA", other_key, other, now - day, now + day)
        (directory / "tsa-chain.pem").write_bytes(
            (directory / "intermediate.pem").read_bytes() + root.public_bytes(_PEM)
        )
        (directory / "rogue-chain.pem").write_bytes(other.public_bytes(_PEM))
        (directory / "serial").write_text("01\n")
        self.config = directory / "openssl-tsa.cnf"
        self.config.write_text(TSA_CONFIG.format(serial=directory / "serial"))

    # --- certificates ---------------------------------------------------------------------

    def _ca(
        self,
        cn: str,
        issuer_key: ec.EllipticCurvePrivateKey | None,
        issuer: x509.Certificate | None,
        not_before: datetime,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(issuer.subject if issuer else _name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_before + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
        )
        return key, builder.sign(issuer_key or key, hashes.SHA256())

    def _leaf(
        self,
        name: str,
        cn: str,
        issuer_key: ec.EllipticCurvePrivateKey,
        issuer: x509.Certificate,
        not_before: datetime,
        not_after: datetime,
    ) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(issuer.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, True, False, False, False, False, False, False, False),
                critical=True,
            )
            # RFC 3161 2.3: the TSA certificate has exactly this EKU, marked critical.
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True
            )
            .sign(issuer_key, hashes.SHA256())
        )
        self._write_cert(name, cert)
        (self.dir / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def _write_cert(self, name: str, cert: x509.Certificate) -> Path:
        path = self.dir / f"{name}.pem"
        path.write_bytes(cert.public_bytes(_PEM))
        return path

    # --- timestamping ---------------------------------------------------------------------

    def query(self, data: bytes, digest: str = "sha256", nonce: bool = True) -> bytes:
        """A TimeStampReq for ``data`` made by ``openssl ts -query`` (certReq set)."""
        with self._lock:
            self._count += 1
            path = self.dir / f"data-{self._count}.bin"
        path.write_bytes(data)
        args: list[str | Path] = ["ts", "-query", "-data", path, f"-{digest}", "-cert"]
        return self.openssl(*args, *([] if nonce else ["-no_nonce"]))

    def reply(
        self,
        data: bytes | None = None,
        *,
        signer: str = "tsa",
        query: bytes | None = None,
        digest: str = "sha256",
        token_only: bool = False,
    ) -> bytes:
        """The TSA's DER reply (TimeStampResp, or the bare token) to ``query`` or to a fresh
        query over ``data``."""
        if query is None:
            assert data is not None
            query = self.query(data, digest)
        with self._lock:
            self._count += 1
            n = self._count
            q, r = self.dir / f"q-{n}.tsq", self.dir / f"r-{n}.tsr"
            q.write_bytes(query)
            chain = "rogue-chain.pem" if signer == "rogue" else "tsa-chain.pem"
            args: list[str | Path] = [
                "ts",
                "-reply",
                "-config",
                self.config,
                "-queryfile",
                q,
                "-signer",
                self.dir / f"{signer}.pem",
                "-inkey",
                self.dir / f"{signer}.key",
                "-chain",
                self.dir / chain,
                "-out",
                r,
            ]
            self.openssl(*args, *(["-token_out"] if token_only else []))
        return r.read_bytes()


_PEM = serialization.Encoding.PEM


class _Handler(http.server.BaseHTTPRequestHandler):
    tsa: TestTsa
    requests: list[str]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.requests.append(self.headers.get("Content-Type", ""))
        if self.path == "/tsa":
            self._send(200, self.tsa.reply(query=body))
        elif self.path == "/stale":
            self._send(200, self.tsa.reply(query=_other_nonce(body)))
        elif self.path == "/reject":
            # TimeStampResp { PKIStatusInfo { status rejection(2), statusString {"busy"} } }
            self._send(200, bytes.fromhex("300d300b02010230060c0462757379"))
        elif self.path == "/garbage":
            self._send(200, b"<html>not a timestamp</html>")
        else:
            self._send(404, b"")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/timestamp-reply")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass


def _other_nonce(query: bytes) -> bytes:
    """The same TimeStampReq with its nonce changed (last bit flipped): the reply a replaying
    or confused TSA would send."""
    from stellakeys.timestamp import _children, _tlv

    _, body, end = _tlv(query, 0, len(query))
    for tag, _, c_body, c_end in _children(query, body, end)[2:]:
        if tag == 0x02:  # the INTEGER after version and messageImprint: the nonce
            return query[: c_end - 1] + bytes([query[c_end - 1] ^ 1]) + query[c_end:]
        del c_body
    raise AssertionError("query has no nonce")


@contextmanager
def http_tsa(tsa: TestTsa) -> Iterator[tuple[str, list[str]]]:
    """(base URL, content types of the requests received) of a TSA served from a thread."""
    requests: list[str] = []
    handler = type("Handler", (_Handler,), {"tsa": tsa, "requests": requests})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def manager_trusting(tsa: TestTsa, home: Path) -> KeyManager:
    """A manager on a memory store whose keys and anchors are made a day before now (the TSA
    signs at the real now: every comparison is relative to that same clock) and which trusts
    ``tsa``'s root for RFC 3161 tokens. Software keys live in ``home`` (created 0700)."""
    from stellakeys import FrozenClock, KeyManager
    from stellakeys.keystores.ports import KeyStoreContext
    from stellakeys.storage.memory import MemoryStore
    from stellakeys.timestamp import RFC3161Verifier

    home.mkdir(mode=0o700)
    return KeyManager(
        MemoryStore(),
        clock=FrozenClock(datetime.now(UTC) - timedelta(days=1)),
        keystore_context=KeyStoreContext(home=home),
        timestamp_verifier=RFC3161Verifier.from_pem_files([tsa.root_pem]),
    )
