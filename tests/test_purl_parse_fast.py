"""parse_purl's two shortcuts (issue 20, cold verify): a text already canonical skips the
second packageurl round trip, and a plain canonical text (``pkg:npm/app@1.0.0``) skips
packageurl altogether. These tests hold both to the two-round-trip parser they replace: same
Purl (canonical text, PackageURL fields, segments) or the same error, for any input."""

from __future__ import annotations

import packageurl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packageurl import PackageURL

from stellakeys.errors import MalformedPurlError
from stellakeys.purl_pattern import (
    _PLAIN_PURL_TYPES,
    Purl,
    PurlPattern,
    _parse_purl_cached,
    _plain_canonical,
    _quote,
    lookup_keys_for,
)

_parse_uncached = _parse_purl_cached.__wrapped__


def reference_parse(text: str) -> Purl:
    """The parser before the shortcut: parse, print, parse the printed form, print again."""
    stripped = text.strip()
    if not stripped:
        raise MalformedPurlError("empty package URL")
    if "*" in stripped:
        raise MalformedPurlError("wildcard")

    def parse(t: str) -> PackageURL:
        try:
            return PackageURL.from_string(t)
        except ValueError as exc:
            raise MalformedPurlError(str(exc)) from None

    package_url = parse(parse(stripped).to_string())
    parts = package_url.namespace.split("/") if package_url.namespace else []
    return Purl(
        canonical=package_url.to_string(),
        package_url=package_url,
        segments=(package_url.type, *parts, package_url.name),
    )


def same_outcome(text: str) -> None:
    try:
        expected = reference_parse(text)
    except MalformedPurlError:
        with pytest.raises(MalformedPurlError):
            _parse_uncached(text)
        return
    got = _parse_uncached(text)
    assert got.canonical == expected.canonical
    assert tuple(got.package_url) == tuple(expected.package_url)
    assert got.package_url.to_dict() == expected.package_url.to_dict()
    assert got.segments == expected.segments


# Characters that packageurl normalises, escapes or splits on, so that canonical and
# non-canonical spellings both come up often.
_CHARS = st.sampled_from([*"aAbZ09._-~+ %/@?#:=&!$'()é", "%2F", "%40", "%20", "%3A"])
_WORD = st.lists(_CHARS, min_size=0, max_size=6).map("".join)
_TYPES = st.sampled_from(
    ["npm", "NPM", "pypi", "maven", "docker", "golang", "pub", "generic", "github", "deb", "x"]
)


@st.composite
def purl_texts(draw: st.DrawFn) -> str:
    """Arbitrary spellings: often malformed, often non-canonical."""
    text = f"pkg:{draw(_TYPES)}/"
    text += "/".join(draw(st.lists(_WORD, min_size=1, max_size=3)))
    if draw(st.booleans()):
        text += "@" + draw(_WORD)
    if draw(st.booleans()):
        text += "?" + draw(_WORD) + "=" + draw(_WORD)
    if draw(st.booleans()):
        text += "#" + draw(_WORD)
    return draw(st.sampled_from(["", " ", "pkg:/"])) + text if draw(st.booleans()) else text


@st.composite
def canonical_texts(draw: st.DrawFn) -> str:
    """packageurl's own printed forms: the shortcut's case."""
    word = st.text(alphabet="abcAB01._-/@ %é", min_size=1, max_size=6)
    try:
        purl = PackageURL(
            type=draw(_TYPES),
            namespace=draw(st.none() | word),
            name=draw(word),
            version=draw(st.none() | word),
            qualifiers=draw(st.none() | st.dictionaries(st.sampled_from(["arch", "os"]), word)),
            subpath=draw(st.none() | word),
        )
        return str(purl.to_string())
    except (ValueError, TypeError):  # packageurl refuses some field combinations
        return "pkg:npm/fallback@1"


loose = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@loose
@given(purl_texts())
def test_any_spelling_parses_as_before(text: str) -> None:
    same_outcome(text)


@loose
@given(canonical_texts())
def test_canonical_texts_parse_as_before(text: str) -> None:
    same_outcome(text)


@pytest.mark.parametrize(
    "text",
    [
        "pkg:npm/app-1@1.0.0",
        "pkg:NPM/Lodash@4.17.21",  # type and npm name lower-cased: not canonical
        "pkg:pypi/Foo_Bar@1.0",  # pypi: lower case, '_' -> '-'
        "pkg:maven/org.apache.commons/commons-lang3@3.12?type=jar#src",
        "pkg:npm/%40angular/core@1",  # an encoded '@' in the namespace
        "pkg:generic/a%2Fb@1",  # an encoded '/' in the name
        "  pkg:npm/app@1  ",  # surrounding blanks
        "pkg:docker/library/x?b=2&a=1",  # qualifiers re-ordered
    ],
)
def test_known_spellings_parse_as_before(text: str) -> None:
    same_outcome(text)


def count_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    original = packageurl.PackageURL.from_string.__func__  # type: ignore[attr-defined]

    def counting(cls: type[PackageURL], text: str) -> PackageURL:
        seen.append(text)
        return original(cls, text)  # type: ignore[no-any-return]

    monkeypatch.setattr(packageurl.PackageURL, "from_string", classmethod(counting))
    return seen


def test_canonical_text_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = count_parses(monkeypatch)
    text = "pkg:maven/org.apache/Commons@1.0?type=jar"  # canonical, not plain
    purl = _parse_uncached(text)
    assert seen == [text]
    assert purl.canonical == text
    assert purl.segments == ("maven", "org.apache", "Commons")


def test_plain_canonical_text_is_not_given_to_packageurl(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = count_parses(monkeypatch)
    purl = _parse_uncached("pkg:npm/app-7@1.0.0")
    assert seen == []
    assert purl.canonical == "pkg:npm/app-7@1.0.0"
    assert purl.segments == ("npm", "app-7")
    assert purl.package_url == PackageURL.from_string("pkg:npm/app-7@1.0.0")


def test_non_canonical_text_is_parsed_again_from_its_canonical_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = count_parses(monkeypatch)
    purl = _parse_uncached("pkg:pypi/Foo_Bar@1.0")
    assert seen == ["pkg:pypi/Foo_Bar@1.0", "pkg:pypi/foo-bar@1.0"]
    assert purl.canonical == "pkg:pypi/foo-bar@1.0"
    assert purl.segments == ("pypi", "foo-bar")


# --- the plain shortcut ---------------------------------------------------------------------

# Every type packageurl special-cases (and a few it does not know), next to the shortcut's own:
# the shortcut must decline the first kind and agree with packageurl on the second.
_SPECIAL_TYPES = ["pub", "cpan", "huggingface", "oci", "mlflow", "hackage", "bitnami", "alpm"]
_ALL_TYPES = st.sampled_from([*sorted(_PLAIN_PURL_TYPES), *_SPECIAL_TYPES, "zz", "npmx"])
# Plain characters plus the near misses: case, '_', '+', '%', '@', blanks, '..'.
_PLAIN_PIECE = st.sampled_from([*"abz09.-", "..", "A", "_", "~", "+", "%41", "@", " ", "é"])
_PLAIN_SEGMENT = st.lists(_PLAIN_PIECE, min_size=1, max_size=5).map("".join)


@st.composite
def plain_texts(draw: st.DrawFn) -> str:
    """Texts in or near the shortcut's grammar, of every type."""
    segments = draw(st.lists(_PLAIN_SEGMENT, min_size=1, max_size=4))
    text = f"pkg:{draw(_ALL_TYPES)}/" + "/".join(segments)
    if draw(st.booleans()):
        text += "@" + draw(_PLAIN_SEGMENT)
    return text


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plain_texts())
def test_plain_texts_parse_as_before(text: str) -> None:
    same_outcome(text)


@settings(max_examples=1500, deadline=None)
@given(plain_texts())
def test_plain_shortcut_only_takes_what_packageurl_prints_unchanged(text: str) -> None:
    plain = _plain_canonical(text)
    if plain is None:
        return
    expected = reference_parse(text)
    assert plain.canonical == expected.canonical == text
    assert tuple(plain.package_url) == tuple(expected.package_url)
    assert plain.segments == expected.segments


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ("pkg:npm/app@1.0.0", True),
        ("pkg:npm/app", True),
        ("pkg:golang/github.com/sigstore/cosign@v2.2.0", True),
        ("pkg:maven/org.apache/commons@3.12.0-RC1", True),  # upper case in a version: kept
        ("pkg:npm/App@1", False),  # npm lower-cases names
        ("pkg:pypi/foo_bar@1", False),  # pypi: '_' -> '-'
        ("pkg:pub/a.b@1", False),  # pub rewrites '.'
        ("pkg:oci/x@SHA256", False),  # oci lower-cases versions
        ("pkg:cpan/a/b@1", False),  # cpan upper-cases namespaces
        ("pkg:npm/app@1+build", False),  # '+' is escaped
        ("pkg:npm/app@1?x=1", False),  # qualifiers
        ("pkg:npm/app#sub", False),  # subpath
        ("pkg:npm/%40s/app@1", False),  # escapes
        ("pkg:NPM/app@1", False),  # type case
        ("pkg:npm//app@1", False),  # empty segment
        ("pkg:npm/app@", False),  # empty version
    ],
)
def test_plain_shortcut_grammar(text: str, plain: bool) -> None:
    assert (_plain_canonical(text) is not None) is plain
    same_outcome(text)


def test_plain_types_are_ones_packageurl_treats_alike() -> None:
    """A type added to the shortcut must keep plain texts unchanged in packageurl."""
    for type_ in sorted(_PLAIN_PURL_TYPES):
        text = f"pkg:{type_}/a.b-c/d.0-e@V1.0_~x"
        assert _plain_canonical(text) is not None, type_
        same_outcome(text)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from([*"aZ09_.~-:/@%+ é*"]), max_size=8))
def test_segment_quoting_shortcut_agrees_with_packageurl(segment: str) -> None:
    assert _quote(segment) == packageurl.quote(segment)


def test_lookup_keys_of_plain_and_packageurl_parses_agree() -> None:
    for text in ["pkg:npm/app@1.0.0", "pkg:golang/github.com/x/y@v1", "pkg:maven/o.a/b"]:
        plain = _plain_canonical(text)
        assert plain is not None
        assert lookup_keys_for(plain) == lookup_keys_for(reference_parse(text))


@settings(max_examples=1500, deadline=None)
@given(plain_texts())
def test_plain_lookup_keys_are_the_rendered_ones(text: str) -> None:
    """A plain Purl's keys are cut from its text; they must be the keys rendered segment by
    segment from the same PURL parsed by packageurl."""
    plain = _plain_canonical(text)
    if plain is None:
        return
    assert plain._plain and not reference_parse(text)._plain
    assert lookup_keys_for(plain) == lookup_keys_for(reference_parse(text))


# --- matching without building the per-depth glob list ---------------------------------------


def reference_matches(pattern: PurlPattern, purl: Purl) -> bool:
    """``PurlPattern.matches`` as it was: the glob list for the artifact's depth, zipped."""
    depth = len(purl.segments)
    if not pattern._admits_depth(depth):
        return False
    if pattern.version is not None and purl.version != pattern.version:
        return False
    globs = pattern._globs_at_depth(depth)
    return all(g is None or g.matches(s) for g, s in zip(globs, purl.segments, strict=True))


_MATCH_TYPES = st.sampled_from(["npm", "cpan", "pypi", "maven", "generic"])
_PATTERN_SEGMENT = st.sampled_from(["a", "A", "ab", "*", "a*", "A*", "*b", "a*b", "Fo*", "Foo"])
_FILL = st.sampled_from(["", "a", "B", "o", "x_y"])


@st.composite
def pattern_and_artifact(draw: st.DrawFn) -> tuple[str, str]:
    """A pattern and an artifact built from it (stars filled, segments added below it, case
    changed at times), so that matches and near misses both come up often."""
    type_ = draw(_MATCH_TYPES)
    segments = draw(st.lists(_PATTERN_SEGMENT, min_size=1, max_size=3))
    pattern = f"pkg:{type_}/" + "/".join(segments) + draw(st.sampled_from(["", "@1", "*"]))
    filled = [s.replace("*", draw(_FILL)) or "z" for s in segments]
    filled += draw(st.lists(st.sampled_from(["c", "D", "e_f"]), max_size=2))
    if draw(st.booleans()):
        filled = [s.swapcase() if draw(st.booleans()) else s for s in filled]
    artifact = f"pkg:{type_}/" + "/".join(filled) + draw(st.sampled_from(["", "@1", "@2"]))
    return pattern, artifact


@settings(max_examples=1000, deadline=None)
@given(pattern_and_artifact())
def test_matches_agrees_with_the_per_depth_glob_list(texts: tuple[str, str]) -> None:
    try:
        pattern = PurlPattern.parse(texts[0])
        purl = _parse_uncached(texts[1])
    except MalformedPurlError:
        return
    assert pattern.matches(purl) == reference_matches(pattern, purl)
