"""parse_purl skips its second packageurl round trip when the text is already canonical
(issue 20, cold verify: each new PURL costs one parse, not two). These tests hold the shortcut
to the two-round-trip parser it replaces: same Purl (canonical text, PackageURL fields,
segments) or the same error, for any input."""

from __future__ import annotations

import packageurl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packageurl import PackageURL

from stellakeys.errors import MalformedPurlError
from stellakeys.purl_pattern import Purl, _parse_purl_cached

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
    purl = _parse_uncached("pkg:npm/app-7@1.0.0")
    assert seen == ["pkg:npm/app-7@1.0.0"]
    assert purl.canonical == "pkg:npm/app-7@1.0.0"
    assert purl.segments == ("npm", "app-7")


def test_non_canonical_text_is_parsed_again_from_its_canonical_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = count_parses(monkeypatch)
    purl = _parse_uncached("pkg:pypi/Foo_Bar@1.0")
    assert seen == ["pkg:pypi/Foo_Bar@1.0", "pkg:pypi/foo-bar@1.0"]
    assert purl.canonical == "pkg:pypi/foo-bar@1.0"
    assert purl.segments == ("pypi", "foo-bar")
