"""Proof operations of the KeyManager facade: sign (keys checked before and after
signing) and RFC 3161 timestamps requested, checked and stored with a proof. Plain functions
taking the facade (typed as :class:`ManagerCore`); the facade's methods delegate here."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from stellakeys.audit import EventType
from stellakeys.dsse import Envelope, sign_envelope
from stellakeys.errors import (
    KeyIdentityError,
    MalformedEnvelopeError,
    PolicyError,
    UnverifiablePayloadError,
)
from stellakeys.intoto import PAYLOAD_TYPE as INTOTO_PAYLOAD_TYPE
from stellakeys.intoto import is_intoto_payload_type, looks_like_statement, statement_facts
from stellakeys.key_lifecycle import (
    check_handle,
    verify_own_signatures,
)
from stellakeys.manager_core import ManagerCore
from stellakeys.manager_values import (
    check_signable,
)
from stellakeys.storage.ports import ProofRecord, Transaction

if TYPE_CHECKING:
    from stellakeys.timestamp import AddedTimestamp, TimestampVerifier


def sign(
    m: ManagerCore,
    payload: bytes,
    key_ids: Sequence[str] | str,
    payload_type: str = INTOTO_PAYLOAD_TYPE,
    *,
    timestamp_url: str | None = None,
    within: Callable[[Transaction, str], None] | None = None,
) -> str:
    """The body of :meth:`KeyManager.sign` (documented there)."""
    ids = [key_ids] if isinstance(key_ids, str) else list(dict.fromkeys(key_ids))
    if not ids:
        raise PolicyError("at least one key id is required to sign")
    check_verifiable(payload, payload_type)
    now = m._now()
    with m.store.read() as tx:
        records = [m._require_key(tx, k) for k in ids]
        for r in records:
            check_signable(r, tx.history_of_key(r.key_id), now)
    handles = [m._handle(r) for r in records]
    for r, h in zip(records, handles, strict=True):
        check_handle(r, h, f"key store {h.uri}")  # a cached handle too, before it signs
    envelope = sign_envelope(payload_type, payload, handles, ids)
    try:
        # Before anything is stored or returned (decision 0016): catches a store that
        # signs with another key than it reports, and faulty signatures.
        verify_own_signatures(envelope, records, handles)
    except KeyIdentityError:
        with m._ks_lock:
            for r in records:
                m._handles.pop(r.key_store_uri or "", None)
        raise
    digest = envelope.digest()
    stamps = request_timestamps(m, envelope, timestamp_url) if timestamp_url else []
    with m.store.transaction() as tx:
        tx.put_proof(ProofRecord(digest, envelope.to_json(), now))
        if within is not None:
            within(tx, digest)
        for key_id in ids:
            m._audit(
                tx,
                EventType.PROOF_SIGNED,
                key_id=key_id,
                details={"proof": digest, "payloadType": payload_type},
            )
        store_timestamps(m, tx, digest, stamps)
    return digest


def check_verifiable(payload: bytes, payload_type: str) -> None:
    """Refuse (UnverifiablePayloadError) to sign what verification would always refuse.

    Verification parses an in-toto payloadType's payload strictly as a Statement and refuses
    a Statement under any other payloadType (docs/verification.md). Signing either would
    spend a key on a proof that can never verify here, and a peer with a laxer parser (one
    that keeps the last of two duplicate members, say) might accept it and read something
    else than we would: the signer is where the mistake is cheapest to catch.
    """
    if is_intoto_payload_type(payload_type):
        try:
            statement_facts(payload)
        except MalformedEnvelopeError as exc:
            # A payload that claims a Statement _type can only be fixed, not retyped: any
            # other payloadType is refused below.
            fix = (
                "fix the statement"
                if looks_like_statement(payload)
                else "fix the statement, or sign the payload under the payloadType it really"
                " has (e.g. application/octet-stream)"
            )
            raise UnverifiablePayloadError(
                f"refusing to sign: payloadType {payload_type} needs an in-toto Statement,"
                f" and the payload is not one ({exc}); {fix}"
            ) from None
    elif looks_like_statement(payload):
        raise UnverifiablePayloadError(
            f"refusing to sign: the payload is an in-toto Statement, which verification"
            f" refuses under payloadType {payload_type!r}; sign it as {INTOTO_PAYLOAD_TYPE}"
        )


def timestamp_proof(
    m: ManagerCore,
    digest: str,
    *,
    tsa_url: str | None = None,
    tokens: Sequence[bytes] = (),
    verifier: TimestampVerifier | None = None,
) -> list[AddedTimestamp]:
    """The body of :meth:`KeyManager.timestamp_proof` (documented there)."""
    from stellakeys.errors import TimestampError
    from stellakeys.timestamp import AddedTimestamp, parse_token

    if not tsa_url and not tokens:
        raise TimestampError("nothing to add: give a TSA URL or a token")
    envelope = m.get_proof(digest)
    verifier = verifier or m._tsa_verifier()
    added: list[AddedTimestamp] = []
    for der in tokens:
        token = parse_token(der)
        covered = [i for i, s in enumerate(envelope.signatures) if token.covers(s.sig)]
        if not covered:
            raise TimestampError(
                f"the token ({token.describe()}) covers none of the signatures of {digest}"
            )
        if verifier is not None:
            checked = verifier.verify(token, envelope.signatures[covered[0]].sig)
            if not checked.ok:
                raise TimestampError(f"the token does not verify: {checked.failure}")
        keyid = envelope.signatures[covered[0]].keyid
        added.append(AddedTimestamp(covered[0], keyid, token, verifier is not None))
    if tsa_url:
        added.extend(request_timestamps(m, envelope, tsa_url, verifier))
    with m.store.transaction() as tx:
        store_timestamps(m, tx, digest, added)
    return added


def request_timestamps(
    m: ManagerCore, envelope: Envelope, url: str, verifier: TimestampVerifier | None = None
) -> list[AddedTimestamp]:
    """One token per signature from the TSA at ``url`` (network; outside transactions)."""
    from stellakeys.timestamp import AddedTimestamp, request_timestamp

    config = m.timestamping()
    verifier = verifier or m._tsa_verifier()
    out: list[AddedTimestamp] = []
    for index, signature in enumerate(envelope.signatures):
        token = request_timestamp(
            url,
            signature.sig,
            hash_algorithm=config.hash_algorithm,
            timeout=config.timeout,
            verifier=verifier,
        )
        out.append(AddedTimestamp(index, signature.keyid, token, verifier is not None, tsa_url=url))
    return out


def store_timestamps(
    m: ManagerCore, tx: Transaction, digest: str, added: Sequence[AddedTimestamp]
) -> None:
    for stamp in added:
        tx.add_proof_timestamp(digest, stamp.token.der)
        m._audit(
            tx,
            EventType.PROOF_TIMESTAMPED,
            key_id=stamp.keyid,
            details={"proof": digest, **stamp.to_dict()},
        )
