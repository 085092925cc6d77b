"""Package URLs and PURL patterns: parsing, normalisation and matching of one pattern.

Pure (no I/O, no clock). :mod:`stellakeys.purl` builds overlap, precedence and the pattern
index on top of this and re-exports every name here (split out of ``purl.py`` in issue 16);
the segment model is described there and in docs/decisions/0003-purl-patterns.md.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping

import attrs
from packageurl import PackageURL, normalize_name, normalize_namespace, quote

from stellakeys.errors import MalformedPurlError

__all__ = [
    "UNIVERSAL",
    "AmbiguousPatternError",
    "DuplicatePatternError",
    "Purl",
    "PurlPattern",
    "Specificity",
    "lookup_keys_for",
    "parse_purl",
]

#: ``(literal segments, -wildcards, literal characters in wildcard segments)``; higher wins.
Specificity = tuple[int, int, int]

# Stand-in for ``*`` while packageurl normalises a pattern. Lower-case letters and digits only,
# so no per-type normalisation (lower-casing, ``_`` -> ``-``, pub's ``[^a-z0-9]`` -> ``_``)
# alters it; cpan upper-cases namespaces, hence the case-insensitive replacement back.
_PLACEHOLDER = "zq7wildcard7qz"
_PLACEHOLDER_RE = re.compile(re.escape(_PLACEHOLDER), re.IGNORECASE)
_ENCODED_STAR_RE = re.compile("%2a", re.IGNORECASE)

# Fillers for building an example artifact out of unconstrained segments.
_FILLER_TYPE = "generic"
_FILLER_SEGMENT = "x"


# --------------------------------------------------------------------------------------------
# Errors


class AmbiguousPatternError(MalformedPurlError):
    """A pattern that ties with an existing one: same specificity, and some artifact matches both.

    Exactly one anchor must apply to an artifact, so such a pattern is refused.
    """

    def __init__(self, pattern: str, existing: str, example: str | None = None) -> None:
        self.pattern = pattern
        self.existing = existing
        self.example = example
        super().__init__(self._message())

    def _message(self) -> str:
        both = f" (both match e.g. {self.example})" if self.example else ""
        return (
            f"PURL pattern {self.pattern!r} is exactly as specific as existing pattern "
            f"{self.existing!r} and overlaps it{both}; exactly one anchor must apply to an "
            "artifact, so make one pattern more specific or deactivate the other anchor"
        )


class DuplicatePatternError(AmbiguousPatternError):
    """The very same (normalised) pattern already exists."""

    def _message(self) -> str:
        return f"PURL pattern {self.pattern!r} already exists"


# --------------------------------------------------------------------------------------------
# Artifact package URLs


# Characters packageurl's ``quote`` never escapes (urllib's unreserved set): a segment made of
# them is its own quoted form, so the common segment skips the encode/escape/decode round trip.
_UNRESERVED_RE = re.compile(r"[A-Za-z0-9_.~-]*")


def _quote(segment: str) -> str:
    return segment if _UNRESERVED_RE.fullmatch(segment) else quote(segment)


def _render_segments(type_: str, segments: Iterable[str]) -> str:
    """``pkg:<type>/<seg>/<seg>`` with each segment percent-encoded the way packageurl does.

    Used for pattern texts, index keys and lookup keys alike, so they agree byte for byte.
    """
    return f"pkg:{type_}" + "".join("/" + _quote(segment) for segment in segments)


def _version_suffix(version: str | None) -> str:
    return "" if version is None else "@" + _quote(version)


@attrs.frozen(repr=False)
class Purl:
    """A normalised artifact package URL. Build it with :func:`parse_purl`.

    Equality and hashing are on the canonical string, so two spellings of one package URL
    (``pkg:NPM/Lodash`` and ``pkg:npm/lodash``) are equal.
    """

    canonical: str
    package_url: PackageURL = attrs.field(eq=False)
    #: The path segments used for matching: type, namespace parts, name.
    segments: tuple[str, ...] = attrs.field(eq=False)
    # True when ``canonical`` is a plain PURL (``_plain_canonical``): each segment is its own
    # quoted form, so lookup keys are prefixes of the text.
    _plain: bool = attrs.field(default=False, eq=False, alias="plain")

    @classmethod
    def from_package_url(cls, package_url: PackageURL) -> Purl:
        """Normalise a :class:`PackageURL` (re-parsed from its string form, to be canonical)."""
        return parse_purl(package_url.to_string())

    @property
    def type(self) -> str:
        return self.package_url.type

    @property
    def namespace(self) -> str | None:
        return self.package_url.namespace

    @property
    def name(self) -> str:
        return self.package_url.name

    @property
    def version(self) -> str | None:
        return self.package_url.version

    @property
    def qualifiers(self) -> Mapping[str, str]:
        return dict(self.package_url.qualifiers)

    @property
    def subpath(self) -> str | None:
        return self.package_url.subpath

    def to_string(self) -> str:
        return self.canonical

    def __str__(self) -> str:
        return self.canonical

    def __repr__(self) -> str:
        return f"Purl({self.canonical!r})"


def _parse_package_url(text: str, what: str, hint: str = "") -> PackageURL:
    try:
        return PackageURL.from_string(text)
    except ValueError as exc:
        reason = str(exc).replace(_PLACEHOLDER, "*").rstrip(".")
        raise MalformedPurlError(f"malformed {what}: {reason}{hint}") from None


def parse_purl(text: str) -> Purl:
    """Parse and normalise an artifact package URL.

    An unescaped ``*`` is refused: it is pattern syntax, and an artifact that contained one
    would be confusing to match. A name that really contains ``*`` is written ``%2A``.
    """
    if not isinstance(text, str):
        raise MalformedPurlError(f"a package URL must be a string, not {type(text).__name__}")
    return _parse_purl_cached(text)


# Verification parses the same few artifact PURLs over and over, and packageurl's parser costs
# tens of microseconds (more than the rest of a verification's bookkeeping). Purl values are
# immutable, so sharing them is safe; malformed inputs raise and are not cached.
@functools.lru_cache(maxsize=65536)
def _parse_purl_cached(text: str) -> Purl:
    stripped = text.strip()
    if not stripped:
        raise MalformedPurlError("empty package URL")
    if "*" in stripped:
        raise MalformedPurlError(
            f"package URL {text!r} contains '*': wildcards belong in PURL patterns, "
            "not in artifact package URLs (write %2A for a literal '*')"
        )
    plain = _plain_canonical(stripped)
    if plain is not None:
        return plain
    first = _parse_package_url(stripped, "package URL")
    # One more round trip through the canonical string: packageurl's to_string is the canonical
    # form we compare on, and re-parsing it makes the segments follow from that form.
    canonical_text = first.to_string()
    if canonical_text == stripped:
        # Already canonical (the usual subject): re-parsing the same text would give ``first``
        # again and print ``canonical_text`` again (packageurl is a pure function of the
        # text), so the round trip is skipped, not weakened: half of a new PURL's cost.
        segments = _segments(first)
        return Purl(canonical=canonical_text, package_url=first, segments=segments)
    package_url = _parse_package_url(canonical_text, "package URL")
    return Purl(
        canonical=package_url.to_string(), package_url=package_url, segments=_segments(package_url)
    )


# The usual artifact PURL is plain and already canonical, in characters packageurl neither
# escapes nor rewrites: packageurl would parse it, print it back unchanged and split it at '/'
# and '@' (14 us alone, 30 inside a cold verification). packageurl has no "already canonical"
# check, so this one is written here, deliberately narrow (decision 0032): lower-case names, no
# escapes, qualifiers or subpath, and only types packageurl treats alike for these characters
# (not pub, cpan, huggingface, oci, mlflow). Everything else goes through packageurl, the
# reference: tests/test_purl_parse_fast.py holds the two to the same Purl.
_PLAIN_PURL_RE = re.compile(
    r"pkg:([a-z]+)/((?:[a-z0-9.-]+/)*)([a-z0-9.-]+)(?:@([A-Za-z0-9_.~-]+))?"
)
_PLAIN_PURL_TYPES: frozenset[str] = frozenset({
    "apk", "bitbucket", "cargo", "cocoapods", "composer", "conan", "conda", "cran", "deb",
    "docker", "gem", "generic", "github", "gitlab", "golang", "hex", "maven", "npm", "nuget",
    "pypi", "rpm", "swift",
})  # fmt: skip


def _plain_canonical(text: str) -> Purl | None:
    """The Purl of a plain, already canonical ``text`` without packageurl's round trip; None
    when ``text`` is anything else (then packageurl decides)."""
    match = _PLAIN_PURL_RE.fullmatch(text)
    if match is None:
        return None
    type_, namespace, name, version = match.groups()
    if type_ not in _PLAIN_PURL_TYPES:
        return None
    parts = namespace.split("/")[:-1]  # "a/b/" -> ["a", "b"]; "" -> []
    # namedtuple's _make: the fields as they are, which is what packageurl's parse gives here
    # (its constructor would only re-check and re-normalise them, 10 us).
    package_url = PackageURL._make((type_, namespace[:-1] or None, name, version, {}, None))
    return Purl(canonical=text, package_url=package_url, segments=(type_, *parts, name), plain=True)


def _segments(package_url: PackageURL) -> tuple[str, ...]:
    namespace_parts = package_url.namespace.split("/") if package_url.namespace else []
    return (package_url.type, *namespace_parts, package_url.name)


def _as_purl(purl: str | Purl) -> Purl:
    return purl if isinstance(purl, Purl) else parse_purl(purl)


def lookup_keys_for(purl: str | Purl) -> list[str]:
    """Every :attr:`PurlPattern.index_key` that a pattern matching ``purl`` can have.

    Storage adapters keep each pattern's ``index_key`` in an indexed column and fetch
    candidates with ``WHERE index_key IN (...)``; the keys are ``""`` (for ``*`` and patterns
    with no literal segment), then each segment prefix of the package path, then the path with
    its version. That is at most ``len(purl.segments) + 2`` keys, whatever the number of anchors.
    """
    p = _as_purl(purl)
    if p._plain:
        return _plain_lookup_keys(p.canonical, p.version)
    keys = [""]
    keys.extend(
        _render_segments(p.type, p.segments[1:end]) for end in range(1, len(p.segments) + 1)
    )
    if p.version is not None:
        keys.append(keys[-1] + _version_suffix(p.version))
    return keys


def _plain_lookup_keys(canonical: str, version: str | None) -> list[str]:
    """:func:`lookup_keys_for` of a plain PURL: its segments need no quoting, so each key is a
    prefix of the text, cut at a '/' (after ``pkg:<type>``) or before the '@'."""
    path = canonical if version is None else canonical[: -len(version) - 1]
    keys = [""]
    cut = path.index("/")
    while cut != -1:
        keys.append(path[:cut])
        cut = path.find("/", cut + 1)
    keys.append(path)
    if version is not None:
        keys.append(canonical)
    return keys


# --------------------------------------------------------------------------------------------
# Patterns


@attrs.frozen
class _Glob:
    """One pattern segment: ``prefix*suffix``, or a literal (``wildcard=False``, in ``prefix``)."""

    prefix: str
    suffix: str = ""
    wildcard: bool = False

    @classmethod
    def of(cls, segment: str) -> _Glob:
        prefix, star, suffix = segment.partition("*")
        return cls(prefix, suffix, True) if star else cls(prefix)

    def matches(self, segment: str) -> bool:
        if not self.wildcard:
            return segment == self.prefix
        return (
            len(segment) >= len(self.prefix) + len(self.suffix)
            and segment.startswith(self.prefix)
            and segment.endswith(self.suffix)
        )

    @property
    def literal_chars(self) -> int:
        return len(self.prefix) + len(self.suffix)

    def example(self, filler: str) -> str:
        if not self.wildcard:
            return self.prefix
        return self.prefix + self.suffix or filler

    def intersect(self, other: _Glob, filler: str) -> str | None:
        """A segment both globs match, or None if there is none."""
        if not self.wildcard:
            return self.prefix if other.matches(self.prefix) else None
        if not other.wildcard:
            return other.prefix if self.matches(other.prefix) else None
        # Both are prefix*suffix: a common string exists iff one prefix extends the other and
        # one suffix extends the other; longest prefix + longest suffix is then long enough
        # for both stars to match (possibly the empty string).
        prefix = _longer_if_compatible(self.prefix, other.prefix, str.startswith)
        suffix = _longer_if_compatible(self.suffix, other.suffix, str.endswith)
        if prefix is None or suffix is None:
            return None
        return prefix + suffix or filler

    def render(self) -> str:
        if not self.wildcard:
            return quote(self.prefix)
        return quote(self.prefix) + "*" + quote(self.suffix)

    def __str__(self) -> str:
        return self.prefix + "*" + self.suffix if self.wildcard else self.prefix


def _longer_if_compatible(a: str, b: str, extends: Callable[[str, str], bool]) -> str | None:
    longer, shorter = (a, b) if len(a) >= len(b) else (b, a)
    return longer if extends(longer, shorter) else None


def _reject(text: str, reason: str) -> MalformedPurlError:
    return MalformedPurlError(f"malformed PURL pattern {text!r}: {reason}")


@attrs.frozen(repr=False)
class PurlPattern:
    """A normalised PURL pattern. Build it with :meth:`parse`; equal iff the texts are equal."""

    #: The normalised pattern text; ``parse(text)`` gives this pattern back.
    text: str
    #: Package type (``None`` only for ``*``).
    type: str | None = attrs.field(eq=False)
    #: The exact version this pattern is pinned to, or ``None`` for any version.
    version: str | None = attrs.field(eq=False)
    # Segment globs in artifact order (type first). For the last one, this is its form as a
    # package *name*.
    _globs: tuple[_Glob, ...] = attrs.field(eq=False, alias="globs")
    # True if the pattern ends with '*' and so also matches everything below its last segment.
    _trailing: bool = attrs.field(eq=False, alias="trailing")
    # The last glob as a *namespace* part, when packageurl normalises namespace and name of this
    # type differently (npm lower-cases names only, cpan upper-cases namespaces, ...). Only a
    # trailing pattern's last segment can be either, depending on the artifact's depth.
    _last_as_namespace: _Glob | None = attrs.field(eq=False, alias="last_as_namespace")
    #: ``(literal segments, -wildcards, literal characters in wildcard segments)``; higher is
    #: more specific. A pinned version counts as one more literal segment, so
    #: ``pkg:npm/lodash@4.17.21`` beats ``pkg:npm/lodash``. The third element orders patterns
    #: that differ only inside a wildcard segment: ``pkg:maven/org.apache.*`` beats ``pkg:maven/*``.
    specificity: Specificity = attrs.field(eq=False, init=False)
    #: ``""``, then each literal segment prefix of the pattern up to :attr:`index_key`: the
    #: storage keys of patterns this one could tie with that are *less* deep than itself.
    key_chain: tuple[str, ...] = attrs.field(eq=False, init=False)

    def __attrs_post_init__(self) -> None:
        # Stored rather than computed on access: lookups compare specificities and keys a lot.
        literal = sum(not g.wildcard for g in self._globs) + (self.version is not None)
        wildcard_globs = [g for g in self._globs if g.wildcard]
        specificity = (
            literal,
            -len(wildcard_globs),
            sum(g.literal_chars for g in wildcard_globs),
        )
        object.__setattr__(self, "specificity", specificity)
        object.__setattr__(self, "key_chain", self._compute_key_chain())

    def _compute_key_chain(self) -> tuple[str, ...]:
        if self.type is None:
            return ("",)
        chain = ["", _render_segments(self.type, ())]
        literal: list[str] = []
        for glob in self._globs[1:]:
            if glob.wildcard:
                return tuple(chain)
            literal.append(glob.prefix)
            chain.append(_render_segments(self.type, literal))
        if self.version is not None:
            chain.append(chain[-1] + _version_suffix(self.version))
        return tuple(chain)

    # ---- construction --------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> PurlPattern:
        """Parse and normalise a pattern; :class:`MalformedPurlError` with a one-line reason."""
        if not isinstance(text, str):
            raise MalformedPurlError(f"a PURL pattern must be a string, not {type(text).__name__}")
        stripped = text.strip()
        if not stripped:
            raise MalformedPurlError("empty PURL pattern (use '*' to match every package)")
        if stripped == "*":
            return UNIVERSAL
        if not stripped.startswith("pkg:"):
            raise _reject(text, "a pattern is '*' or a package URL starting with 'pkg:'")
        # %2A decodes to '*' inside packageurl anyway; treating it as the wildcard up front keeps
        # one meaning for '*' (a literal '*' in a name cannot be expressed in a pattern).
        raw = _ENCODED_STAR_RE.sub("*", stripped)
        if "**" in raw:
            raise _reject(
                text, "'**' is not supported; a trailing '*' already matches everything below"
            )
        if _PLACEHOLDER in raw.lower():
            raise _reject(text, f"{_PLACEHOLDER!r} is reserved")
        if raw.endswith("@"):
            raise _reject(text, "empty version after '@'")
        tokenised = raw.replace("*", _PLACEHOLDER)
        normalised = _parse_package_url(tokenised, "PURL pattern", _hint(stripped))
        as_written = PackageURL.from_string(tokenised, normalize_purl=False)

        if _PLACEHOLDER in normalised.type:
            raise _reject(
                text, "the package type cannot contain '*' (use '*' alone for every type)"
            )
        if normalised.qualifiers or normalised.subpath:
            raise _reject(
                text,
                "a pattern cannot carry qualifiers ('?') or a subpath ('#'); "
                "it matches every qualifier and subpath of the packages it names",
            )
        version = normalised.version
        if version is not None and _PLACEHOLDER_RE.search(version):
            raise _reject(text, "wildcards are not allowed in the version")

        namespace_parts = normalised.namespace.split("/") if normalised.namespace else []
        segments = [_PLACEHOLDER_RE.sub("*", s) for s in (*namespace_parts, normalised.name)]
        for segment in segments:
            if segment.count("*") > 1:
                raise _reject(text, f"at most one '*' per path segment, got {segment!r}")
        if "/" in segments[-1]:
            raise _reject(text, "a pattern segment cannot contain an encoded '/' (%2F)")
        globs = (_Glob(normalised.type), *(_Glob.of(s) for s in segments))
        trailing = segments[-1].endswith("*")
        wildcards = sum(g.wildcard for g in globs)
        if version is not None and wildcards:
            raise _reject(
                text,
                "a version can only follow a fully literal package path "
                "(drop the '@version' to match every version)",
            )

        last_as_namespace: _Glob | None = None
        last_text = segments[-1]
        if trailing and last_text != "*":
            ns_form = _as_namespace_part(as_written.name, normalised.type)
            if ns_form != last_text:
                last_as_namespace = _Glob.of(ns_form)
                last_text = _spelling_for_both(
                    normalised.type, last_text, ns_form, _PLACEHOLDER_RE.sub("*", as_written.name)
                )

        body = "/".join([*(g.render() for g in globs[1:-1]), _render_pattern_segment(last_text)])
        pattern_text = f"pkg:{normalised.type}/{body}{_version_suffix(version)}"
        return cls(
            text=pattern_text,
            type=normalised.type,
            version=version,
            globs=globs,
            trailing=trailing,
            last_as_namespace=last_as_namespace,
        )

    # ---- properties ----------------------------------------------------------------------

    @property
    def index_key(self) -> str:
        """The literal segments before the first wildcard, as a storage index key.

        ``""`` for ``*``, ``pkg:npm`` for ``pkg:npm/*`` and ``pkg:maven/org.apache.*`` (a partly
        literal segment is not included), and the whole text for a fully literal pattern.
        Whenever this pattern matches a package URL, this key is in
        :func:`lookup_keys_for` of that package URL.
        """
        return self.key_chain[-1]

    @property
    def is_universal(self) -> bool:
        return self.type is None

    @property
    def is_literal(self) -> bool:
        """True if the pattern has no wildcard (it names one package, or one version of it)."""
        return not any(g.wildcard for g in self._globs)

    # ---- matching ------------------------------------------------------------------------

    def matches(self, purl: str | Purl) -> bool:
        """Whether this pattern covers the artifact ``purl`` (a string is parsed first)."""
        p = _as_purl(purl)
        segments = p.segments
        depth = len(segments)
        if not self._admits_depth(depth):
            return False
        if self.version is not None and p.version != self.version:
            return False
        # _globs_at_depth(depth), without building it (every new PURL is matched): segments
        # past the globs match anything.
        globs = self._globs
        last = len(globs) - 1
        if depth > len(globs) and self._last_as_namespace is not None:
            if not self._last_as_namespace.matches(segments[last]):
                return False
            last -= 1  # checked
        return all(globs[i].matches(segments[i]) for i in range(last + 1))

    def _admits_depth(self, depth: int) -> bool:
        length = len(self._globs)
        return depth >= length if self._trailing else depth == length

    def _globs_at_depth(self, depth: int) -> list[_Glob | None]:
        """The glob for each segment of an artifact ``depth`` segments deep (None: anything)."""
        globs: list[_Glob | None] = list(self._globs)
        if depth > len(self._globs) and self._last_as_namespace is not None:
            # The last segment sits above the name here, so it is a namespace part.
            globs[-1] = self._last_as_namespace
        globs.extend([None] * (depth - len(self._globs)))
        return globs

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"PurlPattern({self.text!r})"


def _hint(text: str) -> str:
    """A short hint for the usual mistakes, spliced into packageurl's own error message."""
    path = text.removeprefix("pkg:").lstrip("/")
    if path and "/" not in path:
        return f"; to match every {path} package write 'pkg:{path}/*'"
    if path.startswith("npm/@") and path.count("/") == 1:
        return "; an npm scope needs a name after it: pkg:npm/@scope/* or pkg:npm/@scope/name"
    return ""


def _as_namespace_part(raw_segment: str, type_: str) -> str:
    """How packageurl normalises ``raw_segment`` (percent-encoded) as a namespace part."""
    normalised = normalize_namespace(raw_segment, type_, encode=False) or ""
    return _PLACEHOLDER_RE.sub("*", normalised)


def _as_name(raw_segment: str, type_: str) -> str:
    """How packageurl normalises ``raw_segment`` (percent-encoded) as a package name."""
    normalised = normalize_name(raw_segment, None, type_, encode=False) or ""
    return _PLACEHOLDER_RE.sub("*", normalised)


def _render_pattern_segment(segment: str) -> str:
    return _Glob.of(segment).render()


def _spelling_for_both(type_: str, name_form: str, ns_form: str, as_written: str) -> str:
    """A spelling of a trailing segment that normalises to both of its forms again.

    The canonical text must parse back to the same pattern. Prefer a normalised spelling;
    the decoded original always works because packageurl's normalisation is idempotent.
    """
    for candidate in (name_form, ns_form):
        raw = _render_pattern_segment(candidate).replace("*", _PLACEHOLDER)
        if _as_name(raw, type_) == name_form and _as_namespace_part(raw, type_) == ns_form:
            return candidate
    return as_written


UNIVERSAL = PurlPattern(
    text="*",
    type=None,
    version=None,
    globs=(_Glob("", "", True),),
    trailing=True,
    last_as_namespace=None,
)
"""The pattern ``*``: every package URL."""
