"""Package URLs and PURL patterns: parsing, matching, precedence and anchor lookup.

Trust anchors are scoped by PURL patterns (``*``, ``pkg:npm/*``, ``pkg:maven/org.apache.*``,
``pkg:docker/myregistry/*``, ``pkg:npm/lodash@4.17.21``). Exactly one anchor applies to an
artifact: the most specific matching pattern. This module is pure (no I/O, no clock).

The segment model (docs/decisions/0003-purl-patterns.md has the reasoning):

* A package URL is matched as its path segments: ``(type, *namespace parts, name)``, taken from
  the normalised :class:`packageurl.PackageURL` (so ``pkg:NPM/Lodash`` is ``("npm", "lodash")``
  and ``pkg:maven/org.apache.commons/commons-lang3`` is
  ``("maven", "org.apache.commons", "commons-lang3")``). Version, qualifiers and subpath are not
  segments.
* A pattern is ``*`` or a ``pkg:`` URL whose path segments may each hold one ``*``. A ``*``
  matches any run of characters inside one segment, never a ``/``.
* If the pattern ends with ``*`` (``pkg:npm/*``, ``pkg:maven/org.apache.*``), it also matches
  everything below the segment that ``*`` ends: ``pkg:npm/*`` covers ``pkg:npm/%40angular/core``.
  Otherwise the artifact must have exactly as many segments as the pattern.
* A pattern without ``@version`` matches every version, qualifier and subpath; with one, only
  that version (still any qualifiers and subpath). Patterns cannot carry qualifiers or subpaths.
* Specificity is ``(literal segments, -wildcards, literal characters in wildcard segments)``;
  a version counts as one more literal segment. Two patterns with equal specificity that match
  some common artifact are a tie, and the second one is refused.

Parsing and normalisation are packageurl-python's; this module never re-implements the PURL
grammar. It only shields ``*`` from packageurl's per-type normalisation (``pub`` would turn it
into ``_``) by swapping it for a placeholder token around the call.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

from stellakeys.errors import MalformedPurlError
from stellakeys.purl_pattern import (  # re-exported: moved in issue 16
    _FILLER_SEGMENT,
    _FILLER_TYPE,
    UNIVERSAL,
    AmbiguousPatternError,
    DuplicatePatternError,
    Purl,
    PurlPattern,
    Specificity,
    _as_purl,
    _render_segments,
    _version_suffix,
    lookup_keys_for,
    parse_purl,
)

__all__ = [
    "AmbiguousPatternError",
    "DuplicatePatternError",
    "PatternIndex",
    "Purl",
    "PurlPattern",
    "Specificity",
    "UNIVERSAL",
    "ensure_unambiguous",
    "find_conflict",
    "lookup_keys_for",
    "overlap_example",
    "overlaps",
    "overlaps_ambiguously",
    "parse_purl",
    "most_specific_matches",
    "select_most_specific",
]

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Overlap and precedence


def _overlap_segments(a: PurlPattern, b: PurlPattern) -> tuple[tuple[str, ...], str | None] | None:
    """Segments and version of one artifact both patterns match, or None if there is none."""
    if a.version is not None and b.version is not None and a.version != b.version:
        return None
    version = a.version if a.version is not None else b.version
    len_a, len_b = len(a._globs), len(b._globs)
    # Only three depths behave differently: each pattern's own length (where a trailing last
    # segment is a name) and one deeper than both (where every segment past the patterns is
    # unconstrained). An artifact has at least a type and a name, so depth >= 2.
    for depth in sorted({d for d in (len_a, len_b, max(len_a, len_b) + 1) if d >= 2}):
        if not (a._admits_depth(depth) and b._admits_depth(depth)):
            continue
        segments: list[str] = []
        for position, (ga, gb) in enumerate(
            zip(a._globs_at_depth(depth), b._globs_at_depth(depth), strict=True)
        ):
            filler = _FILLER_TYPE if position == 0 else _FILLER_SEGMENT
            if ga is None or gb is None:
                glob = ga or gb
                segment: str | None = filler if glob is None else glob.example(filler)
            else:
                segment = ga.intersect(gb, filler)
            if segment is None:
                break
            segments.append(segment)
        else:
            return tuple(segments), version
    return None


def overlaps(a: PurlPattern, b: PurlPattern) -> bool:
    """Whether some package URL matches both patterns.

    Exact over arbitrary segment strings; it does not know type-specific rules (npm names are
    lower case, ...), so it may report an overlap that only an unusual package URL would show.
    """
    return _overlap_segments(a, b) is not None


def overlap_example(a: PurlPattern, b: PurlPattern) -> str | None:
    """A package URL string both patterns match (for error messages), or None."""
    found = _overlap_segments(a, b)
    if found is None:
        return None
    segments, version = found
    return _render_segments(segments[0], segments[1:]) + _version_suffix(version)


def overlaps_ambiguously(a: PurlPattern, b: PurlPattern) -> bool:
    """True if ``a`` and ``b`` tie in specificity and some artifact matches both.

    Creating an anchor whose pattern does this with an active one must be refused: neither
    could be "the" anchor for the artifacts they share.
    """
    return a.specificity == b.specificity and overlaps(a, b)


def find_conflict(pattern: PurlPattern, existing: Iterable[PurlPattern]) -> PurlPattern | None:
    """The first of ``existing`` that ``pattern`` ties with ambiguously (or duplicates)."""
    for other in existing:
        if overlaps_ambiguously(pattern, other):
            return other
    return None


def ensure_unambiguous(pattern: PurlPattern, existing: Iterable[PurlPattern]) -> None:
    """Raise :class:`DuplicatePatternError` / :class:`AmbiguousPatternError` on a conflict.

    For storage adapters checking a new anchor against the active ones.
    """
    other = find_conflict(pattern, existing)
    if other is None:
        return
    if other.text == pattern.text:
        raise DuplicatePatternError(pattern.text, other.text)
    raise AmbiguousPatternError(pattern.text, other.text, overlap_example(pattern, other))


def most_specific_matches(
    purl: str | Purl | None, entries: Iterable[tuple[PurlPattern, T]]
) -> list[tuple[PurlPattern, T]]:
    """The matching entries of the highest specificity: one entry is the applicable one;
    several mean a tie (a store that broke the one-anchor rule, or the same pattern twice),
    which the caller must report, never break. ``purl=None`` asks for the universal pattern
    ``*`` only: the one pattern that covers a name that is not a package URL.

    The one precedence rule of verification (:class:`stellakeys.verifier.Verifier`)."""
    p = None if purl is None else _as_purl(purl)
    best: list[tuple[PurlPattern, T]] = []
    for pattern, value in entries:
        if not (pattern.is_universal if p is None else pattern.matches(p)):
            continue
        if not best or pattern.specificity > best[0][0].specificity:
            best = [(pattern, value)]
        elif pattern.specificity == best[0][0].specificity:
            best.append((pattern, value))
    return best


def select_most_specific(
    purl: str | Purl, entries: Iterable[tuple[PurlPattern, T]]
) -> tuple[PurlPattern, T] | None:
    """The matching entry with the highest specificity, or None if none matches.

    For storage adapters, after fetching candidates by :func:`lookup_keys_for`. Two matching
    entries of equal specificity mean the store broke the one-anchor rule (creation refuses
    ties), so that raises :class:`AmbiguousPatternError` rather than picking one silently.
    """
    p = _as_purl(purl)
    best: tuple[PurlPattern, T] | None = None
    tied: PurlPattern | None = None
    for pattern, value in entries:
        if not pattern.matches(p):
            continue
        if best is None or pattern.specificity > best[0].specificity:
            best, tied = (pattern, value), None
        elif pattern.specificity == best[0].specificity and pattern.text != best[0].text:
            tied = pattern
    if best is not None and tied is not None:
        raise AmbiguousPatternError(tied.text, best[0].text, p.canonical)
    return best


class _SameSpecificity:
    """Patterns of one specificity by index key, with the keys sorted for prefix searches."""

    def __init__(self) -> None:
        self.by_key: dict[str, dict[str, PurlPattern]] = {}
        self.sorted_keys: list[str] = []

    def add(self, pattern: PurlPattern) -> None:
        key = pattern.index_key
        if key not in self.by_key:
            self.by_key[key] = {}
            bisect.insort(self.sorted_keys, key)
        self.by_key[key][pattern.text] = pattern

    def remove(self, pattern: PurlPattern) -> None:
        key = pattern.index_key
        bucket = self.by_key[key]
        del bucket[pattern.text]
        if not bucket:
            del self.by_key[key]
            del self.sorted_keys[bisect.bisect_left(self.sorted_keys, key)]

    def related(self, pattern: PurlPattern) -> Iterator[PurlPattern]:
        """Patterns whose index key is a segment prefix of ``pattern``'s key, or extends it.

        Only those can overlap it: an artifact both match has both keys among its
        :func:`lookup_keys_for`, which form one chain of prefixes.
        """
        for key in pattern.key_chain:
            yield from self.by_key.get(key, {}).values()
        if pattern.is_universal:
            return
        # Deeper keys continue with a literal '/' (segments are percent-encoded, so it is a
        # separator). A key continuing with '@version' belongs to a pattern without wildcards,
        # which never has the specificity of one keyed by its unversioned path; skip those.
        low = bisect.bisect_left(self.sorted_keys, pattern.index_key + "/")
        high = bisect.bisect_left(self.sorted_keys, pattern.index_key + "0")  # '0' follows '/'
        for key in self.sorted_keys[low:high]:
            yield from self.by_key[key].values()


class PatternIndex(Generic[T]):
    """In-memory map from patterns to values (anchors) with most-specific lookup.

    Entries are bucketed by :attr:`PurlPattern.index_key`, so :meth:`lookup` touches only the
    buckets named by :func:`lookup_keys_for` (at most segments + 2) rather than every pattern.
    :meth:`add` checks the new pattern only against patterns of equal specificity (only those
    can tie) whose keys are prefix-related to its own (only those can overlap). Put only
    active anchors in it.
    """

    def __init__(self) -> None:
        self._by_key: dict[str, dict[str, tuple[PurlPattern, T]]] = {}
        self._by_specificity: dict[Specificity, _SameSpecificity] = {}

    def add(self, pattern: PurlPattern, value: T) -> None:
        """Add ``pattern``; refuse a duplicate or a tie with an existing pattern."""
        same = self._by_specificity.get(pattern.specificity)
        if same is not None:
            ensure_unambiguous(pattern, same.related(pattern))
        self._by_key.setdefault(pattern.index_key, {})[pattern.text] = (pattern, value)
        self._by_specificity.setdefault(pattern.specificity, _SameSpecificity()).add(pattern)

    def remove(self, pattern: PurlPattern | str) -> None:
        """Remove ``pattern`` (a pattern or its text); KeyError if it is not in the index."""
        p = pattern if isinstance(pattern, PurlPattern) else PurlPattern.parse(pattern)
        bucket = self._by_key.get(p.index_key, {})
        if p.text not in bucket:
            raise KeyError(p.text)
        del bucket[p.text]
        if not bucket:
            del self._by_key[p.index_key]
        same = self._by_specificity[p.specificity]
        same.remove(p)
        if not same.by_key:
            del self._by_specificity[p.specificity]

    def candidates(self, purl: str | Purl) -> list[tuple[PurlPattern, T]]:
        """Every entry whose pattern matches ``purl``, most specific first."""
        p = _as_purl(purl)
        found = [
            entry
            for key in lookup_keys_for(p)
            for entry in self._by_key.get(key, {}).values()
            if entry[0].matches(p)
        ]
        found.sort(key=lambda entry: entry[0].specificity, reverse=True)
        return found

    def lookup_entry(self, purl: str | Purl) -> tuple[PurlPattern, T] | None:
        """The most specific matching ``(pattern, value)``, or None."""
        p = _as_purl(purl)
        return select_most_specific(
            p, (entry for key in lookup_keys_for(p) for entry in self._by_key.get(key, {}).values())
        )

    def lookup(self, purl: str | Purl) -> T | None:
        """The value of the most specific matching pattern, or None."""
        entry = self.lookup_entry(purl)
        return None if entry is None else entry[1]

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._by_key.values())

    def __contains__(self, pattern: object) -> bool:
        if isinstance(pattern, str):
            try:
                pattern = PurlPattern.parse(pattern)
            except MalformedPurlError:
                return False
        if not isinstance(pattern, PurlPattern):
            return False
        return pattern.text in self._by_key.get(pattern.index_key, {})

    def __iter__(self) -> Iterator[PurlPattern]:
        for bucket in self._by_key.values():
            for pattern, _value in bucket.values():
                yield pattern
