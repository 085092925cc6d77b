"""The feed document: its model, strict parsing and the chain rules a consumer applies.

Pure (no I/O, no clock): :mod:`stellakeys.feed` publishes and consumes feeds on top of this
(moved out of ``feed.py`` in issue 16; every name is re-exported there).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs

import stellakeys.strict_json as strict_json
from stellakeys.anchors import KeyHistoryEntry, TrustAnchor
from stellakeys.dsse import Envelope, verify_envelope
from stellakeys.errors import (
    ConfigError,
    DuplicateMemberError,
    MalformedTimeError,
    StellaKeysError,
)
from stellakeys.keys import public_key_of_pem
from stellakeys.revocation import legacy_reason
from stellakeys.times import format_time, parse_duration, parse_time

if TYPE_CHECKING:
    from stellakeys.config import Settings

__all__ = [
    "DEFAULT_EXPIRES_IN",
    "DEFAULT_URGENT_EXPIRES_IN",
    "FEED_TYPE",
    "PAYLOAD_TYPE",
    "DuplicateFeedMemberError",
    "FeedConfig",
    "FeedDocument",
    "FeedError",
    "FeedKey",
    "ParsedFeed",
    "check_self_signed",
    "check_successor",
    "parse_feed",
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
