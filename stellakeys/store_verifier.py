"""Verifying against a store, read-only: the one composition ``KeyManager.verify`` and
``stellaops verify`` share.

A :class:`StoreVerifier` is a :class:`~stellakeys.verifier.Verifier` over the store's anchors
and keys (:class:`~stellakeys.store_source.StoreSource`) plus the reads that go with a proof:
the stored envelope for a ``sha256:`` address and the RFC 3161 tokens stored with it. It
needs no key store, no ceremony code and no clock (``now`` is an argument), so a process that
only verifies imports and opens only this (issue 20: ``stellaops verify`` starts in a blink).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from stellakeys.dsse import Envelope
from stellakeys.errors import NotFoundError
from stellakeys.store_source import StoreSource
from stellakeys.verification import SigningTime, VerificationPolicy, VerificationResult
from stellakeys.verifier import Verifier

if TYPE_CHECKING:
    from stellakeys.config import Settings
    from stellakeys.storage.ports import ProofRecord, Store
    from stellakeys.timestamp import TimestampVerifier

__all__ = ["ReadsOneProof", "ReadsProofAndToken", "StoreVerifier"]

_DEFAULT_POLICY = VerificationPolicy()
_NO_PIN: AbstractContextManager[object] = nullcontext()


@runtime_checkable
class ReadsOneProof(Protocol):
    """Optional capability of a store that reads one stored proof (with its tokens) in one
    statement of its own, no explicit transaction (:meth:`SqliteStore.read_proof
    <stellakeys.storage.sqlite.SqliteStore.read_proof>`, decision 0028). The store still
    checks that the stored bytes hash to ``digest``."""

    def read_proof(self, digest: str) -> ProofRecord | None: ...


@runtime_checkable
class ReadsProofAndToken(Protocol):
    """Optional capability of a store whose change token is a round trip
    (:meth:`PostgresStore.read_proof_and_token
    <stellakeys.storage.postgres.PostgresStore.read_proof_and_token>`): a stored proof and the
    change token in one read, the token read after the call started (None: read it as usual)."""

    def read_proof_and_token(self, digest: str) -> tuple[ProofRecord | None, object | None]: ...


class StoreVerifier:
    """Verifies proofs (envelopes, their JSON, or stored ``sha256:`` addresses) against a store.

    ``timestamp_verifier`` checks RFC 3161 tokens; when None, ``timestamp_verifier_factory``
    (e.g. from the settings' ``timestamping.tsaRoots``) builds one the first time a token
    must be checked, so verifications without tokens never read TSA roots.
    """

    def __init__(
        self,
        store: Store,
        *,
        timestamp_verifier: TimestampVerifier | None = None,
        timestamp_verifier_factory: Callable[[], TimestampVerifier | None] | None = None,
        on_verify: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        #: The store's anchors and keys, cached until the store's change token moves.
        self.source = StoreSource(store)
        #: The verifier over them (docs/verification.md).
        self.verifier = Verifier(self.source, self.source, on_verify=on_verify)
        self._tsa = timestamp_verifier
        self._tsa_factory = timestamp_verifier_factory
        # A store may read one proof without an explicit transaction (one statement, its own
        # snapshot); any other store reads it in a read transaction.
        self._read_proof: Callable[[str], ProofRecord | None] = (
            store.read_proof
            if isinstance(store, ReadsOneProof)
            else self._read_proof_in_transaction
        )
        # PostgreSQL, strict: a proof verified by address brings the verification's change
        # token with it, in the same statement (decision 0030).
        self._read_pinned: Callable[[str], tuple[ProofRecord | None, object | None]] | None = (
            store.read_proof_and_token if isinstance(store, ReadsProofAndToken) else None
        )

    @classmethod
    def open(
        cls, settings: Settings, *, timestamp_verifier: TimestampVerifier | None = None
    ) -> StoreVerifier:
        """Open the settings' store for verification (TSA roots from ``timestamping``)."""
        from stellakeys.storage import open_store

        def from_settings() -> TimestampVerifier | None:
            from stellakeys.timestamp import TimestampingConfig

            return TimestampingConfig.from_document(settings.document, settings.home).verifier()

        return cls(
            open_store(settings),
            timestamp_verifier=timestamp_verifier,
            timestamp_verifier_factory=from_settings,
        )

    def one_token(self) -> AbstractContextManager[object]:
        """``with verifying.one_token(): ...``: every verification on this thread inside the
        block uses one change token of the store, read now, instead of reading its own. For a
        report over many proofs (``anchor status``): the block is judged as of this read, and a
        commit that finishes after it is seen by the next block, not by this one."""
        return self.source.pinned(self.store.change_token())

    def timestamp_verifier(self) -> TimestampVerifier | None:
        """The RFC 3161 verifier: the given one, else built once by the factory."""
        if self._tsa is None and self._tsa_factory is not None:
            self._tsa = self._tsa_factory()
            self._tsa_factory = None
        return self._tsa

    def close(self) -> None:
        self.store.close()

    # --- stored proofs ---------------------------------------------------------------------

    def _read_proof_in_transaction(self, digest: str) -> ProofRecord | None:
        with self.store.read() as tx:
            return tx.get_proof(digest)

    def proof_record(self, digest: str) -> ProofRecord:
        """The stored proof at ``digest`` (NotFoundError if there is none). The store checks
        that the stored bytes hash to ``digest`` (ProofIntegrityError otherwise)."""
        return _found(self._read_proof(digest), digest)

    def proof_timestamps(self, digest: str) -> tuple[bytes, ...]:
        """The DER tokens stored with a proof; empty when the proof is not stored."""
        proof = self._read_proof(digest)
        return proof.timestamp_tokens if proof is not None else ()

    def proof_with_tokens(
        self, proof: Envelope | str | bytes, extra: Sequence[bytes] = ()
    ) -> tuple[Envelope, str | None, tuple[bytes, ...]]:
        """The envelope of ``proof``, its ``sha256:`` address when given by it, and the RFC
        3161 tokens that go with it: those stored with the proof, then ``extra``.

        A proof given by address brings its stored tokens in the same read. An envelope given
        as such is not looked up: that would cost the hot path a read per proof; callers that
        want its stored tokens use :meth:`stored_tokens_for`.
        """
        if isinstance(proof, str) and proof.startswith("sha256:"):
            return _with_tokens(self.proof_record(proof), proof, extra)
        return self.envelope_of(proof), None, tuple(extra)

    def stored_tokens_for(
        self, proof: Envelope | str | bytes, extra: Sequence[bytes] = ()
    ) -> tuple[Envelope | str, tuple[bytes, ...]]:
        """The one place that merges stored timestamp tokens for a proof (``stellaops verify``
        and batch workers): a proof given by address keeps its address (``verify`` reads its
        tokens with it); an envelope gets the tokens stored under its digest, then ``extra``."""
        if isinstance(proof, str) and proof.startswith("sha256:"):
            return proof, tuple(extra)
        envelope = self.envelope_of(proof)
        return envelope, (*self.proof_timestamps(envelope.digest()), *extra)

    def envelope_of(self, proof: Envelope | str | bytes) -> Envelope:
        if isinstance(proof, Envelope):
            return proof
        if isinstance(proof, str) and proof.startswith("sha256:"):
            return Envelope.from_json(self.proof_record(proof).envelope_json)
        return Envelope.from_json(proof)

    # --- verification ----------------------------------------------------------------------

    def verify(
        self,
        proof: Envelope | str | bytes,
        *,
        now: datetime,
        purl: str | None = None,
        at: datetime | None = None,
        trusted_time: SigningTime | None = None,
        policy: VerificationPolicy | None = None,
        timestamps: Sequence[bytes] = (),
        timestamp_verifier: TimestampVerifier | None = None,
    ) -> VerificationResult:
        """:meth:`KeyManager.verify <stellakeys.manager.KeyManager.verify>` without a clock:
        the same arguments, ``now`` given."""
        token: object | None = None
        digest: str | None
        if (
            self._read_pinned is not None
            and isinstance(proof, str)
            and proof.startswith("sha256:")
            and not self.source.pinned_here()  # inside one_token(): its token, not the proof's
        ):
            # Read after this verification started, in one snapshot with the proof: a change
            # token as strict as change_token() (decision 0030), so the lookups read none.
            record, token = self._read_pinned(proof)
            envelope, digest, tokens = _with_tokens(_found(record, proof), proof, timestamps)
        else:
            envelope, digest, tokens = self.proof_with_tokens(proof, timestamps)
        if tokens and timestamp_verifier is None:
            timestamp_verifier = self.timestamp_verifier()
        with _NO_PIN if token is None else self.source.pinned(token):
            return self.verifier.verify(
                envelope,
                purl=purl,
                at=at,
                now=now,
                policy=policy or _DEFAULT_POLICY,
                tokens=tokens,
                trusted_time=trusted_time,
                digest=digest,
                timestamp_verifier=timestamp_verifier if tokens else None,
            )


def _found(record: ProofRecord | None, digest: str) -> ProofRecord:
    if record is None:
        raise NotFoundError(f"no proof {digest}")
    return record


def _with_tokens(
    record: ProofRecord, digest: str, extra: Sequence[bytes]
) -> tuple[Envelope, str, tuple[bytes, ...]]:
    """A stored proof as ``proof_with_tokens`` gives it: its envelope, its address, and its
    stored tokens followed by ``extra``."""
    return Envelope.from_json(record.envelope_json), digest, (*record.timestamp_tokens, *extra)
