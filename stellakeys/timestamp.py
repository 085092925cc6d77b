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
from stellakeys.verification import SigningTime, TimeSource

if TYPE_CHECKING:
    from cryptography import x509

    from stellakeys.dsse import Envelope

__all__ = [
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

#: The largest TSA reply we read; real ones are a few KiB (token plus a short chain).
MAX_REPLY_BYTES = 1 << 20

#: Imprint hash algorithms we accept, by OID. SHA-1 and MD5 are refused on purpose: a
#: collision would let one token vouch for two different signatures.
_HASHES: Mapping[str, str] = {
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
}
_REQUEST_HASHES = ("sha256", "sha512")  # what rfc3161-client's request builder can ask for

_STATUS = {
    0: "granted",
    1: "grantedWithMods",
    2: "rejection",
    3: "waiting",
    4: "revocationWarning",
    5: "revocationNotification",
}


# --- DER plumbing ----------------------------------------------------------------------------
# rfc3161-client parses only a TimeStampResp, and only strict DER. Two things real tokens need
# before it sees them, done on the outer structure only (never on signed bytes):
# * a bare TimeStampToken is wrapped in a TimeStampResp with status "granted";
# * the SignedData ``certificates`` SET OF is put in DER order. ``openssl ts -reply -chain``
#   (and other TSAs) emit the chain in chain order, which DER forbids; that field is outside
#   the CMS signature, so reordering it changes nothing that is verified.

_SEQUENCE, _SET, _OID, _INTEGER, _CONTEXT_0 = 0x30, 0x31, 0x06, 0x02, 0xA0


def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, first content byte, end of content) of the element at ``pos``; definite lengths
    only, as DER requires."""
    if pos + 2 > end:
        raise TimestampError("malformed timestamp: truncated DER")
    tag, first = data[pos], data[pos + 1]
    if tag & 0x1F == 0x1F:
        raise TimestampError("malformed timestamp: unexpected high tag number")
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > end:
            raise TimestampError("malformed timestamp: bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > end:
        raise TimestampError("malformed timestamp: DER length runs past the end")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(tag, element start, content start, element end) of each element in ``[start, end)``."""
    out = []
    while start < end:
        tag, body, stop = _tlv(data, start, end)
        out.append((tag, start, body, stop))
        start = stop
    return out


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _split_reply(der: bytes) -> tuple[int, str, bytes | None]:
    """(status, status text, bare token or None) of a TimeStampResp or a bare token."""
    if not isinstance(der, bytes | bytearray | memoryview):
        raise TimestampError("a timestamp token must be DER bytes")
    der = bytes(der)
    if der[:1] == b"-":
        raise TimestampError("timestamp token is PEM or text; give the DER bytes")
    tag, body, end = _tlv(der, 0, len(der))
    if tag != _SEQUENCE or end != len(der):
        raise TimestampError("malformed timestamp: not a single DER SEQUENCE")
    kids = _children(der, body, end)
    if kids and kids[0][0] == _OID:  # ContentInfo: a bare TimeStampToken
        return 0, "", der
    if not kids or kids[0][0] != _SEQUENCE or len(kids) > 2:
        raise TimestampError("malformed timestamp: neither a TimeStampResp nor a TimeStampToken")
    _, _, s_body, s_end = kids[0]
    status_parts = _children(der, s_body, s_end)
    if not status_parts or status_parts[0][0] != _INTEGER:
        raise TimestampError("malformed timestamp: TimeStampResp without a status")
    _, _, i_body, i_end = status_parts[0]
    status = int.from_bytes(der[i_body:i_end], "big", signed=True)
    text = _status_text(der, status_parts[1:])
    token = der[kids[1][1] : kids[1][3]] if len(kids) == 2 else None
    return status, text, token


def _status_text(der: bytes, parts: list[tuple[int, int, int, int]]) -> str:
    """The PKIFreeText strings of a PKIStatusInfo, best effort (they are only shown)."""
    texts = []
    for tag, _, body, end in parts:
        if tag != _SEQUENCE:
            continue
        for _, _, s_body, s_end in _children(der, body, end):
            texts.append(der[s_body:s_end].decode("utf-8", "replace"))
    return "; ".join(texts)


def _canonical_reply(token: bytes) -> bytes:
    """A granted TimeStampResp around ``token`` with its certificates in DER order."""
    _, body, end = _tlv(token, 0, len(token))
    info = _children(token, body, end)
    if len(info) != 2 or info[0][0] != _OID or info[1][0] != _CONTEXT_0:
        raise TimestampError("malformed timestamp: the token is not a CMS ContentInfo")
    wrapper = _children(token, info[1][2], info[1][3])
    if len(wrapper) != 1 or wrapper[0][0] != _SEQUENCE:
        raise TimestampError("malformed timestamp: the token does not hold a SignedData")
    for tag, _, c_body, c_end in _children(token, wrapper[0][2], wrapper[0][3]):
        if tag == _CONTEXT_0:  # certificates [0] IMPLICIT SET OF CertificateChoices
            certs = sorted(token[s:e] for _, s, _, e in _children(token, c_body, c_end))
            token = token[:c_body] + b"".join(certs) + token[c_end:]  # same length: in place
            break
    granted = bytes([_SEQUENCE, 3, _INTEGER, 1, 0])
    return bytes([_SEQUENCE]) + _length(len(granted) + len(token)) + granted + token


# --- tokens -----------------------------------------------------------------------------------


def _guard_native(what: str, fn: Any) -> Any:
    """Call into rfc3161-client, turning any failure into TimestampError.

    Its Rust getters ``unwrap`` some inner parses; pyo3 turns a Rust panic into
    ``PanicException``, which derives from BaseException, not Exception. Catch that too (but
    never an interrupt), so hostile DER is a typed error, not a crash.
    """
    try:
        return fn()
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:
        raise TimestampError(f"malformed timestamp: {what}: {exc}") from None


@attrs.frozen
class TimestampToken:
    """A parsed RFC 3161 token. Parsed is not verified: see :class:`TimestampVerifier`."""

    #: The bare TimeStampToken (CMS ContentInfo) exactly as the TSA signed it: what we store.
    der: bytes = attrs.field(repr=False)
    gen_time: datetime
    #: The TSA's stated accuracy of genTime (None when the token gives none).
    accuracy: timedelta | None
    #: ``sha256``, ``sha384``, ``sha512``, or the dotted OID of an algorithm we do not accept.
    hash_algorithm: str
    imprint: bytes = attrs.field(repr=False)
    serial: int
    nonce: int | None
    policy: str | None
    #: The subject of the certificate that signed the token (as RFC 4514), if it is embedded.
    tsa_name: str | None
    #: The TSA certificate named by the SignerInfo, if the token embeds it (certReq).
    signer_certificate: x509.Certificate | None = attrs.field(repr=False, eq=False)
    #: rfc3161-client's view of the canonical reply, for verification.
    response: Any = attrs.field(repr=False, eq=False)

    @property
    def latest_time(self) -> datetime:
        """The latest instant the TSA vouches for: genTime plus its accuracy. Policy decisions
        use this, so a token can never look earlier than the TSA itself allows."""
        return self.gen_time + (self.accuracy or timedelta(0))

    def covers(self, data: bytes) -> bool:
        """Whether the message imprint is the hash of ``data`` (constant-time compare)."""
        if self.hash_algorithm not in _HASHES.values():
            return False
        return hmac.compare_digest(hashlib.new(self.hash_algorithm, data).digest(), self.imprint)

    def describe(self) -> str:
        who = self.tsa_name or "unknown TSA"
        return f"{who} serial {self.serial} at {format_time(self.gen_time)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "genTime": format_time(self.gen_time),
            "accuracySeconds": self.accuracy.total_seconds() if self.accuracy else None,
            "tsa": self.tsa_name,
            "serial": str(self.serial),
            "hashAlgorithm": self.hash_algorithm,
            "policy": self.policy,
            "nonce": str(self.nonce) if self.nonce is not None else None,
        }


def parse_token(der: bytes) -> TimestampToken:
    """Parse a TimeStampResp or a bare TimeStampToken (DER). TimestampError if it is not one,
    or if it is a TSA reply that grants no token."""
    status, text, token = _split_reply(der)
    if status not in (0, 1):
        name = _STATUS.get(status, str(status))
        raise TimestampError(f"the TSA refused: status {name}" + (f" ({text})" if text else ""))
    if token is None:
        raise TimestampError("the TSA reply carries no timestamp token")
    from rfc3161_client import decode_timestamp_response

    canonical = _canonical_reply(token)
    response = _guard_native("cannot decode", lambda: decode_timestamp_response(canonical))
    info = _guard_native("no TSTInfo", lambda: response.tst_info)
    imprint = _guard_native("no message imprint", lambda: info.message_imprint)
    oid = _guard_native("no imprint algorithm", lambda: imprint.hash_algorithm.dotted_string)
    gen_time = _guard_native("no genTime", lambda: info.gen_time)
    if not isinstance(gen_time, datetime) or gen_time.tzinfo is None:
        raise TimestampError("malformed timestamp: genTime is not an absolute time")
    accuracy = _guard_native("bad accuracy", lambda: _accuracy(info.accuracy))
    policy = _guard_native("bad policy", lambda: info.policy)
    signer = _guard_native("bad certificates", lambda: _signer_certificate(response))
    # cryptography parses names lazily: a damaged certificate fails here, not at load.
    tsa_name = _guard_native("bad TSA name", lambda: signer and signer.subject.rfc4514_string())
    return TimestampToken(
        der=token,
        gen_time=gen_time,
        accuracy=accuracy,
        hash_algorithm=_HASHES.get(oid, oid),
        imprint=bytes(_guard_native("no imprint", lambda: imprint.message)),
        serial=int(_guard_native("no serial", lambda: info.serial_number)),
        nonce=_guard_native("bad nonce", lambda: info.nonce),
        policy=policy.dotted_string if policy is not None else None,
        tsa_name=tsa_name,
        signer_certificate=signer,
        response=response,
    )


def _accuracy(value: Any) -> timedelta | None:
    if value is None:
        return None
    return timedelta(
        seconds=value.seconds or 0,
        milliseconds=value.millis or 0,
        microseconds=value.micros or 0,
    )


def _signer_certificate(response: Any) -> x509.Certificate | None:
    """The embedded certificate the SignerInfo names (issuer and serial), as the verifier does.
    The SignerInfo's identifier is covered by the CMS signature; the certificate order is not."""
    from cryptography import x509

    infos = list(response.signed_data.signer_infos)
    if len(infos) != 1:
        return None
    issuer, serial = infos[0].issuer, infos[0].serial_number
    for der in response.signed_data.certificates:
        cert = x509.load_der_x509_certificate(der)
        if cert.issuer == issuer and cert.serial_number == serial:
            return cert
    return None


@attrs.frozen
class AddedTimestamp:
    """A token stored with a proof, and for which of its signatures."""

    signature_index: int
    #: The signature's keyid hint (unauthenticated; for people and the audit log).
    keyid: str | None
    token: TimestampToken
    #: Whether it was verified against configured TSA roots before it was stored.
    verified: bool
    #: The TSA URL it was requested from, or None for a token given to us.
    tsa_url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "signatureIndex": self.signature_index,
            "keyId": self.keyid,
            **self.token.to_dict(),
            "verified": self.verified,
            "tsaUrl": self.tsa_url,
        }


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
    certificate named by its SignerInfo was valid at genTime and carries the critical
    timeStamping EKU, it chains (through certificates in the token) to one of ``roots`` with
    every link valid at genTime, the CMS signature over the TSTInfo holds, and the nonce is
    ours when we give one. The trusted time is :attr:`TimestampToken.latest_time`.

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
