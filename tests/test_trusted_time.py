"""Trusted time (issue 7): RFC 3161 tokens from a real ``openssl ts`` TSA, and the back-dating
case they exist for.

The TSA stamps with the real clock, so compromise times are set relative to the moment a
signature is stamped (``T_c = now + 1h`` for "the token predates the compromise",
``T_c = genTime`` or earlier for "it does not"), never by faking the TSA's clock.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from tsa_support import TestTsa, http_tsa

from stellakeys import (
    ALL_ANCHORS,
    FrozenClock,
    KeyManager,
    Statement,
    Subject,
    TimeSource,
    VerificationPolicy,
)
from stellakeys.dsse import Envelope
from stellakeys.errors import ConfigError, TimestampError
from stellakeys.keystores.ports import KeyStoreContext
from stellakeys.storage.memory import MemoryStore
from stellakeys.storage.sqlite import SqliteStore
from stellakeys.timestamp import RFC3161Verifier, TimestampingConfig, parse_token
from stellakeys_cli.main import cli

EVIDENCE = "evidence.stella/v1"
HOUR = timedelta(hours=1)


@pytest.fixture(scope="module")
def tsa(openssl, tmp_path_factory: pytest.TempPathFactory) -> TestTsa:  # type: ignore[no-untyped-def]
    return TestTsa(tmp_path_factory.mktemp("tsa"), openssl)


@pytest.fixture(scope="module")
def tsa_url(tsa: TestTsa) -> Iterator[tuple[str, list[str]]]:
    with http_tsa(tsa) as served:
        yield served


@pytest.fixture(params=["memory"])
def km(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tsa: TestTsa
) -> Iterator[KeyManager]:
    monkeypatch.setenv("STELLAKEYS_PASSPHRASE", "trusted-time-test-passphrase")
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    store = MemoryStore() if request.param == "memory" else SqliteStore.open_home(home)
    # Keys and anchors are set up a day before the signature; signing happens at real now,
    # the TSA's now.
    manager = KeyManager(
        store,
        clock=FrozenClock(datetime.now(UTC) - timedelta(days=1)),
        keystore_context=KeyStoreContext(home=home),
        timestamp_verifier=RFC3161Verifier.from_pem_files([tsa.root_pem]),
    )
    yield manager
    manager.close()


def clock(km: KeyManager) -> FrozenClock:
    assert isinstance(km.clock, FrozenClock)
    return km.clock


def signed(
    km: KeyManager, keys: tuple[str, ...] = ("stolen",), purl: str | None = "pkg:npm/app@1.0.0"
) -> tuple[str, Envelope]:
    """Keys in an anchor since yesterday, and a proof they sign now. Its payload *claims* it
    was signed in 2020: a hint that verification must never use."""
    for key in keys:
        km.generate_key(key)
    if purl is not None:
        km.create_anchor("pkg:npm/*", list(keys), [EVIDENCE])
        payload = Statement(
            (Subject(purl, {"sha256": "ab" * 32}),), EVIDENCE, {"signedAt": "2020-01-01T00:00:00Z"}
        ).to_json()
        payload_type = "application/vnd.in-toto+json"
    else:
        payload, payload_type = b"signed at 2020-01-01T00:00:00Z\n", "text/plain"
    clock(km).set(datetime.now(UTC))
    digest = km.sign(payload, list(keys), payload_type)
    return digest, km.get_proof(digest)


def compromise(km: KeyManager, key: str, at: datetime) -> None:
    km.revoke_key(ALL_ANCHORS, key, "compromise", at)


def compromise_reason(reasons: tuple[str, ...], key: str = "stolen") -> bool:
    return any(f"key {key}" in r and "compromise" in r for r in reasons)


# --- the back-dating case -----------------------------------------------------------------------


def test_claimed_or_asserted_time_before_compromise_is_rejected(km: KeyManager) -> None:
    digest, _ = signed(km)
    t_c = km.clock.now() + HOUR
    compromise(km, "stolen", t_c)
    # Now is before T_c, and the payload claims 2020: neither is evidence of signing time.
    now = km.verify(digest)
    assert not now.ok and now.time_source is TimeSource.NOW
    assert now.time == km.clock.now()
    assert compromise_reason(now.reasons)
    asserted = km.verify(digest, at=t_c - timedelta(minutes=1))
    assert not asserted.ok and asserted.time_source is TimeSource.ASSERTED
    assert compromise_reason(asserted.reasons)
    assert any("asserted time is not enough" in r for r in asserted.reasons)


def test_token_before_compromise_verifies(km: KeyManager, tsa: TestTsa) -> None:
    digest, envelope = signed(km)
    token = tsa.reply(envelope.signatures[0].sig)
    t_c = km.clock.now() + HOUR
    compromise(km, "stolen", t_c)

    result = km.verify(digest, timestamps=[token])
    assert result.ok, result.reasons
    assert result.time_source is TimeSource.TRUSTED and result.time < t_c
    assert result.time_detail is not None
    assert "CN=StellaKeys Test TSA" in result.time_detail and "serial" in result.time_detail
    assert result.to_dict()["timeSource"] == "trusted"
    # Trusted time wins over an asserted one, even one after the compromise.
    later = km.verify(digest, at=t_c + timedelta(days=1), timestamps=[token])
    assert later.ok and later.time_source is TimeSource.TRUSTED

    # Stored with the proof, the token is used whenever the proof is verified by address.
    (added,) = km.timestamp_proof(digest, tokens=[token])
    assert added.verified and added.signature_index == 0 and added.keyid == "stolen"
    assert km.proof_timestamps(digest) == (parse_token(token).der,)
    stored = km.verify(digest)
    assert stored.ok and stored.time_source is TimeSource.TRUSTED
    event = next(e for e in km.audit_events() if e.event_type == "PROOF_TIMESTAMPED")
    assert event.details["proof"] == digest and event.details["verified"] is True
    assert event.details["tsa"].startswith("CN=StellaKeys Test TSA")
    assert km.verify_audit().ok


@pytest.mark.parametrize(
    ("where", "ok"),
    [
        ("after", False),  # T_c an hour before genTime
        ("at", False),  # T_c == genTime: the revocation instant is already outside
        ("within-accuracy", False),  # genTime < T_c < genTime + accuracy: not provably before
        ("past-accuracy", True),  # genTime + accuracy < T_c: provably before
    ],
)
def test_token_at_or_after_compromise_is_rejected(
    km: KeyManager, tsa: TestTsa, where: str, ok: bool
) -> None:
    digest, envelope = signed(km)
    token = tsa.reply(envelope.signatures[0].sig)
    parsed = parse_token(token)
    assert parsed.accuracy == timedelta(seconds=1)
    t_c = {
        "after": parsed.gen_time - HOUR,
        "at": parsed.gen_time,
        "within-accuracy": parsed.gen_time + timedelta(milliseconds=500),
        "past-accuracy": parsed.latest_time + timedelta(microseconds=1),
    }[where]
    compromise(km, "stolen", t_c)
    result = km.verify(digest, timestamps=[token])
    assert result.ok is ok, result.reasons
    assert result.time_source is TimeSource.TRUSTED
    if not ok:
        assert any("revoked at" in r and "(compromise)" in r for r in result.reasons)


def _tamper_gen_time(reply: bytes) -> bytes:
    """Move genTime ten minutes or more earlier inside the signed TSTInfo: a back-dated copy."""
    gen = parse_token(reply).gen_time.strftime("%Y%m%d%H%M%SZ").encode()
    at = reply.index(gen) + 10  # tens of minutes
    digit = int(chr(reply[at]))
    return reply[:at] + str(digit - 1 if digit else 1).encode() + reply[at + 1 :]


def _tamper_signature(reply: bytes) -> bytes:
    """Flip a bit of the last byte: inside the CMS signature value."""
    return reply[:-1] + bytes([reply[-1] ^ 1])


BAD_TOKENS = {
    "other-bytes": ("covers none of the envelope's signatures", None),
    "expired-tsa": ("had expired at genTime", "had expired at genTime"),
    "untrusted-tsa": ("does not chain to a configured TSA root", "does not chain"),
    "tampered-content": ("altered or damaged", "altered or damaged"),
    "tampered-signature": ("altered or damaged", "altered or damaged"),
}


def bad_token(kind: str, tsa: TestTsa, sig: bytes) -> bytes:
    if kind == "other-bytes":
        return tsa.reply(sig + b"!")
    if kind == "expired-tsa":
        return tsa.reply(sig, signer="expired")
    if kind == "untrusted-tsa":
        return tsa.reply(sig, signer="rogue")
    if kind == "tampered-content":
        return _tamper_gen_time(tsa.reply(sig))
    assert kind == "tampered-signature"
    return _tamper_signature(tsa.reply(sig))


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
def test_bad_tokens_give_no_trusted_time(km: KeyManager, tsa: TestTsa, kind: str) -> None:
    digest, envelope = signed(km)
    token = bad_token(kind, tsa, envelope.signatures[0].sig)
    compromise(km, "stolen", km.clock.now() + HOUR)
    result = km.verify(digest, timestamps=[token])
    assert not result.ok
    assert result.time_source is TimeSource.NOW
    assert compromise_reason(result.reasons)
    # The token's failure is a reason: it is why there was no trusted time.
    expected, on_add = BAD_TOKENS[kind]
    assert any(expected in r for r in result.reasons), result.reasons
    # ... and such a token is refused when one tries to store it.
    with pytest.raises(TimestampError, match=on_add or "covers none of the signatures"):
        km.timestamp_proof(digest, tokens=[token])
    assert km.proof_timestamps(digest) == ()


def test_bad_token_is_a_note_when_trusted_time_is_not_needed(km: KeyManager, tsa: TestTsa) -> None:
    digest, envelope = signed(km, ("honest",))
    rogue = tsa.reply(envelope.signatures[0].sig, signer="rogue")
    result = km.verify(digest, timestamps=[rogue])
    assert result.ok and result.time_source is TimeSource.NOW
    assert any("does not chain to a configured TSA root" in n for n in result.notes)


def test_no_tsa_roots_means_no_trusted_time(km: KeyManager, tsa: TestTsa) -> None:
    digest, envelope = signed(km)
    token = tsa.reply(envelope.signatures[0].sig)
    compromise(km, "stolen", km.clock.now() + HOUR)
    # Another process on the same store, with no verifier and no settings to build one from.
    bare = KeyManager(km.store, clock=km.clock, owns_store=False)
    result = bare.verify(digest, timestamps=[token])
    assert not result.ok
    assert any("no TSA roots are configured" in r for r in result.reasons)
    # Stored unverified, it counts as soon as roots are known.
    (added,) = bare.timestamp_proof(digest, tokens=[token])
    assert not added.verified
    other = RFC3161Verifier.from_pem_files([tsa.other_root_pem])
    assert not km.verify(digest, timestamp_verifier=other).ok
    ours = RFC3161Verifier.from_pem_files([tsa.root_pem])
    assert km.verify(digest, timestamp_verifier=ours).ok


def test_require_trusted_time(km: KeyManager, tsa: TestTsa) -> None:
    digest, envelope = signed(km, ("honest",))
    policy = VerificationPolicy(require_trusted_time=True)
    bare = km.verify(digest, policy=policy)
    assert not bare.ok
    assert any("policy requires trusted time" in r and "honest" in r for r in bare.reasons)
    rogue = tsa.reply(envelope.signatures[0].sig, signer="rogue")
    untrusted = km.verify(digest, policy=policy, timestamps=[rogue])
    assert not untrusted.ok
    assert any("does not chain" in r for r in untrusted.reasons)
    token = tsa.reply(envelope.signatures[0].sig)
    good = km.verify(digest, policy=policy, timestamps=[rogue, token])
    assert good.ok and good.time_source is TimeSource.TRUSTED
    assert any("does not chain" in n for n in good.notes)  # the rogue token, noted


def test_each_signature_needs_its_own_token(km: KeyManager, tsa: TestTsa) -> None:
    """Per-signature trusted time: a token dates the signature whose bytes it covers, and no
    other; a key counts when its own signature's time is in its window."""
    digest, envelope = signed(km, ("stolen", "honest"))
    assert [s.keyid for s in envelope.signatures] == ["stolen", "honest"]
    token_stolen = tsa.reply(envelope.signatures[0].sig)
    token_honest = tsa.reply(envelope.signatures[1].sig)
    compromise(km, "stolen", km.clock.now() + HOUR)
    both = VerificationPolicy(threshold=2)

    only_honest = km.verify(digest, policy=both, timestamps=[token_honest])
    assert not only_honest.ok and compromise_reason(only_honest.reasons)

    only_stolen = km.verify(digest, policy=both, timestamps=[token_stolen])
    assert only_stolen.ok, only_stolen.reasons
    times = {kt.key_id: kt.time.source for kt in only_stolen.key_times}
    assert times == {"stolen": TimeSource.TRUSTED, "honest": TimeSource.NOW}
    assert only_stolen.time_source is TimeSource.NOW  # not every counted signature is dated
    keys = {k["keyId"]: k["timeSource"] for k in only_stolen.to_dict()["keys"]}
    assert keys == {"stolen": "trusted", "honest": "now"}

    strict = VerificationPolicy(threshold=2, require_trusted_time=True)
    assert not km.verify(digest, policy=strict, timestamps=[token_stolen]).ok
    full = km.verify(digest, policy=strict, timestamps=[token_stolen, token_honest])
    assert full.ok and full.time_source is TimeSource.TRUSTED
    latest = max(parse_token(t).latest_time for t in (token_stolen, token_honest))
    assert full.time == latest  # by then both signatures provably existed


def test_key_only_check_uses_tokens(km: KeyManager, tsa: TestTsa) -> None:
    digest, envelope = signed(km, purl=None)
    km.create_anchor("pkg:npm/*", ["stolen"], [EVIDENCE])  # so the key can be revoked
    compromise(km, "stolen", km.clock.now() + HOUR)
    loose = VerificationPolicy(require_anchor=False)
    assert not km.verify(digest, policy=loose).ok
    token = tsa.reply(envelope.signatures[0].sig)
    result = km.verify(digest, policy=loose, timestamps=[token])
    assert result.ok and result.time_source is TimeSource.TRUSTED
    assert "key-only" in result.notes[0]


@pytest.mark.parametrize("km", ["sqlite"], indirect=True)
def test_tokens_survive_the_sqlite_store(km: KeyManager, tsa: TestTsa) -> None:
    digest, envelope = signed(km)
    bare = tsa.reply(envelope.signatures[0].sig, token_only=True)
    km.timestamp_proof(digest, tokens=[bare, bare])  # the same token twice is kept once
    compromise(km, "stolen", km.clock.now() + HOUR)
    assert km.proof_timestamps(digest) == (bare,)
    assert km.verify(digest).ok
    status = km.anchor_status(km.list_anchors()[0].anchor_id)
    assert status.proofs_total == status.proofs_verified == 1
    assert status.pending_rescans == 0


# --- tokens and the verifier --------------------------------------------------------------------


def test_response_and_bare_token_are_both_accepted(tsa: TestTsa) -> None:
    data = b"signature bytes"
    verifier = RFC3161Verifier.from_pem_files([tsa.root_pem])
    response = parse_token(tsa.reply(data))
    bare = parse_token(tsa.reply(data, token_only=True))
    for token in (response, bare):
        assert verifier.verify(token, data).ok
        # What we store is the bare token, which parses to the same thing.
        assert parse_token(token.der) == token
    assert response.der != tsa.reply(data)  # the TimeStampResp wrapper was dropped


@pytest.mark.parametrize("digest", ["sha256", "sha384", "sha512"])
def test_imprint_hash_algorithms(tsa: TestTsa, digest: str) -> None:
    data = b"signature bytes"
    token = parse_token(tsa.reply(data, digest=digest))
    assert token.hash_algorithm == digest and token.covers(data)
    verifier = RFC3161Verifier.from_pem_files([tsa.root_pem])
    checked = verifier.verify(token, data)
    assert checked.ok and checked.time is not None
    assert checked.time.at == token.gen_time + timedelta(seconds=1)  # genTime + accuracy
    assert "other bytes" in (verifier.verify(token, data + b"x").failure or "")


@pytest.mark.parametrize(
    ("der", "match"),
    [
        (b"", "truncated"),
        (b"\x30\x03\x02\x01", "past the end"),
        (b"-----BEGIN TIMESTAMP-----", "PEM or text"),
        (b"\x30\x03\x02\x01\x00trailing", "single DER SEQUENCE"),
        (bytes.fromhex("300d300b02010230060c0462757379"), "refused: status rejection"),
        (bytes.fromhex("3005300302010" + "0"), "no timestamp token"),
        (bytes.fromhex("300f06092a864886f70d010702a0023000"), "malformed"),
    ],
)
def test_malformed_tokens_are_a_typed_error(km: KeyManager, der: bytes, match: str) -> None:
    with pytest.raises(TimestampError, match=match):
        parse_token(der)
    digest, _ = signed(km, ("k",))
    with pytest.raises(TimestampError):
        km.verify(digest, timestamps=[der])


def test_timestamping_config(tmp_path: Path, tsa: TestTsa) -> None:
    home = tmp_path
    (home / "roots").mkdir()
    (home / "roots" / "tsa.pem").write_bytes(tsa.root_pem.read_bytes())
    doc = {"timestamping": {"tsaRoots": ["roots/tsa.pem"], "tsaUrl": "http://tsa", "timeout": "5s"}}
    config = TimestampingConfig.from_document(doc, home)
    assert config.tsa_roots == (home / "roots" / "tsa.pem",) and config.timeout == 5
    assert config.tsa_url == "http://tsa" and config.verifier() is not None
    assert TimestampingConfig.from_document({}, home).verifier() is None
    for bad in ({"tsaRoots": 3}, {"hashAlgorithm": "md5"}, {"timeout": "soon"}, ["x"]):
        with pytest.raises(ConfigError):
            TimestampingConfig.from_document({"timestamping": bad}, home)
    with pytest.raises(ConfigError, match="cannot read TSA root"):
        TimestampingConfig.from_document(
            {"timestamping": {"tsaRoots": ["missing.pem"]}}, home
        ).verifier()


# --- requesting from a TSA over HTTP ------------------------------------------------------------


def test_sign_with_a_tsa_stores_the_proof_with_its_tokens(
    km: KeyManager, tsa_url: tuple[str, list[str]]
) -> None:
    url, requests = tsa_url
    for key in ("stolen", "honest"):
        km.generate_key(key)
    km.create_anchor("pkg:npm/*", ["stolen", "honest"], [EVIDENCE])
    clock(km).set(datetime.now(UTC))
    payload = Statement((Subject("pkg:npm/a@1", {"sha256": "cd" * 32}),), EVIDENCE, {}).to_json()
    digest = km.sign(payload, ["stolen", "honest"], timestamp_url=f"{url}/tsa")
    assert len(km.proof_timestamps(digest)) == 2  # one per signature
    assert requests[-1] == "application/timestamp-query"
    compromise(km, "stolen", km.clock.now() + HOUR)
    policy = VerificationPolicy(threshold=2, require_trusted_time=True)
    result = km.verify(digest, policy=policy)
    assert result.ok and result.time_source is TimeSource.TRUSTED
    stamped = [e for e in km.audit_events() if e.event_type == "PROOF_TIMESTAMPED"]
    assert {e.key_id for e in stamped} == {"stolen", "honest"}
    assert all(e.details["tsaUrl"] == f"{url}/tsa" for e in stamped)


def test_timestamp_add_from_a_tsa(km: KeyManager, tsa_url: tuple[str, list[str]]) -> None:
    url, _ = tsa_url
    digest, _ = signed(km)
    added = km.timestamp_proof(digest, tsa_url=f"{url}/tsa")
    assert [a.signature_index for a in added] == [0] and added[0].verified
    compromise(km, "stolen", km.clock.now() + HOUR)
    assert km.verify(digest).ok


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("/reject", "refused: status rejection"),
        ("/garbage", "malformed"),
        ("/nowhere", "HTTP 404"),
        ("/stale", "another nonce"),
    ],
)
def test_tsa_failures_store_nothing(
    km: KeyManager, tsa_url: tuple[str, list[str]], path: str, match: str
) -> None:
    url, _ = tsa_url
    km.generate_key("k")
    clock(km).set(datetime.now(UTC))
    with pytest.raises(TimestampError, match=match):
        km.sign(b"payload", "k", "text/plain", timestamp_url=url + path)
    with km.store.read() as tx:
        assert list(tx.iter_proofs()) == []  # signed, but nothing stored
    assert not [e for e in km.audit_events() if e.event_type.startswith("PROOF_")]


def test_tsa_token_is_verified_at_request_time(
    km: KeyManager, tsa: TestTsa, tsa_url: tuple[str, list[str]]
) -> None:
    url, _ = tsa_url
    digest, _ = signed(km)
    # Another process on the same store, trusting only another TSA root.
    other = KeyManager(
        km.store,
        clock=km.clock,
        timestamp_verifier=RFC3161Verifier.from_pem_files([tsa.other_root_pem]),
        owns_store=False,
    )
    with pytest.raises(TimestampError, match="does not chain"):
        other.timestamp_proof(digest, tsa_url=f"{url}/tsa")
    with pytest.raises(TimestampError, match="cannot reach"):
        km.timestamp_proof(digest, tsa_url="http://127.0.0.1:9/tsa")
    with pytest.raises(TimestampError, match="http or https"):
        km.timestamp_proof(digest, tsa_url="file:///etc/passwd")
    assert km.proof_timestamps(digest) == ()


# --- CLI ----------------------------------------------------------------------------------------


@pytest.fixture
def run(tmp_path: Path) -> Iterator[object]:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = {
        "STELLAKEYS_HOME": str(home),
        "STELLAKEYS_PASSPHRASE": "cli-trusted-time",
        "STELLAKEYS_ACTOR": "ops@example.com",
        "STELLAKEYS_CONFIG": "",
    }
    runner = CliRunner()

    def invoke(*args: str, input: bytes | None = None, ok: bool = True) -> Result:
        result = runner.invoke(cli, list(args), env=env, input=input, catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    invoke.home = home  # type: ignore[attr-defined]
    yield invoke


def test_cli_sign_timestamp_and_verify(  # type: ignore[no-untyped-def]
    run, tsa: TestTsa, tsa_url: tuple[str, list[str]], tmp_path: Path
) -> None:
    url = f"{tsa_url[0]}/tsa"
    root = str(tsa.root_pem)
    run("key", "generate", "--key-id", "k")
    stamped = run("sign", "--key-id", "k", "--timestamp", url, "--tsa-root", root, input=b"a\n")
    digest = stamped.output.strip()
    ok = run("verify", "--proof-bundle", digest, "--require-trusted-time", "--tsa-root", root)
    assert "OK" in ok.output and "(trusted)" in ok.output and "CN=StellaKeys Test TSA" in ok.output
    # Without the root, the token proves nothing.
    no_roots = run("verify", "--proof-bundle", digest, "--require-trusted-time", ok=False)
    assert no_roots.exit_code == 1 and "no TSA roots are configured" in no_roots.output

    # A proof signed without a timestamp gets one afterwards: from the TSA, or from a file.
    plain = json.loads(run("sign", "--key-id", "k", "--json", input=b"b\n").output)
    unstamped = run("verify", "--proof-bundle", plain["proof"], "--require-trusted-time", ok=False)
    assert unstamped.exit_code == 1 and "policy requires trusted time" in unstamped.output
    added = run(
        "timestamp", "add", "--proof-bundle", plain["proof"], "--tsa", url, "--tsa-root", root
    )
    assert "verified" in added.output
    other = json.loads(run("sign", "--key-id", "k", "--json", input=b"c\n").output)
    sig = base64.b64decode(other["envelope"]["signatures"][0]["sig"])
    token_file = tmp_path / "token.tsr"
    token_file.write_bytes(tsa.reply(sig))
    # The roots from the config file this time.
    home: Path = run.home
    (home / "signer.yaml").write_text(f"timestamping:\n  tsaRoots: [{tsa.root_pem}]\n")
    run("timestamp", "add", "--proof-bundle", other["proof"], "--token", str(token_file))
    for proof in (plain["proof"], other["proof"]):
        result = json.loads(
            run("verify", "--proof-bundle", proof, "--require-trusted-time", "--json").output
        )
        assert result["ok"] and result["timeSource"] == "trusted"
    listed = json.loads(run("timestamp", "list", "--proof-bundle", other["proof"], "--json").output)
    assert [t["verified"] for t in listed["timestamps"]] == [True]
    # An envelope given as JSON brings its stored tokens; --timestamp adds more.
    envelope_file = tmp_path / "envelope.json"
    envelope_file.write_text(json.dumps(other["envelope"]))
    assert run("verify", "--envelope", str(envelope_file), "--require-trusted-time")
    with pytest.raises(TimestampError, match="malformed timestamp"):  # main() prints it
        run("timestamp", "add", "--proof-bundle", digest, "--token", str(envelope_file))
