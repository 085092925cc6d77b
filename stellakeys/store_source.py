"""The Verifier's anchor and key sources over a store (the storage port).

Apart from :mod:`stellakeys.verifier` because verification (layer 4) must not depend on the
storage port (layer 5): the verifier knows only its ``AnchorSource`` / ``KeySource`` protocols,
and this adapter implements them with the store's PURL index.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING

import attrs

from stellakeys.anchor_keys import AnchorKeys
from stellakeys.anchors import KeyHistoryEntry, TrustAnchor
from stellakeys.keys import KeyRecord
from stellakeys.purl import Purl, lookup_keys_for, parse_purl
from stellakeys.verification import key_wide_compromises
from stellakeys.verifier import (
    _NO_COMPROMISE,
    AnchorLookup,
    _by_fingerprint,
    _pattern,
    select_anchor,
)

if TYPE_CHECKING:
    from stellakeys.storage.ports import Store, Transaction

__all__ = ["StoreSource"]


@attrs.frozen
class _Compiled:
    """One active anchor as verification needs it, built once per change token."""

    anchor: TrustAnchor
    compromises: Mapping[str, datetime]
    keys: AnchorKeys


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
    """

    _MAX = 65536
    #: The cache key of the universal anchor (a PURL never starts with NUL).
    _UNIVERSAL = "\0*"

    def __init__(self, store: Store) -> None:
        self._store = store
        self._token: object = object()
        self._by_purl: dict[str, AnchorLookup] = {}
        self._by_key: dict[str, tuple[_Compiled, ...]] = {}
        #: fingerprint -> earliest compromise revocation in any anchor (None: never): a key
        #: shared by many anchors is read once, not once per anchor holding it.
        self._compromise: dict[str, datetime | None] = {}
        self._lock = threading.Lock()

    def lookup(self, purl: str | Purl) -> AnchorLookup:
        parsed = purl if isinstance(purl, Purl) else parse_purl(purl)
        return self._cached(parsed.canonical, parsed)

    def universal(self) -> AnchorLookup:
        return self._cached(self._UNIVERSAL, None)

    def _cached(self, key: str, parsed: Purl | None) -> AnchorLookup:
        token = self._store.change_token()
        with self._lock:
            if token != self._token:
                self._by_purl.clear()
                self._by_key.clear()
                self._compromise.clear()
                self._token = token
            hit = self._by_purl.get(key)
        if hit is not None:
            return hit
        index_keys = [""] if parsed is None else lookup_keys_for(parsed)
        with self._lock:
            known = {k: self._by_key[k] for k in index_keys if k in self._by_key}
        missing = [k for k in index_keys if k not in known]
        if missing:
            with self._lock:
                compromise = dict(self._compromise)
            with self._store.read() as tx:
                fetched = self._read(tx, missing, compromise)
            with self._lock:
                if self._token == token:  # not if another thread saw a newer token meanwhile
                    if len(self._by_key) >= self._MAX:
                        self._by_key.clear()
                    if len(self._compromise) >= self._MAX:
                        self._compromise.clear()
                    self._by_key.update(fetched)
                    self._compromise.update(compromise)
            known.update(fetched)
        views = {id(c.anchor): c for k in index_keys for c in known[k]}
        found = select_anchor((c.anchor for c in views.values()), parsed)
        if found.anchor is not None:
            view = views[id(found.anchor)]
            found = attrs.evolve(found, compromises=view.compromises, keys=view.keys)
        with self._lock:
            if self._token == token:
                if len(self._by_purl) >= self._MAX:
                    self._by_purl.clear()
                self._by_purl[key] = found
        return found

    @staticmethod
    def _read(
        tx: Transaction, index_keys: Sequence[str], compromise: dict[str, datetime | None]
    ) -> dict[str, tuple[_Compiled, ...]]:
        """The active anchors of each index key, compiled (an empty tuple for a key without).
        ``compromise`` (fingerprint -> earliest compromise, None for none) is what is known
        already; the fingerprints it lacks are read and added to it."""
        anchors = [a for a in tx.anchors_by_index_keys(index_keys) if a.active]
        out: dict[str, list[_Compiled]] = {k: [] for k in index_keys}
        if anchors:
            unknown = {e.fingerprint for a in anchors for e in a.key_history} - compromise.keys()
            if unknown:
                found = key_wide_compromises(tx.history_by_fingerprints(unknown))
                compromise.update((f, found.get(f)) for f in unknown)
            for anchor in anchors:
                mine = {
                    f: at
                    for e in anchor.key_history
                    if (at := compromise[f := e.fingerprint]) is not None
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
