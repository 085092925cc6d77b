"""PURL parsing, pattern matching, precedence, tie refusal and the pattern index."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packageurl import PackageURL

from stellakeys.errors import MalformedPurlError, StellaKeysError
from stellakeys.purl import (
    AmbiguousPatternError,
    DuplicatePatternError,
    PatternIndex,
    Purl,
    PurlPattern,
    ensure_unambiguous,
    find_conflict,
    lookup_keys_for,
    overlap_example,
    overlaps,
    overlaps_ambiguously,
    parse_purl,
    select_most_specific,
)

P = PurlPattern.parse


# --- the runbook's pattern table -------------------------------------------------------------

RUNBOOK = [
    # (pattern, artifact, matches)
    ("pkg:npm/*", "pkg:npm/lodash@4.17.21", True),
    ("pkg:npm/*", "pkg:npm/%40angular/core@1.0", True),
    ("pkg:npm/*", "pkg:npm/@angular/core@1.0", True),
    ("pkg:npm/*", "pkg:maven/org.apache.commons/commons-lang3@3.12.0", False),
    ("pkg:npm/*", "pkg:pypi/requests@2.31.0", False),
    ("pkg:maven/org.apache.*", "pkg:maven/org.apache.commons/commons-lang3@3.12.0", True),
    ("pkg:maven/org.apache.*", "pkg:maven/org.apache.logging.log4j/log4j-core@2.17.1", True),
    ("pkg:maven/org.apache.*", "pkg:maven/org.apache.maven/maven-core", True),
    ("pkg:maven/org.apache.*", "pkg:maven/org.apachefoo/x@1", False),
    ("pkg:maven/org.apache.*", "pkg:maven/org.apache/apache@30", False),
    ("pkg:maven/org.apache.*", "pkg:maven/com.google.guava/guava@32.1.2-jre", False),
    ("pkg:maven/org.apache.*", "pkg:npm/org.apache.x", False),
    ("pkg:docker/myregistry/*", "pkg:docker/myregistry/app@sha256:abcd", True),
    ("pkg:docker/myregistry/*", "pkg:docker/myregistry/team/app:1.0", True),
    ("pkg:docker/myregistry/*", "pkg:docker/otherregistry/app", False),
    ("pkg:docker/myregistry/*", "pkg:docker/myregistry", False),
    ("pkg:docker/myregistry/*", "pkg:docker/myregistryx/app", False),
    ("*", "pkg:npm/lodash", True),
    ("*", "pkg:maven/org.apache.commons/commons-lang3@3.12.0?type=jar#x", True),
    ("*", "pkg:generic/anything", True),
]


@pytest.mark.parametrize(("pattern", "artifact", "expected"), RUNBOOK)
def test_runbook_pattern_table(pattern: str, artifact: str, expected: bool) -> None:
    assert P(pattern).matches(artifact) is expected
    assert P(pattern).matches(parse_purl(artifact)) is expected


def test_literal_patterns_any_version_and_exact_version() -> None:
    any_version = P("pkg:npm/lodash")
    exact = P("pkg:npm/lodash@4.17.21")
    assert any_version.matches("pkg:npm/lodash@4.17.21")
    assert any_version.matches("pkg:npm/lodash@1.0.0")
    assert any_version.matches("pkg:npm/lodash")
    assert any_version.matches("pkg:npm/lodash@1.0.0?foo=bar#dist/x.js")
    assert not any_version.matches("pkg:npm/lodash-es@4.17.21")
    assert not any_version.matches("pkg:npm/lodash/extra")
    assert exact.matches("pkg:npm/lodash@4.17.21")
    assert exact.matches("pkg:npm/lodash@4.17.21?foo=bar#sub")  # qualifiers never narrow
    assert not exact.matches("pkg:npm/lodash@4.17.20")
    assert not exact.matches("pkg:npm/lodash")  # unknown version is not that version
    assert exact.specificity > any_version.specificity


def test_wildcard_inside_a_segment_stays_in_the_segment() -> None:
    starts_a = P("pkg:npm/a*")  # trailing: also everything below
    ends_b = P("pkg:npm/*b")  # not trailing: exactly one segment after the type
    assert starts_a.matches("pkg:npm/a")
    assert starts_a.matches("pkg:npm/abc")
    assert not starts_a.matches("pkg:npm/babc")
    assert ends_b.matches("pkg:npm/ab")
    assert not ends_b.matches("pkg:npm/%40scope/b")
    assert not ends_b.matches("pkg:npm/bc")
    middle = P("pkg:maven/org.*/commons-lang3")
    assert middle.matches("pkg:maven/org.apache.commons/commons-lang3@3")
    assert not middle.matches("pkg:maven/com.apache/commons-lang3")
    assert not middle.matches("pkg:maven/org.apache.commons/commons-io")


def test_scoped_npm_patterns() -> None:
    scope = P("pkg:npm/@angular/*")
    assert scope.text == "pkg:npm/%40angular/*"
    assert scope.matches("pkg:npm/%40angular/core@17.0.0")
    assert not scope.matches("pkg:npm/%40angularx/core")
    assert not scope.matches("pkg:npm/angular")
    assert P("pkg:npm/%40ang*").matches("pkg:npm/@angular/core")


# --- normalisation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("*", "*"),
        ("  pkg:npm/*  ", "pkg:npm/*"),
        ("pkg:NPM/*", "pkg:npm/*"),
        ("pkg:NPM/Lodash", "pkg:npm/lodash"),
        ("pkg:npm/Lodash@4.17.21", "pkg:npm/lodash@4.17.21"),
        ("pkg:npm/@angular/core", "pkg:npm/%40angular/core"),
        ("pkg:npm/%2A", "pkg:npm/*"),
        ("pkg:pypi/Django_REST*", "pkg:pypi/django_rest*"),
        ("pkg:pypi/Django_REST/*", "pkg:pypi/django_rest/*"),
        ("pkg:pypi/Django_REST", "pkg:pypi/django-rest"),
        ("pkg:github/Package-URL/*", "pkg:github/package-url/*"),
        ("pkg:maven/org.apache.*", "pkg:maven/org.apache.*"),
        ("pkg:docker/myregistry/*", "pkg:docker/myregistry/*"),
    ],
)
def test_pattern_normalisation(text: str, normalised: str) -> None:
    pattern = P(text)
    assert pattern.text == normalised
    assert str(pattern) == normalised
    assert P(pattern.text) == pattern


def test_patterns_follow_packageurl_normalisation_of_artifacts() -> None:
    # Artifacts are normalised the same way, so case and pypi's '_' do not matter.
    assert P("pkg:npm/Lodash").matches("pkg:NPM/LODASH@1")
    assert P("pkg:pypi/django_rest*").matches("pkg:pypi/Django-REST-framework@3")
    assert P("pkg:github/Package-URL/*").matches("pkg:github/package-url/purl-spec")


def test_trailing_segment_normalised_as_namespace_and_as_name() -> None:
    # cpan upper-cases namespaces (authors) but keeps names (modules): a trailing partial
    # segment can be either, depending on how deep the artifact goes.
    moose = P("pkg:cpan/Moose*")
    assert moose.matches("pkg:cpan/Moose-Util@1")  # as a name
    assert moose.matches("pkg:cpan/mooseman/Some-Dist@1")  # as a namespace, MOOSEMAN
    assert not moose.matches("pkg:cpan/moose-util")
    assert P(moose.text) == moose
    # qpkg lower-cases namespaces only.
    qpkg = P("pkg:qpkg/Black*")
    assert qpkg.matches("pkg:qpkg/BlackBerry/com.blackberry.android")
    assert qpkg.matches("pkg:qpkg/Blackbird")
    assert not qpkg.matches("pkg:qpkg/blackbird")


def test_purl_normalisation_and_segments() -> None:
    purl = parse_purl("pkg:NPM/@Angular/Core@1.0?b=2&a=1#sub/path")
    assert purl.type == "npm"
    assert purl.namespace == "@Angular"
    assert purl.name == "core"
    assert purl.version == "1.0"
    assert dict(purl.qualifiers) == {"a": "1", "b": "2"}
    assert purl.subpath == "sub/path"
    assert purl.segments == ("npm", "@Angular", "core")
    assert purl.to_string() == "pkg:npm/%40Angular/core@1.0?a=1&b=2#sub/path"
    assert parse_purl(purl.to_string()) == purl
    assert purl == parse_purl("pkg:npm/%40Angular/core@1.0?a=1&b=2#sub/path")
    docker = parse_purl("pkg:docker/myregistry/team/app@sha256:ab")
    assert docker.segments == ("docker", "myregistry", "team", "app")
    assert Purl.from_package_url(PackageURL("maven", "org.apache", "x", "1")) == parse_purl(
        "pkg:maven/org.apache/x@1"
    )


# --- malformed input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("npm/foo", "starting with 'pkg:'"),
        ("*foo", "starting with 'pkg:'"),
        ("foo*", "starting with 'pkg:'"),
        ("pkg:", "type"),
        ("pkg:npm", "pkg:npm/*"),
        ("pkg:npm/", "name"),
        ("pkg:npm/**", "'**'"),
        ("pkg:npm/@angular", "npm scope"),
        ("pkg:*/foo", "type cannot contain '*'"),
        ("pkg:np*/foo", "type cannot contain '*'"),
        ("pkg:npm/lodash@4.*", "version"),
        ("pkg:npm/*@1.0", "fully literal"),
        ("pkg:npm/lodash@", "empty version"),
        ("pkg:npm/lodash?repository_url=x", "qualifiers"),
        ("pkg:npm/lodash#dist", "subpath"),
        ("pkg:npm/a*b*", "one '*' per path segment"),
        ("pkg:generic/a%2F*", "'/'"),
        ("pkg:1abc/foo", "type"),
    ],
)
def test_malformed_patterns(text: str, fragment: str) -> None:
    with pytest.raises(MalformedPurlError) as info:
        P(text)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message
    assert "zq7wildcard7qz" not in message  # the internal placeholder never leaks
    assert isinstance(info.value, StellaKeysError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("text", ["", "npm/foo", "pkg:", "pkg:npm/", "pkg:npm/*", "lodash"])
def test_malformed_artifact_purls(text: str) -> None:
    with pytest.raises(MalformedPurlError) as info:
        parse_purl(text)
    assert "\n" not in str(info.value)


def test_matches_rejects_malformed_artifact() -> None:
    with pytest.raises(MalformedPurlError):
        P("*").matches("not a purl")


def test_literal_star_in_artifact_is_written_encoded() -> None:
    odd = parse_purl("pkg:generic/a%2Ab")
    assert odd.segments == ("generic", "a*b")
    assert P("pkg:generic/a*").matches(odd)


# --- precedence and ties ----------------------------------------------------------------------


def test_precedence_chain() -> None:
    chain = [
        "pkg:maven/org.apache.commons/commons-lang3@3.12.0",
        "pkg:maven/org.apache.commons/commons-lang3",
        "pkg:maven/org.apache.commons/commons-*",
        "pkg:maven/org.apache.commons/*",
        "pkg:maven/org.apache.*",
        "pkg:maven/org.*",
        "pkg:maven/*",
        "*",
    ]
    patterns = [P(t) for t in chain]
    specificities = [p.specificity for p in patterns]
    assert specificities == sorted(specificities, reverse=True)
    assert len(set(specificities)) == len(specificities)
    index: PatternIndex[str] = PatternIndex()
    for pattern in reversed(patterns):
        index.add(pattern, pattern.text)
    artifact = "pkg:maven/org.apache.commons/commons-lang3@3.12.0?type=jar"
    # Remove the winner one at a time: the next one in the chain takes over.
    for expected in chain:
        assert index.lookup(artifact) == expected
        index.remove(expected)
    assert index.lookup(artifact) is None
    assert len(index) == 0


def test_specificity_values() -> None:
    assert P("*").specificity == (0, -1, 0)
    assert P("pkg:npm/*").specificity == (1, -1, 0)
    assert P("pkg:maven/org.apache.*").specificity == (1, -1, 11)
    assert P("pkg:docker/myregistry/*").specificity == (2, -1, 0)
    assert P("pkg:npm/lodash").specificity == (2, 0, 0)
    assert P("pkg:npm/lodash@4.17.21").specificity == (3, 0, 0)


def test_fewer_wildcards_win_at_equal_literal_segments() -> None:
    one = P("pkg:maven/org.apache.commons/*")
    two = P("pkg:maven/*/commons-lang3/*")
    assert one.specificity[0] == two.specificity[0]
    assert one.specificity > two.specificity


def test_ties_with_overlap_are_refused() -> None:
    index: PatternIndex[int] = PatternIndex()
    index.add(P("pkg:npm/a*"), 1)
    with pytest.raises(AmbiguousPatternError) as info:
        index.add(P("pkg:npm/*b"), 2)  # both (1, -1, 1); both match pkg:npm/ab
    message = str(info.value)
    assert "'pkg:npm/*b'" in message
    assert "'pkg:npm/a*'" in message
    assert "pkg:npm/ab" in message
    assert info.value.example == "pkg:npm/ab"
    assert isinstance(info.value, MalformedPurlError)
    # A longer literal prefix is more specific, so no tie.
    index.add(P("pkg:npm/ab*"), 3)
    assert index.lookup("pkg:npm/abb") == 3
    assert index.lookup("pkg:npm/acb") == 1


def test_same_maven_path_two_ways_is_a_tie() -> None:
    a = P("pkg:maven/org.apache.commons/*")
    b = P("pkg:maven/*/commons-lang3")
    assert a.specificity == b.specificity
    assert overlaps_ambiguously(a, b)
    assert overlap_example(a, b) == "pkg:maven/org.apache.commons/commons-lang3"


@pytest.mark.parametrize(
    "order",
    [
        ["pkg:maven/*/commons-lang3", "pkg:maven/org.apache.commons/*"],
        ["pkg:maven/org.apache.commons/*", "pkg:maven/*/commons-lang3"],
    ],
)
def test_index_finds_ties_with_deeper_and_shallower_keys(order: list[str]) -> None:
    index: PatternIndex[int] = PatternIndex()
    index.add(P("pkg:maven/org.apache.commons.x/*/y"), 0)  # key sorts near; other specificity
    index.add(P(order[0]), 1)
    with pytest.raises(AmbiguousPatternError):
        index.add(P(order[1]), 2)
    index.remove(order[0])
    index.add(P(order[1]), 2)


def test_ties_without_overlap_are_allowed() -> None:
    index: PatternIndex[str] = PatternIndex()
    # Same specificity, disjoint artifact sets: each pair is fine.
    for text in ["pkg:npm/*", "pkg:maven/*", "pkg:docker/*", "pkg:npm/a*", "pkg:npm/b*"]:
        index.add(P(text), text)
    index.add(P("pkg:npm/lodash@1"), "v1")
    index.add(P("pkg:npm/lodash@2"), "v2")
    assert index.lookup("pkg:npm/lodash@1") == "v1"
    assert index.lookup("pkg:npm/lodash@3") == "pkg:npm/*"
    assert index.lookup("pkg:npm/bx") == "pkg:npm/b*"
    # ... but a third pattern of that specificity overlapping either one is refused.
    with pytest.raises(AmbiguousPatternError, match="'pkg:npm/a\\*'"):
        index.add(P("pkg:npm/*x"), "ends-x")
    with pytest.raises(AmbiguousPatternError):
        ensure_unambiguous(P("pkg:npm/*x"), [P("pkg:npm/b*")])
    ensure_unambiguous(P("pkg:npm/*x"), [P("pkg:npm/*y"), P("pkg:npm/ab*")])


def test_duplicates_are_refused() -> None:
    index: PatternIndex[int] = PatternIndex()
    index.add(P("pkg:npm/*"), 1)
    with pytest.raises(DuplicatePatternError, match="already exists"):
        index.add(P("pkg:NPM/*"), 2)
    with pytest.raises(DuplicatePatternError):
        index.add(P("pkg:npm/%2A"), 2)
    assert overlaps_ambiguously(P("*"), P("*"))
    assert find_conflict(P("pkg:npm/*"), [P("pkg:maven/*"), P("pkg:npm/*")]) == P("pkg:npm/*")


def test_disjoint_depths_do_not_overlap() -> None:
    assert not overlaps(P("pkg:npm/*b"), P("pkg:npm/*/b"))
    assert not overlaps(P("pkg:npm/lodash"), P("pkg:npm/lodash/*"))
    assert not overlaps(P("pkg:npm/a*"), P("pkg:npm/b*"))
    assert not overlaps(P("pkg:npm/lodash@1"), P("pkg:npm/lodash@2"))
    assert overlaps(P("pkg:npm/lodash@1"), P("pkg:npm/*"))
    assert overlap_example(P("pkg:npm/lodash@1"), P("pkg:npm/*")) == "pkg:npm/lodash@1"
    assert overlap_example(P("pkg:npm/a*"), P("pkg:npm/*/b")) == "pkg:npm/a/b"


def test_select_most_specific_reports_a_broken_store() -> None:
    # Two tied patterns can only coexist if the one-anchor rule was bypassed; say so.
    entries = [(P("pkg:npm/a*"), 1), (P("pkg:npm/*b"), 2)]
    with pytest.raises(AmbiguousPatternError):
        select_most_specific("pkg:npm/ab", entries)
    assert select_most_specific("pkg:npm/ac", entries) == (P("pkg:npm/a*"), 1)
    assert select_most_specific("pkg:maven/a/b", entries) is None


# --- index keys -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "key"),
    [
        ("*", ""),
        ("pkg:npm/*", "pkg:npm"),
        ("pkg:maven/org.apache.*", "pkg:maven"),
        ("pkg:docker/myregistry/*", "pkg:docker/myregistry"),
        ("pkg:maven/*/commons-lang3", "pkg:maven"),
        ("pkg:npm/@angular/*", "pkg:npm/%40angular"),
        ("pkg:npm/lodash", "pkg:npm/lodash"),
        ("pkg:npm/lodash@4.17.21", "pkg:npm/lodash@4.17.21"),
        ("pkg:npm/@angular/core@1.0", "pkg:npm/%40angular/core@1.0"),
    ],
)
def test_index_keys(pattern: str, key: str) -> None:
    assert P(pattern).index_key == key


def test_lookup_keys() -> None:
    assert lookup_keys_for("pkg:maven/org.apache.commons/commons-lang3@3.12.0?type=jar") == [
        "",
        "pkg:maven",
        "pkg:maven/org.apache.commons",
        "pkg:maven/org.apache.commons/commons-lang3",
        "pkg:maven/org.apache.commons/commons-lang3@3.12.0",
    ]
    assert lookup_keys_for(parse_purl("pkg:npm/lodash")) == ["", "pkg:npm", "pkg:npm/lodash"]


def test_index_membership_and_iteration() -> None:
    index: PatternIndex[int] = PatternIndex()
    index.add(P("pkg:npm/*"), 1)
    index.add(P("*"), 0)
    assert "pkg:NPM/*" in index
    assert P("*") in index
    assert "pkg:maven/*" not in index
    assert "garbage" not in index
    assert sorted(p.text for p in index) == ["*", "pkg:npm/*"]
    assert [p.text for p, _ in index.candidates("pkg:npm/x")] == ["pkg:npm/*", "*"]
    assert index.lookup_entry("pkg:npm/x") == (P("pkg:npm/*"), 1)
    assert P("pkg:npm/%40angular/core@1").key_chain == (
        "",
        "pkg:npm",
        "pkg:npm/%40angular",
        "pkg:npm/%40angular/core",
        "pkg:npm/%40angular/core@1",
    )
    with pytest.raises(KeyError):
        index.remove("pkg:maven/*")
    index.remove("pkg:npm/*")
    assert index.lookup("pkg:npm/x") == 0


def test_lookup_does_not_scan_every_pattern(monkeypatch: pytest.MonkeyPatch) -> None:
    index: PatternIndex[int] = PatternIndex()
    for i in range(1000):
        index.add(P(f"pkg:npm/package-{i}"), i)
        index.add(P(f"pkg:maven/org.example{i}/*"), i)
    index.add(P("pkg:npm/*"), -1)
    calls = 0
    original = PurlPattern.matches

    def counting(self: PurlPattern, purl: str | Purl) -> bool:
        nonlocal calls
        calls += 1
        return original(self, purl)

    monkeypatch.setattr(PurlPattern, "matches", counting)
    assert index.lookup("pkg:npm/package-123@1.0") == 123
    assert index.lookup("pkg:npm/other") == -1
    assert calls <= 4  # one bucket hit each, not 2001 patterns


# --- properties ------------------------------------------------------------------------------

# Small alphabets so that random patterns and artifacts collide often. Lower-case only, and
# types whose normalisation leaves these strings alone, so witnesses are real package URLs.
TYPES = ["npm", "maven", "docker", "generic"]
LITERALS = ["a", "b", "ab", "ba"]
GLOBS = [*LITERALS, "*", "a*", "*a", "b*", "*b", "a*b", "ab*"]

types = st.sampled_from(TYPES)
artifact_segments = st.lists(
    st.sampled_from([*LITERALS, "abb", "bab", "aab"]), min_size=1, max_size=4
)


@st.composite
def patterns(draw: st.DrawFn) -> PurlPattern:
    if draw(st.integers(0, 15)) == 0:
        return P("*")
    segments = draw(st.lists(st.sampled_from(GLOBS), min_size=1, max_size=3))
    version = None
    if all("*" not in s for s in segments):
        version = draw(st.sampled_from([None, None, "1", "2"]))
    text = f"pkg:{draw(types)}/" + "/".join(segments)
    return P(text if version is None else f"{text}@{version}")


@st.composite
def purls(draw: st.DrawFn) -> Purl:
    segments = draw(artifact_segments)
    version = draw(st.sampled_from([None, "1", "2"]))
    qualifiers = draw(st.sampled_from(["", "?arch=x86", "?a=1&b=2"]))
    subpath = draw(st.sampled_from(["", "#lib/x"]))
    text = f"pkg:{draw(types)}/" + "/".join(segments)
    if version:
        text += f"@{version}"
    return parse_purl(text + qualifiers + subpath)


fast = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(patterns())
def test_pattern_text_round_trips(pattern: PurlPattern) -> None:
    again = P(pattern.text)
    assert again == pattern
    assert again.text == pattern.text
    assert again.specificity == pattern.specificity
    assert again.index_key == pattern.index_key


@fast
@given(purls())
def test_purl_round_trips(purl: Purl) -> None:
    again = parse_purl(purl.to_string())
    assert again == purl
    assert again.segments == purl.segments
    assert hash(again) == hash(purl)


@fast
@given(patterns(), purls())
def test_index_key_is_among_lookup_keys_when_matching(pattern: PurlPattern, purl: Purl) -> None:
    keys = lookup_keys_for(purl)
    assert len(keys) <= len(purl.segments) + 2
    if pattern.matches(purl):
        assert pattern.index_key in keys
    if pattern.is_literal:
        assert pattern.index_key == pattern.text


@fast
@given(patterns(), purls(), st.sampled_from(["1", "9"]), st.sampled_from(["", "?q=v", "#s"]))
def test_unversioned_patterns_ignore_version_qualifiers_subpath(
    pattern: PurlPattern, purl: Purl, version: str, extra: str
) -> None:
    if pattern.version is not None:
        return
    bare = "pkg:" + "/".join((purl.type, *(s.replace("@", "%40") for s in purl.segments[1:])))
    assert (
        pattern.matches(purl)
        == pattern.matches(bare)
        == pattern.matches(f"{bare}@{version}{extra}")
    )


@fast
@given(patterns(), patterns(), purls())
def test_overlap_is_exact(a: PurlPattern, b: PurlPattern, purl: Purl) -> None:
    # Sound: a common artifact implies an overlap ...
    if a.matches(purl) and b.matches(purl):
        assert overlaps(a, b)
    # ... and complete: a reported overlap comes with an artifact that really matches both.
    example = overlap_example(a, b)
    assert (example is not None) == overlaps(a, b)
    if example is not None:
        assert a.matches(example)
        assert b.matches(example)
    assert overlaps(a, b) == overlaps(b, a)
    assert overlaps_ambiguously(a, b) == (a.specificity == b.specificity and overlaps(a, b))


@fast
@given(st.lists(patterns(), max_size=12), st.lists(purls(), min_size=1, max_size=8))
def test_index_lookup_equals_brute_force(
    candidates: list[PurlPattern], artifacts: list[Purl]
) -> None:
    index: PatternIndex[str] = PatternIndex()
    accepted: list[PurlPattern] = []
    for pattern in candidates:
        try:
            index.add(pattern, pattern.text)
        except AmbiguousPatternError:
            # Refused only if it really ties with one already accepted.
            assert any(overlaps_ambiguously(pattern, other) for other in accepted)
            continue
        accepted.append(pattern)
    assert len(index) == len(accepted)
    # The index checks only prefix-related keys; it must still have refused every tie.
    for i, a in enumerate(accepted):
        assert not any(overlaps_ambiguously(a, b) for b in accepted[i + 1 :])
    # Random artifacts rarely hit several patterns; an example of each pattern's own artifacts
    # (and of each overlapping pair) does.
    probes: list[Purl | str] = [*artifacts]
    probes += [example for a in accepted for b in accepted if (example := overlap_example(a, b))]
    for artifact in probes:
        matching = [p for p in accepted if p.matches(artifact)]
        if not matching:
            assert index.lookup(artifact) is None
            continue
        best = max(p.specificity for p in matching)
        winners = [p for p in matching if p.specificity == best]
        # The point of refusing ties: at most one most specific match, always.
        assert len(winners) == 1
        assert index.lookup(artifact) == winners[0].text
        assert next(p for p, _ in index.candidates(artifact)) == winners[0]
