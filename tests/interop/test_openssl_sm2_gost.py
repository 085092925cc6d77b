"""SM2 and GOST keys and signatures against the real OpenSSL 3 command line and gost engine.

Each direction is covered: keys made by ``openssl genpkey`` load in stellakeys and their CLI
signatures verify here; stellakeys signatures verify with ``openssl dgst -verify`` and
``openssl pkeyutl -verify``; stellakeys PEMs (public, encrypted private) load in OpenSSL.

SM2 and the distinguishing ID: OpenSSL 3.0's CLI hashes an *empty* ID unless told otherwise,
while stellakeys defaults to GB/T's ``1234567812345678``; the CLI side therefore always passes
``distid`` explicitly, and one test pins the CLI default so a change in OpenSSL is noticed.

A missing ``openssl`` or gost engine fails with what to install; nothing is skipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from stellakeys.crypto import get_algorithm, load_private_key_pem, load_public_key_pem
from stellakeys.crypto._base import der_from_pem
from stellakeys.crypto._gost import Gost, GostPublicKey
from stellakeys.crypto._sm2 import DEFAULT_DISTINGUISHING_ID, SM2_SM3
from stellakeys.errors import InvalidSignatureError, MalformedKeyError

PASSPHRASE = "interop passphrase"
MESSAGE = b"stellakeys <-> openssl\n" * 50
SM2_ID = DEFAULT_DISTINGUISHING_ID.decode()


class Cli:
    """The ``openssl`` command line, run without a shell; failures fail the test with stderr."""

    def __init__(self, executable: str) -> None:
        self.executable = executable

    def run(self, *args: str | Path) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([self.executable, *map(str, args)], capture_output=True, check=False)

    def __call__(self, *args: str | Path) -> bytes:
        proc = self.run(*args)
        if proc.returncode != 0:
            pytest.fail(
                f"openssl {' '.join(map(str, args))} exited {proc.returncode}: "
                f"{proc.stderr.decode(errors='replace')}"
            )
        return proc.stdout

    def verifies(self, *args: str | Path) -> bool:
        """Run a verify command: True on success, False on a clean verification failure."""
        proc = self.run(*args)
        out = (proc.stdout + proc.stderr).decode(errors="replace")
        if proc.returncode == 0:
            assert "Verified OK" in out or "Verified Successfully" in out, out
            return True
        assert "failure" in out.lower() or "Failure" in out, out
        return False


@pytest.fixture(scope="session")
def cli() -> Cli:
    """OpenSSL 3 with the gost engine, or a failure saying what to install."""
    executable = shutil.which("openssl")
    if executable is None:
        pytest.fail("the openssl command line is missing: install Debian package openssl")
    tool = Cli(executable)
    version = tool("version").decode()
    match = re.match(r"OpenSSL (\d+)\.", version)
    if match is None or int(match.group(1)) < 3:
        pytest.fail(f"OpenSSL 3 is required, found {version.strip()!r}: install Debian openssl")
    probe = tool.run("engine", "-t", "gost")
    if probe.returncode != 0 or b"available" not in probe.stdout:
        pytest.fail(
            "the OpenSSL gost engine is missing: install Debian package libengine-gost-openssl "
            f"({probe.stderr.decode(errors='replace').strip()})"
        )
    return tool


# case -> (stellakeys id, genpkey -algorithm and -pkeyopt, the dgst digest option)
GOST_CASES = {
    "gost256-A": ("gost-r-34.10-2012-256", ["gost2012_256", "paramset:A"], "-md_gost12_256"),
    "gost256-TCA": ("gost-r-34.10-2012-256", ["gost2012_256", "paramset:TCA"], "-md_gost12_256"),
    "gost512-A": ("gost-r-34.10-2012-512", ["gost2012_512", "paramset:A"], "-md_gost12_512"),
    "gost512-C": ("gost-r-34.10-2012-512", ["gost2012_512", "paramset:C"], "-md_gost12_512"),
}
ENGINE = ("-engine", "gost")


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


# --- SM2 --------------------------------------------------------------------------------------


@pytest.fixture
def sm2_cli_key(cli: Cli, tmp_path: Path) -> tuple[Path, Path]:
    key = tmp_path / "sm2.pem"
    cli("genpkey", "-algorithm", "SM2", "-out", key)
    pub = tmp_path / "sm2.pub.pem"
    cli("pkey", "-in", key, "-pubout", "-out", pub)
    return key, pub


def test_sm2_openssl_key_and_signatures_verify_in_stellakeys(
    cli: Cli, tmp_path: Path, sm2_cli_key: tuple[Path, Path]
) -> None:
    key_path, pub_path = sm2_cli_key
    key = load_private_key_pem(key_path.read_bytes(), None)
    public = load_public_key_pem(pub_path.read_bytes())
    assert key.algorithm is SM2_SM3 and public.algorithm is SM2_SM3
    assert key.public_key() == public
    msg = write(tmp_path / "msg", MESSAGE)

    dgst_sig = tmp_path / "dgst.sig"
    cli("dgst", "-sm3", "-sign", key_path, "-sigopt", f"distid:{SM2_ID}", "-out", dgst_sig, msg)
    public.verify(dgst_sig.read_bytes(), MESSAGE)

    pkeyutl_sig = tmp_path / "pkeyutl.sig"
    cli(
        "pkeyutl", "-sign", "-rawin", "-digest", "sm3", "-inkey", key_path,
        "-pkeyopt", f"distid:{SM2_ID}", "-in", msg, "-out", pkeyutl_sig,
    )  # fmt: skip
    public.verify(pkeyutl_sig.read_bytes(), MESSAGE)
    with pytest.raises(InvalidSignatureError):
        public.verify(pkeyutl_sig.read_bytes(), MESSAGE + b"x")


def test_sm2_openssl_cli_default_id_is_empty_in_openssl_3_0(
    cli: Cli, tmp_path: Path, sm2_cli_key: tuple[Path, Path]
) -> None:
    """Pins OpenSSL's CLI default: no ``distid`` means an empty ID, not 1234567812345678."""
    key_path, pub_path = sm2_cli_key
    msg = write(tmp_path / "msg", MESSAGE)
    sig = tmp_path / "default.sig"
    cli("dgst", "-sm3", "-sign", key_path, "-out", sig, msg)
    der = der_from_pem(pub_path.read_bytes(), "PUBLIC KEY")
    assert not SM2_SM3.load_public_der(der).is_valid(sig.read_bytes(), MESSAGE)
    SM2_SM3.with_distinguishing_id(b"").load_public_der(der).verify(sig.read_bytes(), MESSAGE)


@pytest.mark.parametrize("distinguishing_id", [DEFAULT_DISTINGUISHING_ID, b"ALICE123@YAHOO.COM"])
def test_sm2_stellakeys_signatures_verify_in_openssl(
    cli: Cli, tmp_path: Path, distinguishing_id: bytes
) -> None:
    alg = SM2_SM3.with_distinguishing_id(distinguishing_id)
    key = alg.generate()
    pub = write(tmp_path / "pub.pem", key.public_key().to_pem())
    msg = write(tmp_path / "msg", MESSAGE)
    sig = write(tmp_path / "sig", key.sign(MESSAGE))
    distid = f"distid:{distinguishing_id.decode()}"
    assert cli.verifies("dgst", "-sm3", "-verify", pub, "-sigopt", distid, "-signature", sig, msg)
    assert cli.verifies(
        "pkeyutl", "-verify", "-rawin", "-digest", "sm3", "-pubin", "-inkey", pub,
        "-pkeyopt", distid, "-in", msg, "-sigfile", sig,
    )  # fmt: skip
    # ... and OpenSSL agrees that the ID matters.
    assert not cli.verifies(
        "dgst", "-sm3", "-verify", pub, "-sigopt", "distid:someone-else", "-signature", sig, msg
    )
    tampered = write(tmp_path / "tampered", MESSAGE + b"!")
    assert not cli.verifies(
        "dgst", "-sm3", "-verify", pub, "-sigopt", distid, "-signature", sig, tampered
    )


def test_sm2_stellakeys_pems_load_in_openssl(cli: Cli, tmp_path: Path) -> None:
    key = SM2_SM3.generate()
    pub = write(tmp_path / "pub.pem", key.public_key().to_pem())
    assert cli("pkey", "-pubin", "-in", pub, "-outform", "DER") == key.public_key().spki_der
    enc = write(tmp_path / "key.pem", key.to_encrypted_pem(PASSPHRASE.encode()))
    text = cli("pkey", "-in", enc, "-passin", f"pass:{PASSPHRASE}", "-text", "-noout").decode()
    assert "ASN1 OID: SM2" in text
    derived = cli("pkey", "-in", enc, "-passin", f"pass:{PASSPHRASE}", "-pubout").decode()
    assert derived == key.public_key().to_pem()
    # OpenSSL signs with the key we exported; we verify.
    msg = write(tmp_path / "msg", MESSAGE)
    sig = tmp_path / "sig"
    cli(
        "dgst", "-sm3", "-sign", enc, "-passin", f"pass:{PASSPHRASE}",
        "-sigopt", f"distid:{SM2_ID}", "-out", sig, msg,
    )  # fmt: skip
    key.public_key().verify(sig.read_bytes(), MESSAGE)


def test_sm2_openssl_encrypted_pkcs8_loads(
    cli: Cli, tmp_path: Path, sm2_cli_key: tuple[Path, Path]
) -> None:
    key_path, pub_path = sm2_cli_key
    enc = tmp_path / "enc.pem"
    cli(
        "pkcs8", "-topk8", "-in", key_path, "-v2", "aes-256-cbc",
        "-passout", f"pass:{PASSPHRASE}", "-out", enc,
    )  # fmt: skip
    key = load_private_key_pem(enc.read_bytes(), PASSPHRASE.encode())
    assert key.public_key() == load_public_key_pem(pub_path.read_bytes())
    with pytest.raises(MalformedKeyError, match="wrong passphrase or corrupt PEM"):
        load_private_key_pem(enc.read_bytes(), b"not it")


# --- GOST -------------------------------------------------------------------------------------


def gost_cli_key(cli: Cli, tmp_path: Path, genpkey: list[str]) -> tuple[Path, Path]:
    algorithm, option = genpkey
    key = tmp_path / "gost.pem"
    cli("genpkey", *ENGINE, "-algorithm", algorithm, "-pkeyopt", option, "-out", key)
    pub = tmp_path / "gost.pub.pem"
    cli("pkey", *ENGINE, "-in", key, "-pubout", "-out", pub)
    return key, pub


@pytest.mark.parametrize("case", list(GOST_CASES))
def test_gost_openssl_key_and_signatures_verify_in_stellakeys(
    cli: Cli, tmp_path: Path, case: str
) -> None:
    name, genpkey, md = GOST_CASES[case]
    key_path, pub_path = gost_cli_key(cli, tmp_path, genpkey)
    key = load_private_key_pem(key_path.read_bytes(), None)
    public = load_public_key_pem(pub_path.read_bytes())
    assert key.algorithm is get_algorithm(name) and public.algorithm is key.algorithm
    assert key.public_key() == public
    msg = write(tmp_path / "msg", MESSAGE)

    sig = tmp_path / "dgst.sig"
    cli("dgst", *ENGINE, md, "-sign", key_path, "-out", sig, msg)
    public.verify(sig.read_bytes(), MESSAGE)
    with pytest.raises(InvalidSignatureError):
        public.verify(sig.read_bytes(), MESSAGE[:-1])

    digest = tmp_path / "digest"
    cli("dgst", *ENGINE, md, "-binary", "-out", digest, msg)
    raw_sig = tmp_path / "pkeyutl.sig"
    cli("pkeyutl", *ENGINE, "-sign", "-inkey", key_path, "-in", digest, "-out", raw_sig)
    public.verify(raw_sig.read_bytes(), MESSAGE)


@pytest.mark.parametrize("case", list(GOST_CASES))
def test_gost_stellakeys_signatures_verify_in_openssl(cli: Cli, tmp_path: Path, case: str) -> None:
    name, genpkey, md = GOST_CASES[case]
    paramset = genpkey[1].split(":", 1)[1]
    alg = get_algorithm(name)
    assert isinstance(alg, Gost)
    key = alg.generate(paramset=paramset)
    pub = write(tmp_path / "pub.pem", key.public_key().to_pem())
    msg = write(tmp_path / "msg", MESSAGE)
    sig = write(tmp_path / "sig", key.sign(MESSAGE))
    assert cli.verifies("dgst", *ENGINE, md, "-verify", pub, "-signature", sig, msg)
    digest = tmp_path / "digest"
    cli("dgst", *ENGINE, md, "-binary", "-out", digest, msg)
    assert cli.verifies(
        "pkeyutl", *ENGINE, "-verify", "-pubin", "-inkey", pub, "-in", digest, "-sigfile", sig
    )
    tampered = write(tmp_path / "tampered", MESSAGE + b"!")
    assert not cli.verifies("dgst", *ENGINE, md, "-verify", pub, "-signature", sig, tampered)


@pytest.mark.parametrize("case", list(GOST_CASES))
def test_gost_stellakeys_pems_load_in_openssl(cli: Cli, tmp_path: Path, case: str) -> None:
    name, genpkey, md = GOST_CASES[case]
    paramset = genpkey[1].split(":", 1)[1]
    alg = get_algorithm(name)
    assert isinstance(alg, Gost)
    key = alg.generate(paramset=paramset)
    public = key.public_key()
    assert isinstance(public, GostPublicKey)
    pub = write(tmp_path / "pub.pem", public.to_pem())
    assert cli("pkey", *ENGINE, "-pubin", "-in", pub, "-outform", "DER") == public.spki_der
    enc = write(tmp_path / "key.pem", key.to_encrypted_pem(PASSPHRASE.encode()))
    passin = ("-passin", f"pass:{PASSPHRASE}")
    derived = cli("pkey", *ENGINE, "-in", enc, *passin, "-pubout").decode()
    assert derived == public.to_pem()
    text = cli("pkey", *ENGINE, "-in", enc, *passin, "-text", "-noout").decode()
    assert "Parameter set:" in text
    msg = write(tmp_path / "msg", MESSAGE)
    sig = tmp_path / "sig"
    cli("dgst", *ENGINE, md, "-sign", enc, *passin, "-out", sig, msg)
    public.verify(sig.read_bytes(), MESSAGE)


@pytest.mark.parametrize("case", ["gost256-A", "gost512-A"])
def test_gost_openssl_encrypted_pkcs8_loads(cli: Cli, tmp_path: Path, case: str) -> None:
    name, genpkey, _ = GOST_CASES[case]
    key_path, pub_path = gost_cli_key(cli, tmp_path, genpkey)
    enc = tmp_path / "enc.pem"
    cli(
        "pkcs8", *ENGINE, "-topk8", "-in", key_path, "-v2", "aes-256-cbc",
        "-passout", f"pass:{PASSPHRASE}", "-out", enc,
    )  # fmt: skip
    key = load_private_key_pem(enc.read_bytes(), PASSPHRASE.encode())
    assert key.algorithm is get_algorithm(name)
    assert key.public_key() == load_public_key_pem(pub_path.read_bytes())
    with pytest.raises(MalformedKeyError, match="wrong passphrase or corrupt PEM"):
        load_private_key_pem(enc.read_bytes(), b"not it")
