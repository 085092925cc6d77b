"""sigstore-js <-> stellakeys Sigstore bundles (Node 20.17+, packages from the npm registry).

* Our bundle (DSSE envelope, key hint, RFC 3161 token from a real ``openssl ts`` TSA) is
  verified by ``@sigstore/verify`` trusting exactly our public key and the TSA's chain.
* A bundle made by ``@sigstore/sign``'s DSSEBundleBuilder with a key-based signer is verified
  by stellakeys (the key imported and placed in an anchor: the hint selects nothing).

The npm packages (tests/interop/sigstore_js/package.json, exact versions) come from
``STELLAKEYS_SIGSTORE_JS_MODULES`` (a node_modules directory; .ci/run installs one) or are
installed by ``npm ci`` (the committed package-lock.json) into a temporary directory.
No node or npm fails the test.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from node_support import npm_ci
from tsa_support import TestTsa, manager_trusting

from stellakeys import FrozenClock, KeyManager, Statement, Subject, TimeSource
from stellakeys.sigstore_bundle import bundle_json, export_bundle, read_bundle, verify_bundle

HERE = Path(__file__).parent / "sigstore_js"
EVIDENCE = "evidence.stella/v1"
INTOTO = "application/vnd.in-toto+json"
KEY_DETAILS = {"ed25519": "PKIX_ED25519", "ecdsa-p256-sha256": "PKIX_ECDSA_P256_SHA_256"}


@pytest.fixture(scope="module")
def node_modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("STELLAKEYS_SIGSTORE_JS_MODULES")
    if given:
        return Path(given)
    return npm_ci(HERE, tmp_path_factory.mktemp("sigstore-js"))


def node(node_modules: Path, script: str, *args: str | Path, **env: str) -> str:
    proc = subprocess.run(
        ["node", str(HERE / script), *map(str, args)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "NODE_PATH": str(node_modules), **env},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def tsa(openssl, tmp_path_factory: pytest.TempPathFactory) -> TestTsa:  # type: ignore[no-untyped-def]
    return TestTsa(tmp_path_factory.mktemp("tsa"), openssl)


@pytest.fixture
def km(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tsa: TestTsa) -> Iterator[KeyManager]:
    monkeypatch.setenv("STELLAKEYS_PASSPHRASE", "sigstore-js-passphrase")
    manager = manager_trusting(tsa, tmp_path / "home")
    yield manager
    manager.close()


def statement(purl: str = "pkg:npm/app@1.0.0") -> bytes:
    return Statement((Subject(purl, {"sha256": "ab" * 32}),), EVIDENCE, {"k": "v"}).to_json()


def sigstore_js_verifies(
    node_modules: Path, tmp_path: Path, bundle: dict[str, Any], pem: str, hint: str,
    alg: str, tsa: TestTsa | None,
) -> dict[str, Any]:  # fmt: skip
    bundle_path, key_path = tmp_path / "bundle.json", tmp_path / "key.pem"
    bundle_path.write_bytes(bundle_json(bundle))
    key_path.write_text(pem)
    chain = [tsa.dir / "tsa.pem", tsa.dir / "intermediate.pem", tsa.root_pem] if tsa else []
    out = node(node_modules, "verify.js", bundle_path, key_path, hint, *chain,
               KEY_DETAILS=KEY_DETAILS[alg])  # fmt: skip
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.mark.parametrize("alg", sorted(KEY_DETAILS))
def test_sigstore_js_verifies_our_bundle_with_its_timestamp(
    km: KeyManager, tsa: TestTsa, node_modules: Path, tmp_path: Path, alg: str
) -> None:
    km.generate_key("js-key", algorithm=alg, profile="default" if alg == "ed25519" else "fips")
    km.create_anchor("pkg:npm/*", ["js-key"], [EVIDENCE])
    clock = km.clock
    assert isinstance(clock, FrozenClock)
    clock.set(datetime.now(UTC))
    digest = km.sign(statement(), "js-key", INTOTO)
    sig = km.get_proof(digest).signatures[0].sig
    km.timestamp_proof(digest, tokens=[tsa.reply(sig, token_only=True)])
    bundle = export_bundle(km, digest)
    pem = km.get_key("js-key").public_key_pem

    ok = sigstore_js_verifies(node_modules, tmp_path, bundle, pem, "js-key", alg, tsa)
    assert ok == {"ok": True}

    # sigstore-js really checks: another payload, another key, or a timestamp from a TSA it
    # does not trust is refused.
    tampered = json.loads(json.dumps(bundle))
    tampered["dsseEnvelope"]["payload"] = "e30="
    bad = sigstore_js_verifies(node_modules, tmp_path, tampered, pem, "js-key", alg, tsa)
    assert bad["ok"] is False and "SIGNATURE" in bad["code"]
    km.generate_key("other", algorithm=alg, profile="default" if alg == "ed25519" else "fips")
    wrong = sigstore_js_verifies(
        node_modules, tmp_path, bundle, km.get_key("other").public_key_pem, "js-key", alg, tsa
    )
    assert wrong["ok"] is False
    rogue = json.loads(json.dumps(bundle))
    rogue_token = tsa.reply(sig, signer="rogue")
    rogue["verificationMaterial"]["timestampVerificationData"]["rfc3161Timestamps"] = [
        {"signedTimestamp": base64.b64encode(rogue_token).decode()}
    ]
    untrusted = sigstore_js_verifies(node_modules, tmp_path, rogue, pem, "js-key", alg, tsa)
    assert untrusted["ok"] is False and "TIMESTAMP" in untrusted["code"]


@pytest.mark.parametrize("alg", sorted(KEY_DETAILS))
def test_bundle_from_sigstore_js_signer_verifies_here(
    km: KeyManager, node_modules: Path, tmp_path: Path, alg: str
) -> None:
    payload = tmp_path / "statement.json"
    payload.write_bytes(statement())
    out, key = tmp_path / "js.sigstore.json", tmp_path / "js.pem"
    node(node_modules, "sign.js", payload, INTOTO, "js-signer", alg, out, key)
    bundle = read_bundle(out.read_bytes())
    assert bundle.key_hint == "js-signer"
    assert bundle.envelope.payload == payload.read_bytes()

    # The key is not ours yet: the bundle's hint and key material prove nothing.
    assert not verify_bundle(km, out.read_bytes()).ok
    km.import_key("js-signer", key.read_text(), profile="default" if alg == "ed25519" else "fips")
    km.create_anchor("pkg:npm/*", ["js-signer"], [EVIDENCE])
    clock = km.clock
    assert isinstance(clock, FrozenClock)
    clock.set(datetime.now(UTC))
    result = verify_bundle(km, out.read_bytes())
    assert result.ok, result.reasons
    assert result.time_source is TimeSource.NOW  # no timestamp in this bundle
    assert [k.key_id for k in result.verified_keys] == ["js-signer"]
