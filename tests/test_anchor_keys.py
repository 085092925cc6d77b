"""Compiled anchor keys (stellakeys.anchor_keys): looking up only the keys a signature names
must give exactly the verdict of trying every key of the anchor, whatever the hints say.

A signature's keyid is unauthenticated: a hostile signer can name another key of the anchor,
a key of no anchor, or nothing. The reference is the same envelope with every hint removed
(then every key is tried, as before the compiled view existed).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stellakeys.anchor_keys import AnchorKeys
from stellakeys.anchors import KeyHistoryEntry, TrustAnchor
from stellakeys.crypto import PrivateKey, get_algorithm
from stellakeys.dsse import Envelope, Signature, sign_envelope
from stellakeys.intoto import PAYLOAD_TYPE, Statement, Subject
from stellakeys.signing_time import SigningTime, TimeSource
from stellakeys.verification import (
    VerificationPolicy,
    VerificationResult,
    evaluate,
    key_wide_compromises,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
AID = uuid.UUID(int=7)
PURL = "pkg:npm/app@1.0.0"
EVIDENCE = "evidence.stella/v1"
KEYS: list[PrivateKey] = [get_algorithm("ed25519").generate() for _ in range(5)]
OUTSIDER = get_algorithm("ed25519").generate()
PAYLOAD = Statement((Subject(PURL, {"sha256": "ab" * 32}),), EVIDENCE, {}).to_json()


def _judge_for_purl(
    envelope: Envelope,
    anchor: TrustAnchor,
    time: SigningTime,
    keys: AnchorKeys | None,
    policy: VerificationPolicy | None = None,
    compromises: Mapping[str, datetime] | None = None,
) -> VerificationResult:
    """``evaluate`` of ``envelope`` for PURL against ``anchor`` (keys compiled or not)."""
    return evaluate(
        envelope,
        digest=None,
        time=time,
        policy=policy or VerificationPolicy(),
        anchor=anchor,
        purl=PURL,
        predicate_type=EVIDENCE,
        compromises=compromises,
        keys=keys,
    )


entry = st.builds(
    lambda k, start, length, revoked, reason, key_id: KeyHistoryEntry(
        anchor_id=AID,
        key_id=key_id or f"key-{k}",
        algorithm="ed25519",
        public_key_pem=KEYS[k].public_key().to_pem(),
        fingerprint=KEYS[k].fingerprint,
        added_at=T0 + timedelta(days=start),
        revoked_at=T0 + timedelta(days=start + length) if revoked else None,
        revoke_reason=reason if revoked else None,
    ),
    st.integers(0, 4),
    st.integers(0, 20),
    st.integers(1, 20),
    st.booleans(),
    st.sampled_from(["rotation", "superseded", "compromise"]),
    st.sampled_from([None, None, None, "shared-id"]),
)


def _hint(choice: str, signer: int, history: tuple[KeyHistoryEntry, ...]) -> str | None:
    if choice == "none":
        return None
    if choice == "fingerprint":
        return KEYS[signer].fingerprint if signer >= 0 else OUTSIDER.fingerprint
    if choice == "other" and history:
        return history[0].key_id  # perhaps not the signer's: a lie
    if choice == "unknown":
        return "no-such-key"
    own = [e.key_id for e in history if signer >= 0 and e.fingerprint == KEYS[signer].fingerprint]
    return own[0] if own else "no-such-key"


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=st.lists(entry, min_size=1, max_size=8).map(tuple),
    signers=st.lists(st.integers(-1, 4), min_size=1, max_size=3),
    hints=st.lists(
        st.sampled_from(["own", "fingerprint", "other", "unknown", "none"]), min_size=3, max_size=3
    ),
    day=st.integers(0, 45),
    threshold=st.integers(1, 2),
    trusted=st.booleans(),
)
def test_hinted_lookup_gives_the_verdict_of_trying_every_key(
    history: tuple[KeyHistoryEntry, ...],
    signers: list[int],
    hints: list[str],
    day: int,
    threshold: int,
    trusted: bool,
) -> None:
    anchor = TrustAnchor(AID, "pkg:npm/*", (EVIDENCE,), "v1", T0, history)
    signing = [KEYS[s] if s >= 0 else OUTSIDER for s in signers]
    bare = sign_envelope(PAYLOAD_TYPE, PAYLOAD, signing)
    hinted = attrs.evolve(
        bare,
        signatures=tuple(
            Signature(sig.sig, _hint(hints[i], signers[i], history))
            for i, sig in enumerate(bare.signatures)
        ),
    )
    unhinted = attrs.evolve(bare, signatures=tuple(Signature(s.sig, None) for s in bare.signatures))
    compromises = key_wide_compromises(history)
    time = SigningTime(
        T0 + timedelta(days=day), TimeSource.TRUSTED if trusted else TimeSource.ASSERTED
    )
    policy = VerificationPolicy(threshold=threshold)

    def judge(envelope: Envelope, keys: AnchorKeys | None) -> tuple[object, ...]:
        result = _judge_for_purl(envelope, anchor, time, keys, policy, compromises)
        return (
            result.ok,
            sorted(r.code for r in result.reasons),
            sorted(k.fingerprint for k in result.verified_keys),
        )

    reference = judge(unhinted, None)
    fast, built = judge(hinted, AnchorKeys(history, compromises)), judge(hinted, None)
    # The verdict and the keys counted always agree. The reasons too, unless one key id names
    # two keys in the anchor (a store written around the library): then which entry explains
    # a rejection depends on the order the keys were tried, not on whether the proof counts.
    ids = {}
    consistent = all(ids.setdefault(e.key_id, e.fingerprint) == e.fingerprint for e in history)
    for got in (fast, built):
        if consistent:
            assert got == reference
        else:
            assert (got[0], got[2]) == (reference[0], reference[2])


def test_a_verification_looks_only_at_the_named_key_of_a_long_history() -> None:
    """300 rotations: the keyring is built from the one entry the signature names."""
    keys = [get_algorithm("ed25519").generate() for _ in range(300)]
    history = tuple(
        KeyHistoryEntry(
            anchor_id=AID,
            key_id=f"key-{i}",
            algorithm="ed25519",
            public_key_pem=k.public_key().to_pem(),
            fingerprint=k.fingerprint,
            added_at=T0 + timedelta(days=i),
            revoked_at=T0 + timedelta(days=i + 1) if i < 299 else None,
            revoke_reason="rotation" if i < 299 else None,
        )
        for i, k in enumerate(keys)
    )
    compiled = AnchorKeys(history, {})
    seen: list[int] = []
    original = AnchorKeys.keyring_at

    def counting(entries: object, at: SigningTime, require: bool) -> object:
        seen.append(len(entries))  # type: ignore[arg-type]
        return original(entries, at, require)  # type: ignore[arg-type]

    envelope = sign_envelope(PAYLOAD_TYPE, PAYLOAD, [keys[-1]])  # keyid: the fingerprint
    anchor = TrustAnchor(AID, "pkg:npm/*", (EVIDENCE,), "v1", T0, history)
    AnchorKeys.keyring_at = staticmethod(counting)  # type: ignore[assignment,method-assign]
    try:
        at = SigningTime(T0 + timedelta(days=400), TimeSource.ASSERTED)
        result = _judge_for_purl(envelope, anchor, at, compiled)
    finally:
        AnchorKeys.keyring_at = staticmethod(original)  # type: ignore[method-assign]
    assert result.ok
    assert seen == [1]


def test_two_keys_under_one_id_are_both_kept() -> None:
    """Found by hypothesis: an anchor (written around the library) holding two keys under one
    key id. The ring keyed by id kept only the later one, so a valid signature by the earlier
    key failed when every key was tried and passed when the hint narrowed the ring. Both keys
    are usable at T: both paths must verify it, and report the same key."""
    first, second = KEYS[0], KEYS[1]

    def member(key: PrivateKey, key_id: str) -> KeyHistoryEntry:
        return KeyHistoryEntry(
            anchor_id=AID,
            key_id=key_id,
            algorithm="ed25519",
            public_key_pem=key.public_key().to_pem(),
            fingerprint=key.fingerprint,
            added_at=T0,
        )

    history = (member(first, "shared-id"), member(second, "shared-id"))
    anchor = TrustAnchor(AID, "pkg:npm/*", (EVIDENCE,), "v1", T0, history)
    for signer in (first, second):
        bare = sign_envelope(PAYLOAD_TYPE, PAYLOAD, [signer])
        for hint in (None, "shared-id", signer.fingerprint):
            envelope = attrs.evolve(bare, signatures=(Signature(bare.signatures[0].sig, hint),))
            for keys in (None, AnchorKeys(history, {})):
                at = SigningTime(T0 + timedelta(days=1), TimeSource.ASSERTED)
                result = _judge_for_purl(envelope, anchor, at, keys)
                assert result.ok, (hint, result.reasons)
                assert [k.fingerprint for k in result.verified_keys] == [signer.fingerprint]
