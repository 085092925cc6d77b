"""RFC 3161 timestamps over signatures: trusted time that a stolen key cannot back-date.

A token proves that some bytes existed at the TSA's ``genTime``. We timestamp the raw bytes
of each DSSE signature (the base64-decoded ``sig``), never the payload: the payload says
nothing about when it was signed, and one token per signature lets a multi-signature envelope
gain signatures over time, each with its own proof of existence.

Tokens come in two shapes and both are accepted wherever a token is taken (``parse_token``):
a ``TimeStampResp`` (what a TSA answers over HTTP, status plus token) or a bare
``TimeStampToken`` (the CMS ``ContentInfo``, what ``openssl ts -reply -token_out`` writes and
what other tools embed). We store the bare token, byte for byte as the TSA signed it.

Cryptographic verification is ``rfc3161-client``'s (CMS signature, chain to the configured TSA
roots at ``genTime``, critical timeStamping EKU, nonce). Around it we check what turns a valid
token into a *reason* a human can act on: which bytes the imprint covers, whether the TSA
certificate was valid at ``genTime``, whether it chains to a root we trust.
"""

from __future__ import annotations

import hashlib
import hmac
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from stellakeys.errors import ConfigError, TimestampError
from stellakeys.times import format_time, parse_duration
from stellakeys.timestamp_token import (  # re-exported: moved in issue 16
    _HASHES,
    _REQUEST_HASHES,
    MAX_REPLY_BYTES,
    AddedTimestamp,
    TimestampToken,
    parse_token,
    signing_certificate_hashes,
)
from stellakeys.timestamp_token import (
    _children as _children,  # tests/tsa_support.py reads the DER helpers here
)
from stellakeys.timestamp_token import (
    _tlv as _tlv,
)
from stellakeys.verification import SigningTime, TimeSource

if TYPE_CHECKING:
    from cryptography import x509

    from stellakeys.dsse import Envelope


__all__ = [
    "MAX_REPLY_BYTES",
    "AddedTimestamp",
    "RFC3161Verifier",
    "TimestampToken",
    "TimestampVerification",
    "TimestampVerifier",
    "TimestampingConfig",
    "load_tsa_roots",
    "parse_token",
    "request_timestamp",
    "signature_times",
]

# --- verification -----------------------------------------------------------------------------


@attrs.frozen
class TimestampVerification:
    """The outcome of checking one token against some bytes: a trusted time, or why not."""

    token: TimestampToken
    time: SigningTime | None
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.time is not None


class TimestampVerifier(Protocol):
    """Port: decides whether a token proves that ``data`` existed at its genTime."""

    def verify(
        self, token: TimestampToken, data: bytes, *, nonce: int | None = None
    ) -> TimestampVerification:
        """``nonce``: the nonce of our own request, when we made it (checked if given)."""
        ...


def load_tsa_roots(paths: Sequence[str | Path]) -> list[x509.Certificate]:
    """Every certificate in the given PEM files; ConfigError naming the file otherwise."""
    from cryptography import x509

    roots: list[x509.Certificate] = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read TSA root {path}: {exc.strerror}") from None
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError:
            raise ConfigError(f"{path}: not a PEM certificate (TSA root)") from None
        roots.extend(certs)
    return roots


class RFC3161Verifier:
    """The default verifier: ``rfc3161-client`` with the TSA roots we trust.

    A token verifies when its imprint is the hash (SHA-256/384/512) of the data, the
    certificate named by its SignerInfo was valid at genTime, carries the critical
    timeStamping EKU alone and no key usage beyond digitalSignature and nonRepudiation, and is
    the one its signed ESS signing-certificate attribute names, it chains (through
    certificates in the token) to one of ``roots`` with every link valid at genTime, the CMS
    signature over the TSTInfo holds, and the nonce is ours when we give one. The trusted
    time is :attr:`TimestampToken.latest_time`.

    Not checked (see docs/trusted-time.md): revocation of TSA certificates (CRL/OCSP) and the
    TSA policy OID.
    """

    def __init__(self, roots: Sequence[x509.Certificate]) -> None:
        if not roots:
            raise ConfigError("a timestamp verifier needs at least one TSA root certificate")
        self.roots = tuple(roots)

    @classmethod
    def from_pem_files(cls, paths: Sequence[str | Path]) -> RFC3161Verifier:
        return cls(load_tsa_roots(paths))

    def verify(
        self, token: TimestampToken, data: bytes, *, nonce: int | None = None
    ) -> TimestampVerification:
        def fail(why: str) -> TimestampVerification:
            return TimestampVerification(token, None, why)

        if token.hash_algorithm not in _HASHES.values():
            return fail(f"its imprint uses an unaccepted hash algorithm ({token.hash_algorithm})")
        if not token.covers(data):
            return fail(f"its message imprint ({token.hash_algorithm}) is for other bytes")
        cert = token.signer_certificate
        if cert is None:
            return fail("it carries no TSA certificate (request tokens with certReq)")
        subject = token.tsa_name or "?"
        try:
            why = _certificate_problem(cert, token.gen_time)
        except ValueError:  # an extension cryptography cannot parse: damaged certificate
            why = "cannot be parsed"
        if why is not None:
            return fail(f"TSA certificate {subject} {why}")
        why = _substituted(token, cert)
        if why is not None:
            return fail(why)
        from rfc3161_client import VerifierBuilder

        builder = VerifierBuilder(roots=list(self.roots))
        if nonce is not None:
            builder = builder.nonce(nonce)
        try:
            builder.build().verify(token.response, token.imprint)
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:  # VerificationError, ValueError, x509 errors, a Rust
            # panic (see _guard_native): whatever the library raises on this untrusted input
            # means "does not verify".
            return fail(_explain_library_failure(str(exc), subject))
        detail = f"{subject} serial {token.serial}"
        if token.accuracy:
            detail += f" (genTime {format_time(token.gen_time)} ±{_seconds(token.accuracy)})"
        return TimestampVerification(
            token, SigningTime(token.latest_time, TimeSource.TRUSTED, detail)
        )


def _seconds(delta: timedelta) -> str:
    return f"{delta.total_seconds():g}s"


def _certificate_problem(cert: x509.Certificate, gen_time: datetime) -> str | None:
    """Why the TSA certificate cannot vouch for ``gen_time``; checked here first only to word
    the reason (the library checks the same things, less readably)."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    if gen_time < cert.not_valid_before_utc:
        return (
            f"was not yet valid at genTime {format_time(gen_time)}"
            f" (valid from {format_time(cert.not_valid_before_utc)})"
        )
    if gen_time > cert.not_valid_after_utc:
        return (
            f"had expired at genTime {format_time(gen_time)}"
            f" (valid until {format_time(cert.not_valid_after_utc)})"
        )
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        return "has no extended key usage (RFC 3161 needs a critical timeStamping EKU)"
    if not eku.critical or ExtendedKeyUsageOID.TIME_STAMPING not in eku.value:
        return "lacks the critical timeStamping extended key usage"
    # RFC 3161 2.3: a key reserved for timestamping, its EKU id-kp-timeStamping alone. OpenSSL
    # holds a TSA certificate to this, and to a key usage of digitalSignature and/or
    # nonRepudiation only; rfc3161-client checks neither, so a certificate also issued for
    # code signing or TLS would otherwise give trusted time.
    if len(eku.value) != 1:
        names = {
            ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
            ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
            ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
            ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
            ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
            ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE: "anyExtendedKeyUsage",
        }
        others = ", ".join(
            names.get(p, p.dotted_string)
            for p in eku.value
            if p != ExtendedKeyUsageOID.TIME_STAMPING
        )
        return f"is not reserved for timestamping (its extended key usage also allows {others})"
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None
    if not (usage.digital_signature or usage.content_commitment) or any(
        (
            usage.key_encipherment,
            usage.data_encipherment,
            usage.key_agreement,
            usage.key_cert_sign,
            usage.crl_sign,
        )
    ):
        return "has a key usage other than digitalSignature and nonRepudiation"
    return None


def _substituted(token: TimestampToken, cert: x509.Certificate) -> str | None:
    """Why ``cert`` is not the certificate the TSA signed for. The SignerInfo's issuer and
    serial, by which the certificate is found, are not covered by the signature; the ESS
    signing-certificate attribute is (RFC 3161 2.4.1 requires it, RFC 5035). Without this
    check another certificate for the same key, with other validity dates or usages, could
    be slipped in: OpenSSL's ``ts -verify`` checks it, rfc3161-client does not."""
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        named = signing_certificate_hashes(token.der)
    except TimestampError as exc:
        return str(exc)
    if not named:
        return (
            "it names no TSA certificate in its signed attributes (RFC 3161 requires an ESS"
            " signingCertificate or signingCertificateV2 attribute)"
        )
    der = cert.public_bytes(Encoding.DER)
    for algorithm, cert_hash in named:
        if not hmac.compare_digest(hashlib.new(algorithm, der).digest(), cert_hash):
            return (
                f"its signed attributes name another TSA certificate than the embedded"
                f" {token.tsa_name or '?'} (a substituted certificate)"
            )
    return None


def _explain_library_failure(message: str, subject: str) -> str:
    lowered = message.lower()
    if "nonce" in lowered:
        return "its nonce does not match our request"
    if any(
        s in lowered
        for s in ("local issuer", "self-signed certificate", "unable to get issuer", "untrusted")
    ):
        return f"TSA certificate {subject} does not chain to a configured TSA root"
    if "expired" in lowered or "not yet valid" in lowered:
        return f"a certificate in the chain of {subject} was not valid at genTime"
    if "mismatch between messages" in lowered:
        return "its message imprint is for other bytes"
    if any(s in lowered for s in ("signature", "digest", "malformed", "asn.1")):
        return "its signature does not verify: the token was altered or damaged"
    return f"it does not verify: {message}"


# --- requesting ------------------------------------------------------------------------------


def request_timestamp(
    url: str,
    data: bytes,
    *,
    hash_algorithm: str = "sha256",
    timeout: float = 10.0,
    verifier: TimestampVerifier | None = None,
) -> TimestampToken:
    """Ask the TSA at ``url`` to timestamp ``data`` (RFC 3161 over HTTP POST).

    The request carries a nonce and asks for the TSA certificate (certReq), so the token can
    be verified offline later. The reply must answer *this* request (imprint and nonce), and,
    when a verifier is given, verify; otherwise TimestampError and nothing is returned.

    The nonce is drawn by rfc3161-client's request builder (64 bits from its CSPRNG); the
    builder takes no caller nonce, and hand-encoding the request to use ``secrets`` instead
    would be our own ASN.1 where a maintained builder exists.
    """
    from rfc3161_client import HashAlgorithm, TimestampRequestBuilder

    if hash_algorithm not in _REQUEST_HASHES:
        raise ConfigError(
            f"timestamp hash {hash_algorithm!r} is not supported; use "
            + " or ".join(_REQUEST_HASHES)
        )
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise TimestampError(f"TSA URL must be http or https, not {url!r}")
    algorithm = HashAlgorithm.SHA256 if hash_algorithm == "sha256" else HashAlgorithm.SHA512
    req = (
        TimestampRequestBuilder()
        .data(data)
        .hash_algorithm(algorithm)
        .nonce(nonce=True)
        .cert_request(cert_request=True)
        .build()
    )
    reply = _post(url, req.as_bytes(), timeout)
    token = parse_token(reply)
    if not token.covers(data):
        raise TimestampError(f"the TSA at {url} answered for other bytes than we sent")
    if token.nonce != req.nonce:
        raise TimestampError(f"the TSA at {url} answered with another nonce (a replayed reply?)")
    if verifier is not None:
        checked = verifier.verify(token, data, nonce=req.nonce)
        if not checked.ok:
            raise TimestampError(f"the token from {url} does not verify: {checked.failure}")
    return token


def _post(url: str, body: bytes, timeout: float) -> bytes:
    request = urllib.request.Request(  # noqa: S310 - scheme checked by the caller
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/timestamp-query",
            "Accept": "application/timestamp-reply",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:  # noqa: S310
            data: bytes = reply.read(MAX_REPLY_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise TimestampError(f"the TSA at {url} answered HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TimestampError(f"cannot reach the TSA at {url}: {reason}") from None
    if len(data) > MAX_REPLY_BYTES:
        raise TimestampError(f"the TSA at {url} sent more than {MAX_REPLY_BYTES} bytes")
    return data


# --- configuration ---------------------------------------------------------------------------


@attrs.frozen
class TimestampingConfig:
    """The ``timestamping:`` section of the configuration.

    .. code-block:: yaml

        timestamping:
          tsaRoots: [tsa-root.pem]     # PEM files, relative to the home; required to verify
          tsaUrl: https://tsa.example/ # default TSA for `sign --timestamp` / `timestamp add`
          hashAlgorithm: sha256        # of requests: sha256 or sha512
          timeout: 10s
    """

    tsa_roots: tuple[Path, ...] = ()
    tsa_url: str | None = None
    hash_algorithm: str = "sha256"
    timeout: float = 10.0

    @classmethod
    def from_document(cls, document: Mapping[str, Any], home: Path) -> TimestampingConfig:
        section = document.get("timestamping")
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise ConfigError("timestamping: must be a mapping")
        roots = section.get("tsaRoots", [])
        if isinstance(roots, str):
            roots = [roots]
        if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
            raise ConfigError("timestamping.tsaRoots: must be a list of PEM file paths")
        url = section.get("tsaUrl")
        if url is not None and not isinstance(url, str):
            raise ConfigError("timestamping.tsaUrl: must be a URL string")
        hash_algorithm = str(section.get("hashAlgorithm", "sha256")).lower()
        if hash_algorithm not in _REQUEST_HASHES:
            raise ConfigError("timestamping.hashAlgorithm: must be sha256 or sha512")
        timeout = section.get("timeout", "10s")
        try:
            seconds = parse_duration(str(timeout)).total_seconds()
        except ValueError:
            raise ConfigError("timestamping.timeout: expected a duration like 10s") from None
        return cls(
            tsa_roots=tuple(home / Path(r).expanduser() for r in roots),
            tsa_url=url or None,
            hash_algorithm=hash_algorithm,
            timeout=seconds,
        )

    def verifier(self) -> RFC3161Verifier | None:
        """The verifier for the configured roots, or None when none are configured."""
        return RFC3161Verifier.from_pem_files(self.tsa_roots) if self.tsa_roots else None


# --- per-signature trusted time ---------------------------------------------------------------


def signature_times(
    envelope: Envelope,
    tokens: Sequence[TimestampToken],
    verifier: TimestampVerifier | None,
) -> tuple[dict[int, SigningTime], list[str]]:
    """Trusted time per signature index, from the tokens that verify over its bytes, and a
    line for every token that gives none.

    A signature covered by several valid tokens takes the earliest: each proves the signature
    existed by then, and the earliest proof is the strongest.
    """
    times: dict[int, SigningTime] = {}
    issues: list[str] = []
    for n, token in enumerate(tokens, 1):
        label = f"timestamp token {n} ({token.describe()})"
        covered = [i for i, s in enumerate(envelope.signatures) if token.covers(s.sig)]
        if not covered:
            issues.append(f"{label} covers none of the envelope's signatures")
            continue
        if verifier is None:
            issues.append(f"{label} cannot be verified: no TSA roots are configured")
            continue
        checked = verifier.verify(token, envelope.signatures[covered[0]].sig)
        if checked.time is None:
            issues.append(f"{label} gives no trusted time: {checked.failure}")
            continue
        for i in covered:
            if i not in times or checked.time.at < times[i].at:
                times[i] = checked.time
    return times, issues
