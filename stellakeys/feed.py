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

import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from stellakeys import strict_json
from stellakeys.anchors import KeyHistoryEntry, TrustAnchor
from stellakeys.dsse import Envelope, verify_envelope
from stellakeys.errors import (
    ConfigError,
    ConflictError,
    DuplicateMemberError,
    MalformedTimeError,
    StellaKeysError,
)
from stellakeys.keys import KeyOrigin, KeyRecord, public_key_of_pem
from stellakeys.revocation import legacy_reason
from stellakeys.times import format_time, parse_duration, parse_time

if TYPE_CHECKING:
    from stellakeys.clock import Clock
    from stellakeys.config import Settings
    from stellakeys.manager import KeyManager
    from stellakeys.storage.ports import FeedVersionRecord, Transaction
    from stellakeys.timestamp import TimestampVerifier
    from stellakeys.verifier import Verifier

__all__ = [
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

PAYLOAD_TYPE = "application/vnd.stellakeys.feed+json"
FEED_TYPE = "https://stellakeys.dev/feed/v1"
DEFAULT_EXPIRES_IN = timedelta(days=30)
#: An urgent feed follows an incident: consumers must come back soon, while the situation is
#: still moving, and a replay of it (a freeze attack) works for a week at most.
DEFAULT_URGENT_EXPIRES_IN = timedelta(days=7)

# The canonical JSON of an envelope starts its payloadType this way (sorted keys, no spaces):
# lets the publisher find its earlier feeds among stored proofs without parsing every one.
_STORED_MARKER = b'"payloadType":"' + PAYLOAD_TYPE.encode() + b'"'


class FeedError(StellaKeysError):
    """A feed that is malformed, badly signed, expired, or out of order for this consumer."""


class DuplicateFeedMemberError(DuplicateMemberError, FeedError):
    """A feed document that names a JSON member twice (docs/decisions/0014)."""


# --- configuration -----------------------------------------------------------------------------


@attrs.frozen
class FeedConfig:
    """The ``feed:`` section of the configuration.

    .. code-block:: yaml

        feed:
          keyIds: [feed-key-1, feed-key-2, feed-key-3]   # keys that sign the feed
          threshold: 2                                   # of them, for every version
          expiresIn: 30d                                 # validity of a normal feed
          urgentExpiresIn: 7d                            # validity of a --urgent feed
    """

    key_ids: tuple[str, ...]
    threshold: int = 1
    expires_in: timedelta = DEFAULT_EXPIRES_IN
    urgent_expires_in: timedelta = DEFAULT_URGENT_EXPIRES_IN

    def __attrs_post_init__(self) -> None:
        if not self.key_ids:
            raise ConfigError("feed.keyIds: at least one feed key is required")
        if len(set(self.key_ids)) != len(self.key_ids):
            raise ConfigError("feed.keyIds: duplicate key id")
        if not 1 <= self.threshold <= len(self.key_ids):
            raise ConfigError(
                f"feed.threshold must be between 1 and the number of keyIds ({len(self.key_ids)})"
            )
        if self.expires_in <= timedelta(0) or self.urgent_expires_in <= timedelta(0):
            raise ConfigError("feed.expiresIn and feed.urgentExpiresIn must be positive")

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> FeedConfig:
        section = document.get("feed")
        if section is None:
            raise ConfigError(
                "no 'feed' section in the configuration: add feed.keyIds (and threshold) to"
                " signer.yaml (see docs/feed.md)"
            )
        if not isinstance(section, Mapping):
            raise ConfigError("feed: must be a mapping")
        key_ids = section.get("keyIds")
        if not isinstance(key_ids, list) or not all(isinstance(k, str) for k in key_ids):
            raise ConfigError("feed.keyIds: must be a list of key ids")
        threshold = section.get("threshold", 1)
        if not isinstance(threshold, int) or isinstance(threshold, bool):
            raise ConfigError("feed.threshold: must be an integer")
        try:
            expires = parse_duration(str(section.get("expiresIn", "30d")))
            urgent = parse_duration(str(section.get("urgentExpiresIn", "7d")))
        except MalformedTimeError as exc:
            raise ConfigError(f"feed: {exc}") from None
        return cls(tuple(key_ids), threshold, expires, urgent)

    @classmethod
    def from_settings(cls, settings: Settings) -> FeedConfig:
        return cls.from_document(settings.document)


# --- the document ------------------------------------------------------------------------------


@attrs.frozen
class FeedKey:
    key_id: str
    algorithm: str
    public_key_pem: str
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "keyid": self.key_id,
            "algorithm": self.algorithm,
            "fingerprint": self.fingerprint,
            "publicKey": self.public_key_pem,
        }


@attrs.frozen
class FeedDocument:
    version: int
    issued_at: datetime
    expires_at: datetime
    urgent: bool
    includes_keys: bool
    feed_keys: tuple[FeedKey, ...]
    threshold: int
    #: sha256 hex of the previous version's payload; None for version 1.
    previous: str | None
    anchors: tuple[TrustAnchor, ...]

    def is_expired(self, now: datetime) -> bool:
        return now >= self.expires_at

    def feed_public_keys(self) -> dict[str, Any]:
        return {k.key_id: public_key_of_pem(k.public_key_pem) for k in self.feed_keys}

    def revocations(self) -> list[dict[str, Any]]:
        return [
            {
                "anchorId": str(a.anchor_id),
                "keyid": e.key_id,
                "revokedAt": format_time(e.revoked_at),
                "reason": e.revoke_reason,
            }
            for a in self.anchors
            for e in a.key_history
            if e.revoked_at is not None
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "_type": FEED_TYPE,
            "version": self.version,
            "issuedAt": format_time(self.issued_at),
            "expiresAt": format_time(self.expires_at),
            "urgent": self.urgent,
            "includesKeys": self.includes_keys,
            "previous": self.previous,
            "feedKeys": {
                "threshold": self.threshold,
                "keys": [k.to_dict() for k in self.feed_keys],
            },
            "anchors": [_anchor_to_dict(a, self.includes_keys) for a in self.anchors],
            # Derived from the anchors' key history, for readers; checked on parse.
            "revocations": self.revocations(),
        }

    def to_json(self) -> bytes:
        return json.dumps(
            self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")


def _anchor_to_dict(anchor: TrustAnchor, include_keys: bool) -> dict[str, Any]:
    keys = []
    for e in anchor.key_history:
        entry: dict[str, Any] = {
            "keyid": e.key_id,
            "algorithm": e.algorithm,
            "fingerprint": e.fingerprint,
            "addedAt": format_time(e.added_at),
            "revokedAt": format_time(e.revoked_at) if e.revoked_at else None,
            "revokeReason": e.revoke_reason,
            "expiresAt": format_time(e.expires_at) if e.expires_at else None,
        }
        if include_keys:
            entry["publicKey"] = e.public_key_pem
        keys.append(entry)
    return {
        "trustAnchorId": str(anchor.anchor_id),
        "purlPattern": anchor.purl_pattern,
        "allowedPredicateTypes": list(anchor.allowed_predicate_types),
        "policyVersion": anchor.policy_version,
        "active": anchor.active,
        "createdAt": format_time(anchor.created_at),
        "keyHistory": keys,
    }


def _need(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FeedError(f"feed: {where}{key} is missing or has the wrong type")
    return value


def _time(value: Any, where: str) -> datetime:
    if not isinstance(value, str):
        raise FeedError(f"feed: {where} must be a time string")
    try:
        return parse_time(value)
    except MalformedTimeError as exc:
        raise FeedError(f"feed: {where}: {exc}") from None


def _opt_time(value: Any, where: str) -> datetime | None:
    return None if value is None else _time(value, where)


def _fingerprint_checked(pem: str, fingerprint: str, where: str) -> str:
    try:
        actual = public_key_of_pem(pem).fingerprint
    except StellaKeysError as exc:
        raise FeedError(f"feed: {where}: {exc}") from None
    if actual != fingerprint:
        raise FeedError(f"feed: {where}: fingerprint {fingerprint} does not match its key")
    return pem


def _parse_document(payload: bytes) -> FeedDocument:
    try:
        obj = strict_json.loads(payload, document="feed", error=DuplicateFeedMemberError)
    except DuplicateMemberError:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise FeedError("feed: payload is not JSON") from None
    if not isinstance(obj, dict) or obj.get("_type") != FEED_TYPE:
        raise FeedError(f"feed: payload is not a {FEED_TYPE} document")
    version = _need(obj, "version", int, "")
    if version < 1:
        raise FeedError("feed: version must be >= 1")
    includes_keys = _need(obj, "includesKeys", bool, "")
    previous = obj.get("previous")
    if not (previous is None or isinstance(previous, str)) or (version > 1) != (
        previous is not None
    ):
        raise FeedError("feed: 'previous' must name the previous version's digest (none for v1)")
    fk = _need(obj, "feedKeys", dict, "")
    threshold = _need(fk, "threshold", int, "feedKeys.")
    feed_keys = []
    for i, raw in enumerate(_need(fk, "keys", list, "feedKeys.")):
        if not isinstance(raw, dict):
            raise FeedError(f"feed: feedKeys.keys[{i}] must be an object")
        where = f"feedKeys.keys[{i}]."
        fp = _need(raw, "fingerprint", str, where)
        pem = _fingerprint_checked(_need(raw, "publicKey", str, where), fp, where + "publicKey")
        feed_keys.append(
            FeedKey(_need(raw, "keyid", str, where), _need(raw, "algorithm", str, where), pem, fp)
        )
    if not feed_keys or not 1 <= threshold <= len(feed_keys):
        raise FeedError("feed: feedKeys needs keys and a threshold between 1 and their number")
    anchors = tuple(
        _parse_anchor(raw, i, includes_keys)
        for i, raw in enumerate(_need(obj, "anchors", list, ""))
    )
    doc = FeedDocument(
        version=version,
        issued_at=_time(obj.get("issuedAt"), "issuedAt"),
        expires_at=_time(obj.get("expiresAt"), "expiresAt"),
        urgent=_need(obj, "urgent", bool, ""),
        includes_keys=includes_keys,
        feed_keys=tuple(feed_keys),
        threshold=threshold,
        previous=previous,
        anchors=anchors,
    )
    if obj.get("revocations") != doc.revocations():
        raise FeedError("feed: 'revocations' disagrees with the anchors' key history")
    return doc


def _parse_anchor(raw: Any, i: int, includes_keys: bool) -> TrustAnchor:
    where = f"anchors[{i}]."
    if not isinstance(raw, dict):
        raise FeedError(f"feed: anchors[{i}] must be an object")
    try:
        anchor_id = uuid.UUID(_need(raw, "trustAnchorId", str, where))
    except ValueError:
        raise FeedError(f"feed: {where}trustAnchorId is not a UUID") from None
    types = _need(raw, "allowedPredicateTypes", list, where)
    if not all(isinstance(t, str) for t in types):
        raise FeedError(f"feed: {where}allowedPredicateTypes must be strings")
    entries = []
    for j, e in enumerate(_need(raw, "keyHistory", list, where)):
        ew = f"{where}keyHistory[{j}]."
        if not isinstance(e, dict):
            raise FeedError(f"feed: {ew[:-1]} must be an object")
        fp = _need(e, "fingerprint", str, ew)
        pem = ""
        if includes_keys:
            pem = _fingerprint_checked(_need(e, "publicKey", str, ew), fp, ew + "publicKey")
        reason = e.get("revokeReason")
        entries.append(
            KeyHistoryEntry(
                anchor_id=anchor_id,
                key_id=_need(e, "keyid", str, ew),
                algorithm=_need(e, "algorithm", str, ew),
                public_key_pem=pem,
                fingerprint=fp,
                added_at=_time(e.get("addedAt"), ew + "addedAt"),
                revoked_at=_opt_time(e.get("revokedAt"), ew + "revokedAt"),
                # Feeds from before the closed vocabulary carry free text: read it as the
                # store migration does (stellakeys.revocation.legacy_reason).
                revoke_reason=legacy_reason(reason).value if isinstance(reason, str) else None,
                expires_at=_opt_time(e.get("expiresAt"), ew + "expiresAt"),
                # Deterministic, so two parses of one feed are equal (a key joins an anchor
                # once, so (anchor, key) names the entry).
                entry_id=uuid.uuid5(anchor_id, _need(e, "keyid", str, ew)),
            )
        )
    return TrustAnchor(
        anchor_id=anchor_id,
        purl_pattern=_need(raw, "purlPattern", str, where),
        allowed_predicate_types=tuple(types),
        policy_version=_need(raw, "policyVersion", str, where),
        created_at=_time(raw.get("createdAt"), where + "createdAt"),
        key_history=tuple(entries),
        active=_need(raw, "active", bool, where),
    )


@attrs.frozen
class ParsedFeed:
    """A feed envelope with its document and digest, parsed but not yet trusted."""

    envelope: Envelope
    document: FeedDocument
    #: sha256 hex of the payload: what the next version names as ``previous``.
    digest: str


def parse_feed(data: bytes | str | Envelope) -> ParsedFeed:
    """Parse a feed envelope (JSON) strictly. Checks nothing about signatures or time."""
    try:
        envelope = data if isinstance(data, Envelope) else Envelope.from_json(data)
    except StellaKeysError as exc:
        raise FeedError(f"feed: not a DSSE envelope: {exc}") from None
    if envelope.payload_type != PAYLOAD_TYPE:
        raise FeedError(f"feed: payloadType is {envelope.payload_type!r}, not {PAYLOAD_TYPE}")
    return ParsedFeed(
        envelope, _parse_document(envelope.payload), hashlib.sha256(envelope.payload).hexdigest()
    )


# --- chain rules -------------------------------------------------------------------------------


def _signed_by_threshold(feed: ParsedFeed, keys_of: FeedDocument, what: str) -> None:
    outcome = verify_envelope(feed.envelope, keys_of.feed_public_keys(), keys_of.threshold)
    if not outcome.ok:
        raise FeedError(
            f"feed version {feed.document.version} is signed by {len(outcome.verified)} of"
            f" {what} ({keys_of.threshold} required)"
        )


def check_self_signed(feed: ParsedFeed) -> None:
    _signed_by_threshold(feed, feed.document, "its own feed keys")


def check_successor(trusted: ParsedFeed, new: ParsedFeed) -> bool:
    """Whether ``new`` may replace ``trusted`` (True), is the same feed (False), or neither
    (FeedError: rollback, skipped version, equivocation, broken link or signatures)."""
    old_v, new_v = trusted.document.version, new.document.version
    if new_v < old_v:
        raise FeedError(f"rollback refused: feed version {new_v} is older than trusted {old_v}")
    if new_v == old_v:
        if new.digest == trusted.digest:
            return False
        raise FeedError(
            f"feed version {new_v} differs from the version {old_v} already trusted"
            " (two documents under one version: refusing both)"
        )
    if new_v > old_v + 1:
        raise FeedError(
            f"feed version {new_v} skips version {old_v + 1}: apply the versions in between"
            f" first (trusted: {old_v})"
        )
    if new.document.previous != trusted.digest:
        raise FeedError(f"feed version {new_v} does not follow the trusted version {old_v}")
    _signed_by_threshold(new, trusted.document, f"the feed keys of version {old_v}")
    check_self_signed(new)
    return True


def walk_chain(
    trusted: ParsedFeed | None, feeds: Iterable[ParsedFeed], now: datetime
) -> ParsedFeed:
    """Apply ``feeds`` (any order) on top of ``trusted``; return the newest trusted feed.

    Without ``trusted`` the lowest version given starts the chain, checked only against its
    own keys (pin it with :class:`FeedConsumer` to do better). Versions not newer than the
    trusted one must be identical to what is trusted or are refused. Like TUF, only the final
    feed must be unexpired: intermediate versions may have expired since.
    """
    ordered = sorted(feeds, key=lambda f: f.document.version)
    current = trusted
    for feed in ordered:
        if current is None:
            check_self_signed(feed)
            current = feed
        elif check_successor(current, feed):
            current = feed
    if current is None:
        raise FeedError("no feed given")
    if current.document.is_expired(now):
        raise FeedError(
            f"feed version {current.document.version} expired at"
            f" {format_time(current.document.expires_at)}: fetch a newer feed"
        )
    return current


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
