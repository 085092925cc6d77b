"""The key-material feed: the runbook's ``stellaops feed publish [--include-keys] [--urgent]``.

A feed is a DSSE envelope (payloadType :data:`PAYLOAD_TYPE`) over a JSON document holding the
trust anchors with their full key history -- validity windows, revocations with reasons, and,
with ``--include-keys``, every key's PEM -- plus a version, an issue and an expiry time, and
the *feed keys* that sign it. With keys included, a verifier needs nothing else:
:func:`verifier_from_feed` builds a :class:`~stellakeys.verifier.Verifier` from the document
alone (no store) and verification runs exactly as against the publisher's store
(``stellaops verify --feed FILE``).

Versions form a chain, like TUF root metadata:

* version N+1 names the digest of version N's payload (``previous``) and must be signed by a
  threshold of N's feed keys *and* a threshold of its own -- so the feed keys can rotate, but
  only with the consent of the old ones;
* a consumer keeps the last feed it trusts (:class:`FeedConsumer`, a state directory) and
  refuses a rollback (a lower version), a skipped version (N+2 after N: fetch N+1 first), a
  different document under a version it already has (equivocation), and an expired feed.

The first feed a consumer trusts is pinned explicitly (``stellaops feed trust``), as TUF
clients ship an initial root: a feed's own signatures only show that its keys agree with
themselves. docs/feed.md is the user guide; decision 0009 explains the choices.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from stellakeys.dsse import Envelope
from stellakeys.errors import (
    ConfigError,
    ConflictError,
    StellaKeysError,
)
from stellakeys.feed_document import (  # re-exported: moved in issue 16
    _STORED_MARKER,
    DEFAULT_EXPIRES_IN,
    DEFAULT_URGENT_EXPIRES_IN,
    FEED_TYPE,
    PAYLOAD_TYPE,
    DuplicateFeedMemberError,
    FeedConfig,
    FeedDocument,
    FeedError,
    FeedKey,
    ParsedFeed,
    check_self_signed,
    check_successor,
    parse_feed,
    walk_chain,
)
from stellakeys.keys import KeyOrigin, KeyRecord

if TYPE_CHECKING:
    from stellakeys.clock import Clock
    from stellakeys.manager import KeyManager
    from stellakeys.storage.ports import FeedVersionRecord, Transaction
    from stellakeys.timestamp import TimestampVerifier
    from stellakeys.verifier import Verifier


__all__ = [
    "DEFAULT_EXPIRES_IN",
    "DEFAULT_URGENT_EXPIRES_IN",
    "FEED_TYPE",
    "PAYLOAD_TYPE",
    "DuplicateFeedMemberError",
    "FeedConfig",
    "FeedConflictError",
    "FeedConsumer",
    "FeedDocument",
    "FeedError",
    "FeedKey",
    "FeedManagerSpec",
    "FeedVerifierSpec",
    "ParsedFeed",
    "PublishedFeed",
    "build_document",
    "check_self_signed",
    "check_successor",
    "latest_published",
    "manager_from_feed",
    "parse_feed",
    "publish_feed",
    "verifier_from_feed",
    "walk_chain",
]


class FeedConsumer:
    """The feed a consumer trusts, kept in a directory (``--feed-state DIR``).

    ``trusted.json`` holds the envelope of the newest trusted version; every applied version
    is kept beside it as ``feed-<version>.json`` for the record. Files are written atomically,
    so a crash leaves the old state or the new one.
    """

    TRUSTED = "trusted.json"

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def trusted(self) -> ParsedFeed | None:
        path = self.directory / self.TRUSTED
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        return parse_feed(data)

    def _save(self, feed: ParsedFeed) -> None:
        from stellakeys._fileio import write_atomic

        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        body = feed.envelope.to_json() + b"\n"
        write_atomic(self.directory / f"feed-{feed.document.version}.json", body, mode=0o644)
        write_atomic(self.directory / self.TRUSTED, body, mode=0o644)

    def pin(self, data: bytes | str | Envelope, now: datetime) -> ParsedFeed:
        """Trust a first feed (the operator has checked its feed keys out of band)."""
        feed = parse_feed(data)
        existing = self.trusted()
        if existing is not None:
            if existing.digest == feed.digest:
                return existing
            raise FeedError(
                f"{self.directory} already trusts feed version {existing.document.version};"
                " use update, or a new state directory"
            )
        check_self_signed(feed)
        if feed.document.is_expired(now):
            raise FeedError(f"feed version {feed.document.version} has expired")
        self._save(feed)
        return feed

    def update(self, feeds: Iterable[bytes | str | Envelope], now: datetime) -> ParsedFeed:
        """Apply newer versions under the chain rules; returns the newest trusted feed. The
        state changes only if every given feed is acceptable."""
        trusted = self.trusted()
        if trusted is None:
            raise FeedError(
                f"no trusted feed in {self.directory}: pin the first one with"
                " 'stellaops feed trust' after checking its feed keys"
            )
        parsed = [parse_feed(f) for f in feeds]
        newest = walk_chain(trusted, parsed, now)
        for feed in sorted(parsed, key=lambda f: f.document.version):
            if feed.document.version > trusted.document.version:
                self._save(feed)
        return newest


# --- publishing --------------------------------------------------------------------------------


@attrs.frozen
class PublishedFeed:
    feed: ParsedFeed
    #: the address of the envelope in the publisher's proof store
    proof: str

    @property
    def document(self) -> FeedDocument:
        return self.feed.document


class FeedConflictError(FeedError, ConflictError):
    """Another publisher recorded the feed version this publication was building (two
    ``feed publish`` at once): nothing was stored; publishing again builds the next version
    on top of the other one."""


def latest_published(manager: KeyManager) -> ParsedFeed | None:
    """The tip of this store's feed chain.

    Published versions are recorded in the store (one document per version, the store's
    unique constraint: decision 0017), and the chain is followed through those records under
    the consumers' rules, so a record pointing at a proof that does not chain is an error, not
    a new tip. A store whose feeds predate the records is followed through its proofs from
    version 1, so an envelope that merely claims the feed payload type (anyone may sign one
    into the store with ``stellaops sign``) cannot become the version the next publication
    follows.
    """
    chain, _ = _published_chain(manager)
    return chain[-1] if chain else None


def _published_chain(manager: KeyManager) -> tuple[list[ParsedFeed], bool]:
    """The store's feed chain, version 1 first, and whether it comes from the feed-version
    records (False: none yet, the chain was found among the proofs)."""
    with manager.store.read() as tx:
        recorded = tx.feed_versions()
        if recorded:
            return _recorded_chain(tx, recorded), True
        return _chain_in_proofs(tx), False


def _recorded_chain(tx: Transaction, recorded: Sequence[FeedVersionRecord]) -> list[ParsedFeed]:
    chain: list[ParsedFeed] = []
    for record in recorded:
        proof = tx.get_proof(record.digest)
        feed: ParsedFeed | None = None
        if proof is not None:
            try:
                feed = parse_feed(proof.envelope_json)
            except FeedError:
                feed = None
        # What the store returns is evidence: the proof must be the one its address names,
        # hold the recorded version, and chain onto the previous one.
        if (
            feed is None
            or feed.envelope.digest() != record.digest
            or feed.document.version != record.version
            or not _chains(chain[-1] if chain else None, feed)
        ):
            raise FeedError(
                f"the store records feed version {record.version} as {record.digest}, which is"
                " missing or does not follow the version before it: the feed records or proofs"
                " were changed; investigate before publishing"
            )
        chain.append(feed)
    return chain


def _chain_in_proofs(tx: Transaction) -> list[ParsedFeed]:
    by_version: dict[int, list[ParsedFeed]] = {}
    for record in tx.iter_proofs():
        if _STORED_MARKER not in record.envelope_json:
            continue
        try:
            feed = parse_feed(record.envelope_json)
        except FeedError:
            continue
        by_version.setdefault(feed.document.version, []).append(feed)
    chain: list[ParsedFeed] = []
    version = 1
    while by_version.get(version):
        follows = [f for f in by_version[version] if _chains(chain[-1] if chain else None, f)]
        if not follows:
            break
        chain.append(follows[0])
        version += 1
    return chain


def _chains(previous: ParsedFeed | None, feed: ParsedFeed) -> bool:
    try:
        if previous is None:
            check_self_signed(feed)
            return True
        return check_successor(previous, feed)
    except FeedError:
        return False


def build_document(
    manager: KeyManager,
    config: FeedConfig,
    *,
    include_keys: bool,
    urgent: bool,
    previous: ParsedFeed | None,
    now: datetime,
) -> FeedDocument:
    feed_keys = []
    for key_id in config.key_ids:
        record = manager.get_key(key_id)
        feed_keys.append(
            FeedKey(record.key_id, record.algorithm, record.public_key_pem, record.fingerprint)
        )
    return FeedDocument(
        version=previous.document.version + 1 if previous else 1,
        issued_at=now,
        expires_at=now + (config.urgent_expires_in if urgent else config.expires_in),
        urgent=urgent,
        includes_keys=include_keys,
        feed_keys=tuple(feed_keys),
        threshold=config.threshold,
        previous=previous.digest if previous else None,
        anchors=tuple(manager.list_anchors()),
    )


def _can_sign(manager: KeyManager, key_id: str, now: datetime) -> bool:
    try:
        record = manager.get_key(key_id)
    except StellaKeysError:
        return False
    history = manager.check_validity(key_id, now).anchors
    entries = [a.entry for a in history]
    if record.key_store_uri is None or any(e.compromised for e in entries):
        return False
    return not (entries and all(e.is_revoked_at(now) for e in entries))


def _distinct(keys: Sequence[FeedKey], signers: set[str]) -> int:
    return len({k.fingerprint for k in keys if k.key_id in signers})


def publish_feed(
    manager: KeyManager,
    config: FeedConfig | None = None,
    *,
    include_keys: bool = False,
    urgent: bool = False,
) -> PublishedFeed:
    """Sign and store the next feed version.

    It is signed by every key that can sign among this version's feed keys and the previous
    version's, and only after checking that those reach both thresholds -- otherwise
    FeedError, and nothing is stored (a stored version would become the one the next
    publication follows).
    """
    if config is None:
        if manager.settings is None:
            raise ConfigError("no feed configuration: pass a FeedConfig")
        config = FeedConfig.from_settings(manager.settings)
    now = manager.clock.now()
    chain, recorded = _published_chain(manager)
    previous = chain[-1] if chain else None
    document = build_document(
        manager, config, include_keys=include_keys, urgent=urgent, previous=previous, now=now
    )
    wanted = list(dict.fromkeys([*(k.key_id for k in document.feed_keys)]))
    if previous is not None:
        wanted = list(dict.fromkeys([*(k.key_id for k in previous.document.feed_keys), *wanted]))
    signers = [k for k in wanted if _can_sign(manager, k, now)]
    have = set(signers)
    if _distinct(document.feed_keys, have) < document.threshold:
        raise FeedError(
            f"only {_distinct(document.feed_keys, have)} of the feed keys can sign;"
            f" threshold {document.threshold}"
        )
    if previous is not None and (
        _distinct(previous.document.feed_keys, have) < previous.document.threshold
    ):
        raise FeedError(
            f"only {_distinct(previous.document.feed_keys, have)} feed keys of version"
            f" {previous.document.version} can sign; its threshold is"
            f" {previous.document.threshold}, and consumers will require it"
        )
    digest = manager.sign(
        document.to_json(),
        signers,
        PAYLOAD_TYPE,
        within=lambda tx, d: _record_version(tx, d, chain, recorded, document.version, now),
    )
    feed = parse_feed(manager.get_proof(digest))
    # Our own rules, applied as a consumer would, before anyone downloads it.
    if previous is not None:
        check_successor(previous, feed)
    else:
        check_self_signed(feed)
    return PublishedFeed(feed, digest)


def _record_version(
    tx: Transaction,
    digest: str,
    chain: Sequence[ParsedFeed],
    recorded: bool,
    version: int,
    now: datetime,
) -> None:
    """Claim ``version`` for the proof just stored, in the transaction that stores it: the
    store lets one publisher have each version, so of concurrent publishers one succeeds and
    the others fail here, before anything of theirs is kept."""
    from stellakeys.storage.ports import FeedVersionRecord

    if not recorded:
        # The first publication since the store got feed-version records: record the chain
        # found among the proofs first -- unless another publisher has just done so.
        if tx.feed_versions():
            raise _conflict(version, tx)
        for feed in chain:
            tx.insert_feed_version(
                FeedVersionRecord(feed.document.version, feed.envelope.digest(), now)
            )
    try:
        tx.insert_feed_version(FeedVersionRecord(version, digest, now))
    except ConflictError:
        raise _conflict(version, tx) from None


def _conflict(version: int, tx: Transaction) -> FeedConflictError:
    latest = tx.feed_versions()
    tip = ""
    if latest:
        tip = f" (the latest is now version {latest[-1].version}, {latest[-1].digest})"
    return FeedConflictError(
        f"feed version {version} was published by another publisher while this one was"
        f" being signed{tip}: nothing was stored; run feed publish again to publish the next"
        " version on top of it"
    )


# --- verifying from a feed ---------------------------------------------------------------------


def _require_keys(document: FeedDocument) -> None:
    if not document.includes_keys:
        raise FeedError(
            f"feed version {document.version} was published without --include-keys: it holds"
            " fingerprints and revocations, not the public keys needed to verify"
        )


def _feed_keys(document: FeedDocument) -> list[KeyRecord]:
    """One KeyRecord per key id of the feed's anchors; a key id with two public keys is a
    malformed feed (whoever made it wants one name to mean two keys)."""
    keys: dict[str, KeyRecord] = {}
    for anchor in document.anchors:
        for e in anchor.key_history:
            known = keys.get(e.key_id)
            if known is not None and known.fingerprint != e.fingerprint:
                raise FeedError(f"feed: key {e.key_id} has two different public keys")
            if known is None or e.added_at < known.created_at:
                keys[e.key_id] = KeyRecord(
                    key_id=e.key_id,
                    algorithm=e.algorithm,
                    public_key_pem=e.public_key_pem,
                    fingerprint=e.fingerprint,
                    created_at=e.added_at,
                    origin=KeyOrigin.IMPORTED,
                    metadata={"source": f"feed v{document.version}"},
                )
    return list(keys.values())


def verifier_from_feed(
    document: FeedDocument, *, timestamp_verifier: TimestampVerifier | None = None
) -> Verifier:
    """A :class:`~stellakeys.verifier.Verifier` over exactly the feed's anchors and keys: it
    verifies as the publisher's store would, offline, with no store and no KeyManager. Needs
    a feed made with --include-keys. The caller checked the feed (chain, expiry)."""
    from stellakeys.verifier import Verifier

    _require_keys(document)
    return Verifier.from_objects(
        document.anchors, _feed_keys(document), timestamp_verifier=timestamp_verifier
    )


def manager_from_feed(document: FeedDocument, *, clock: Clock | None = None) -> KeyManager:
    """Deprecated: use :func:`verifier_from_feed` (no store needed). A KeyManager on an
    in-memory store holding exactly the feed's anchors and keys."""
    from stellakeys.manager import KeyManager
    from stellakeys.purl import PurlPattern
    from stellakeys.storage.memory import MemoryStore

    _require_keys(document)
    keys = _feed_keys(document)
    store = MemoryStore()
    with store.transaction() as tx:
        for record in keys:
            tx.insert_key(record)
        for anchor in document.anchors:
            tx.insert_anchor(anchor, PurlPattern.parse(anchor.purl_pattern).index_key)
    return KeyManager(store, clock=clock, actor=f"feed-v{document.version}")


def _tsa_verifier(roots: Sequence[str]) -> TimestampVerifier | None:
    if not roots:
        return None
    from stellakeys.timestamp import RFC3161Verifier

    return RFC3161Verifier.from_pem_files(list(roots))


@attrs.frozen
class FeedVerifierSpec:
    """A picklable recipe for :func:`verifier_from_feed` (batch verification workers). The
    feed was checked by the caller; workers only rebuild the verifier from it."""

    envelope_json: bytes
    #: PEM files of TSA roots to trust for timestamp tokens (``--tsa-root``).
    tsa_roots: tuple[str, ...] = ()

    def __call__(self) -> Verifier:
        document = parse_feed(self.envelope_json).document
        return verifier_from_feed(document, timestamp_verifier=_tsa_verifier(self.tsa_roots))


@attrs.frozen
class FeedManagerSpec:
    """Deprecated: use :class:`FeedVerifierSpec`. A picklable recipe for
    :func:`manager_from_feed`."""

    envelope_json: bytes
    #: PEM files of TSA roots to trust for stored-less timestamp tokens (``--tsa-root``).
    tsa_roots: tuple[str, ...] = ()

    def __call__(self) -> KeyManager:
        from stellakeys.manager import KeyManager

        seed = manager_from_feed(parse_feed(self.envelope_json).document)
        return KeyManager(
            seed.store, actor=seed.actor, timestamp_verifier=_tsa_verifier(self.tsa_roots)
        )
