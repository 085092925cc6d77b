"""The Verifier's anchor and key sources over a store (the storage port).

Apart from :mod:`stellakeys.verifier` because verification (layer 4) must not depend on the
storage port (layer 5): the verifier knows only its ``AnchorSource`` / ``KeySource`` protocols,
and this adapter implements them with the store's PURL index.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Protocol, Self, runtime_checkable

import attrs

from stellakeys.anchor_keys import AnchorKeys
from stellakeys.anchors import KeyHistoryEntry, TrustAnchor
from stellakeys.keys import KeyRecord
from stellakeys.purl import Purl, lookup_keys_for, parse_purl
from stellakeys.verification import key_wide_compromises
from stellakeys.verifier import (
    _NO_COMPROMISE,
    AnchorLookup,
    Speculation,
    _by_fingerprint,
    _pattern,
    select_anchor,
)

if TYPE_CHECKING:
    from stellakeys.storage.ports import Store, Transaction

__all__ = ["PendingToken", "SendsChangeToken", "StoreSource"]


_UNREAD = object()
#: The cache token before the first read (equal to no token a store returns).
_NEVER = object()
#: _Speculation.pinned while speculating (lookups use the caches as they are) and after a
#: confirmation that brought no answer (lookups read the token synchronously).
_SPECULATING = object()
_READ_NOW = object()


class PendingToken(Protocol):
    """A change-token read sent ahead (decision 0027)."""

    def result(self) -> object | None:
        """Wait for the token (once); None: no answer to trust, read it synchronously."""
        ...

    def discard(self) -> None:
        """Collect and drop the answer if :meth:`result` was not called."""
        ...


@runtime_checkable
class SendsChangeToken(Protocol):
    """Optional capability of a store whose ``change_token()`` is a round trip
    (:meth:`PostgresStore.send_change_token
    <stellakeys.storage.postgres.PostgresStore.send_change_token>`): send the read now,
    collect the answer later. Its answer counts every commit that finished before the send."""

    def send_change_token(self) -> PendingToken | None: ...


class _Local(threading.local):
    #: The verification in progress on this thread that does not read its own change token:
    #: speculating (decision 0027), or pinned to a token read with the proof (decision 0030).
    speculation: _OnThread | None = None


class _OnThread:
    """The verification in progress on this thread that reads no change token of its own
    (:class:`_Pin` or :class:`_Speculation`): registered on entry, one at a time, cleared on
    exit (then :meth:`_end`)."""

    __slots__ = ("_local", "pinned")

    def __init__(self, local: _Local, pinned: object) -> None:
        self._local = local
        self.pinned = pinned

    def __enter__(self) -> Self:
        if self._local.speculation is not None:
            # One verification at a time per thread: a pin inside a speculation would answer
            # lookups the speculation never sees (and could not confirm).
            raise RuntimeError("a verification is already in progress on this thread")
        self._local.speculation = self
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._local.speculation = None
        self._end()

    def _end(self) -> None:
        pass


class _Pin(_OnThread):
    """A verification whose change token was read before it, in the same statement as the
    proof it verifies (:meth:`StoreSource.pinned`, decision 0030): every lookup uses that
    token and reads none, and nothing is sent ahead. Ends with the verification: the next one
    on the thread reads (or is given) its own."""

    __slots__ = ()


class _Speculation(_OnThread):
    """One verification on cached facts, confirmed by a token read sent when it started.

    While speculating, each lookup notes the token of the caches it answered from (``seen``)
    and reads none. :meth:`confirm` collects the token sent at the start: its snapshot was
    taken after the verification started, so it counts every commit before that start. If
    every cache answered under that very token, nothing was committed between the caches'
    token read and that snapshot, and what they hold is what a fresh read would give; the
    result stands. Otherwise the second pass answers under the collected token (which drops
    the stale caches), or with synchronous reads when there was no answer to trust."""

    __slots__ = ("_pending", "seen")

    def __init__(self, local: _Local, pending: PendingToken) -> None:
        super().__init__(local, _SPECULATING)
        self._pending = pending
        self.seen: list[object] = []

    def _end(self) -> None:
        self._pending.discard()

    def confirm(self) -> bool:
        token = self._pending.result()
        if token is not None and all(seen == token for seen in self.seen):
            return True
        self.pinned = _READ_NOW if token is None else token
        return False


@attrs.frozen
class _Compiled:
    """One active anchor as verification needs it, built once per change token."""

    anchor: TrustAnchor
    compromises: Mapping[str, datetime]
    keys: AnchorKeys
    #: What a lookup that selects this anchor returns (built once, not per new PURL).
    lookup: AnchorLookup = attrs.field(init=False)

    @lookup.default
    def _lookup(self) -> AnchorLookup:
        return AnchorLookup(self.anchor, compromises=self.compromises, keys=self.keys)


class StoreSource:
    """Anchors and keys from a store, remembered until the store's change token moves.

    Three caches, all dropped together when the token moves (a revocation committed before a
    verification starts is always seen):

    * per index key (:attr:`PurlPattern.index_key`): the active anchors having it, each with
      its key-wide compromises and its keys compiled once (:class:`AnchorKeys`), and the
      keys known to have none. A new PURL under a known anchor costs one indexed query for
      its few unknown keys, never a re-read of the anchor's history;
    * per PURL: the applicable anchor (verifying many proofs for one artifact costs nothing);
    * the universal anchor.

    On a store that can send its token read ahead (PostgreSQL, strict), a verification
    answers from the caches as they are and confirms their token afterwards (:meth:`speculate`,
    decision 0027); elsewhere every lookup reads the token first.
    """

    _MAX = 65536
    #: Up to this many distinct index keys of active anchors are kept in memory (one query
    #: per change token), so a PURL under no new key needs no query; beyond, ask per key.
    _INDEX_KEYS_LIMIT = 20_000
    #: The cache key of the universal anchor (a PURL never starts with NUL).
    _UNIVERSAL = "\0*"

    def __init__(self, store: Store) -> None:
        self._store = store
        self._send: Callable[[], PendingToken | None] | None = (
            store.send_change_token if isinstance(store, SendsChangeToken) else None
        )
        self._local = _Local()
        self._token: object = _NEVER
        self._by_purl: dict[str, AnchorLookup] = {}
        self._by_key: dict[str, tuple[_Compiled, ...]] = {}
        #: fingerprint -> earliest compromise revocation in any anchor (None: never): a key
        #: shared by many anchors is read once, not once per anchor holding it.
        self._compromise: dict[str, datetime | None] = {}
        #: The active anchors' index keys (None: too many to keep; _UNREAD: not read yet).
        self._index_keys: frozenset[str] | object | None = _UNREAD
        self._lock = threading.Lock()

    def speculate(self) -> Speculation | None:
        """For a store that can send its token read ahead (PostgreSQL, strict), the verifier's
        speculation (decision 0027); None otherwise, or before the caches hold anything."""
        if self._send is None or self._token is _NEVER or self._local.speculation is not None:
            return None  # (the last: pinned, the token is known already)
        pending = self._send()
        return None if pending is None else _Speculation(self._local, pending)

    def pinned(self, token: object) -> _Pin:
        """``with source.pinned(token): verifier.verify(...)``: the verification on this
        thread uses ``token`` as the store's change token instead of reading one, and does not
        speculate (decision 0030). ``token`` must be one the store's ``change_token()`` could
        have returned when the verification started, read after it started (e.g.
        ``PostgresStore.read_proof_and_token``, in the proof's snapshot): then a commit that
        finished before the start is counted in it, as strict mode requires."""
        return _Pin(self._local, token)

    def pinned_here(self) -> bool:
        """Whether a verification on this thread already uses a token it did not read itself
        (pinned or speculating)."""
        return self._local.speculation is not None

    def lookup(self, purl: str | Purl) -> AnchorLookup:
        parsed = purl if isinstance(purl, Purl) else parse_purl(purl)
        return self._cached(parsed.canonical, parsed)

    def universal(self) -> AnchorLookup:
        return self._cached(self._UNIVERSAL, None)

    def _cached(self, key: str, parsed: Purl | None) -> AnchorLookup:
        speculation = self._local.speculation
        if speculation is None or speculation.pinned is _READ_NOW:
            token = self._store.change_token()
        else:
            # _SPECULATING, the token confirm() collected, or the token read with the proof
            token = speculation.pinned
        with self._lock:
            if token is _SPECULATING:
                assert isinstance(speculation, _Speculation)
                token = self._token  # the caches as they are; confirm() checks this token
                speculation.seen.append(token)
            elif token != self._token:
                # New objects, never cleared in place: a thread still reading under the old
                # token keeps a consistent view of what it captured (a compromise cleared
                # under its feet would read as "never compromised").
                self._by_purl = {}
                self._by_key = {}
                self._compromise = {}
                self._index_keys = _UNREAD
                self._token = token
            hit = self._by_purl.get(key)
            if hit is not None:
                return hit
            index_keys = [""] if parsed is None else lookup_keys_for(parsed)
            known = {k: self._by_key[k] for k in index_keys if k in self._by_key}
            present = self._index_keys
            compromises = self._compromise
        missing = [k for k in index_keys if k not in known]
        if missing and isinstance(present, frozenset) and not present.intersection(missing):
            # No active anchor has any of them (a new PURL under a known anchor: its most
            # specific keys): nothing to read, so no read transaction either (issue 20).
            known.update((k, ()) for k in missing)
            missing = []
        if missing:
            with self._store.read() as tx:
                if present is _UNREAD:
                    present = tx.active_index_keys(self._INDEX_KEYS_LIMIT)
                if isinstance(present, frozenset):
                    # Keys no active anchor has cost nothing (the common case for a new PURL
                    # under a known anchor: its most specific keys).
                    known.update((k, ()) for k in missing if k not in present)
                    missing = [k for k in missing if k in present]
                new_compromises: dict[str, datetime | None] = {}
                fetched = self._read(tx, missing, compromises, new_compromises)
            with self._lock:
                if self._token == token:  # not if another thread saw a newer token meanwhile
                    if len(self._by_key) >= self._MAX or len(self._compromise) >= self._MAX:
                        self._by_key = {}
                        self._compromise = {}
                    self._by_key.update(fetched)
                    self._compromise.update(new_compromises)
                    if self._index_keys is _UNREAD:
                        self._index_keys = present
            known.update(fetched)
        views = {id(c.anchor): c for k in index_keys for c in known[k]}
        found = select_anchor((c.anchor for c in views.values()), parsed)
        if found.anchor is not None:
            view = views[id(found.anchor)]
            found = (
                view.lookup  # what the evolve would build, built once per anchor
                if found.why is None
                else attrs.evolve(found, compromises=view.compromises, keys=view.keys)
            )
        with self._lock:
            if self._token == token:
                if len(self._by_purl) >= self._MAX:
                    self._by_purl = {}
                self._by_purl[key] = found
        return found

    @staticmethod
    def _read(
        tx: Transaction,
        index_keys: Sequence[str],
        known: Mapping[str, datetime | None],
        new: dict[str, datetime | None],
    ) -> dict[str, tuple[_Compiled, ...]]:
        """The active anchors of each index key, compiled (an empty tuple for a key without).
        Key-wide compromises by fingerprint come from ``known``; those it lacks are read and
        put in ``new``."""
        if not index_keys:
            return {}
        anchors = [a for a in tx.anchors_by_index_keys(index_keys) if a.active]
        out: dict[str, list[_Compiled]] = {k: [] for k in index_keys}
        if anchors:
            fps = {e.fingerprint for a in anchors for e in a.key_history}
            unknown = {f for f in fps if f not in known}
            if unknown:
                found = key_wide_compromises(tx.history_by_fingerprints(unknown))
                new.update((f, found.get(f)) for f in unknown)

            def compromise_of(fingerprint: str) -> datetime | None:
                return new[fingerprint] if fingerprint in new else known.get(fingerprint)

            for anchor in anchors:
                mine = {
                    e.fingerprint: at
                    for e in anchor.key_history
                    if (at := compromise_of(e.fingerprint)) is not None
                }
                frozen = MappingProxyType(mine) if mine else _NO_COMPROMISE
                compiled = _Compiled(anchor, frozen, AnchorKeys(anchor.key_history, frozen))
                out.setdefault(_pattern(anchor.purl_pattern).index_key, []).append(compiled)
        return {k: tuple(v) for k, v in out.items()}

    def key_only_view(
        self, key_ids: Collection[str]
    ) -> tuple[Sequence[KeyRecord], Mapping[str, Sequence[KeyHistoryEntry]]]:
        with self._store.read() as tx:
            records = [r for k in key_ids if (r := tx.get_key(k)) is not None] if key_ids else []
            if not records:
                records = tx.list_keys()
            found = _by_fingerprint(tx.history_by_fingerprints({r.fingerprint for r in records}))
        return records, {r.key_id: found.get(r.fingerprint, []) for r in records}
