"""Algorithm options as keyword arguments (issue 18): declared on the base type, taken by
get_algorithm and every loader, refused clearly by an algorithm that has no such option."""

from __future__ import annotations

import pytest

import stellakeys
from stellakeys.crypto import (
    Algorithm,
    algorithms,
    get_algorithm,
    load_private_key_pem,
    load_public_key_der,
    load_public_key_pem,
)
from stellakeys.crypto._gost import PARAMSET_OIDS, PARAMSETS
from stellakeys.crypto._sm2 import DEFAULT_DISTINGUISHING_ID
from stellakeys.errors import AlgorithmOptionError, StellaKeysError, UnsupportedKeyError

MESSAGE = b"options are part of the algorithm"
PASSPHRASE = b"options-passphrase"


def test_options_are_declared_on_the_base_type() -> None:
    assert Algorithm.options == ()
    assert callable(Algorithm.with_options)
    declared = {a.id: a.options for a in algorithms()}
    assert declared["sm2-sm3"] == ("distinguishing_id",)
    assert declared["gost-r-34.10-2012-256"] == ("paramset",)
    assert declared["gost-r-34.10-2012-512"] == ("paramset",)
    assert all(opts == () for alg, opts in declared.items() if not alg.startswith(("sm2", "gost")))


@pytest.mark.parametrize("alg", [a.id for a in algorithms()])
def test_an_option_the_algorithm_lacks_is_refused_by_name(alg: str) -> None:
    lacking = "paramset" if alg == "sm2-sm3" else "distinguishing_id"
    value = "A" if lacking == "paramset" else b"id"
    with pytest.raises(AlgorithmOptionError, match=rf"{alg} has no option {lacking}") as info:
        get_algorithm(alg, **{lacking: value})  # type: ignore[arg-type]
    assert isinstance(info.value, StellaKeysError) and isinstance(info.value, ValueError)
    if alg.startswith(("ed25519", "ecdsa", "ml-dsa")):
        assert "it takes no options" in str(info.value)


def test_no_option_given_is_the_registered_algorithm() -> None:
    for alg in algorithms():
        assert get_algorithm(alg.id) is alg
        assert get_algorithm(alg.id, distinguishing_id=None, paramset=None) is alg


def test_sm2_distinguishing_id_keyword_signs_and_verifies_with_that_id() -> None:
    alice = get_algorithm("sm2-sm3", distinguishing_id="ALICE123@YAHOO.COM")
    assert alice.options == ("distinguishing_id",)
    key = alice.generate()
    signature = key.sign(MESSAGE)
    pem = key.public_key().to_pem()

    # The same ID through each loader verifies; the default ID does not.
    for loaded in (
        load_public_key_pem(pem, distinguishing_id=b"ALICE123@YAHOO.COM"),
        load_public_key_der(key.public_key().spki_der, distinguishing_id="ALICE123@YAHOO.COM"),
    ):
        assert loaded.is_valid(signature, MESSAGE)
    assert not load_public_key_pem(pem).is_valid(signature, MESSAGE)

    private_pem = key.to_encrypted_pem(PASSPHRASE)
    reloaded = load_private_key_pem(private_pem, PASSPHRASE, distinguishing_id="ALICE123@YAHOO.COM")
    assert key.public_key().is_valid(reloaded.sign(MESSAGE), MESSAGE)
    default = load_private_key_pem(private_pem, PASSPHRASE)
    assert not key.public_key().is_valid(default.sign(MESSAGE), MESSAGE)
    assert get_algorithm("sm2").distinguishing_id == DEFAULT_DISTINGUISHING_ID  # type: ignore[attr-defined]


def test_sm2_distinguishing_id_limits() -> None:
    get_algorithm("sm2-sm3", distinguishing_id=b"")  # OpenSSL CLI's empty ID is allowed
    with pytest.raises(AlgorithmOptionError, match="limited to 8190 bytes"):
        get_algorithm("sm2-sm3", distinguishing_id=b"x" * 8191)
    with pytest.raises(AlgorithmOptionError, match="bytes or text"):
        get_algorithm("sm2-sm3", distinguishing_id=1234)  # type: ignore[arg-type]


@pytest.mark.parametrize(("bits", "paramset"), [(256, "TCA"), (256, "B"), (512, "C")])
def test_gost_paramset_keyword_generates_on_it_and_loaders_check_it(
    bits: int, paramset: str
) -> None:
    alg = get_algorithm(f"gost-r-34.10-2012-{bits}", paramset=paramset)
    key = alg.generate()
    public = key.public_key()
    assert public.paramset_oid == PARAMSET_OIDS[bits][paramset]  # type: ignore[attr-defined]
    assert load_public_key_pem(public.to_pem(), paramset=paramset) == public
    other = next(p for p in PARAMSETS[bits] if p != paramset)
    with pytest.raises(UnsupportedKeyError, match=f"not {other}"):
        load_public_key_pem(public.to_pem(), paramset=other)
    private_pem = key.to_encrypted_pem(PASSPHRASE)
    assert load_private_key_pem(private_pem, PASSPHRASE, paramset=paramset).fingerprint == (
        key.fingerprint
    )
    with pytest.raises(UnsupportedKeyError):
        load_private_key_pem(private_pem, PASSPHRASE, paramset=other)


def test_gost_paramset_names_match_the_keys_the_engine_makes() -> None:
    for bits, names in PARAMSETS.items():
        assert set(PARAMSET_OIDS[bits]) == set(names)
        for name in names:
            key = get_algorithm(f"gost-r-34.10-2012-{bits}", paramset=name).generate()
            assert key.public_key().paramset_oid == PARAMSET_OIDS[bits][name]  # type: ignore[attr-defined]


def test_unknown_gost_paramset_is_refused() -> None:
    with pytest.raises(
        AlgorithmOptionError, match=r"unknown paramset 'TCA' for gost-r-34\.10-2012-512"
    ):
        get_algorithm("gost-r-34.10-2012-512", paramset="TCA")


def test_options_on_loaders_of_keys_without_them_are_refused() -> None:
    key = get_algorithm("ed25519").generate()
    with pytest.raises(AlgorithmOptionError, match="ed25519 has no option paramset"):
        load_public_key_pem(key.public_key().to_pem(), paramset="A")
    with pytest.raises(AlgorithmOptionError, match="ed25519 has no option distinguishing_id"):
        load_private_key_pem(key.to_encrypted_pem(PASSPHRASE), PASSPHRASE, distinguishing_id=b"x")


def test_every_loader_is_exported_from_the_package() -> None:
    for name in (
        "get_algorithm",
        "load_public_key_pem",
        "load_public_key_der",
        "load_private_key_pem",
        "algorithm_of_spki",
        "fingerprint_of_spki",
        "AlgorithmOptionError",
    ):
        assert name in stellakeys.__all__
        assert getattr(stellakeys, name) is not None
