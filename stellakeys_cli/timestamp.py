"""``stellaops timestamp``: RFC 3161 tokens (trusted time) for stored proofs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from stellakeys_cli.context import emit_json, json_option, manager
from stellakeys_cli.params import PROOF_ADDRESS

if TYPE_CHECKING:
    from stellakeys.timestamp import RFC3161Verifier

#: ``--tsa-root`` for every command that verifies tokens; it replaces the configured roots.
tsa_root_option = click.option(
    "--tsa-root",
    "tsa_roots",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True),
    help="PEM file of a TSA root to trust (repeatable; default: timestamping.tsaRoots).",
)


def verifier_from(tsa_roots: Sequence[str]) -> RFC3161Verifier | None:
    """A verifier for ``--tsa-root`` files, or None to use the configured roots."""
    if not tsa_roots:
        return None
    from stellakeys.timestamp import RFC3161Verifier

    return RFC3161Verifier.from_pem_files(list(tsa_roots))


def _read_token(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror}") from None


@click.group()
def timestamp() -> None:
    """RFC 3161 timestamps over a proof's signatures (trusted time)."""


@timestamp.command("add")
@click.option(
    "--proof-bundle",
    required=True,
    type=PROOF_ADDRESS,
    help="sha256:... address of a stored proof.",
)
@click.option("--tsa", "tsa_url", help="TSA URL to request a token per signature from.")
@click.option(
    "--token",
    "token_paths",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="DER token file (TimeStampResp or bare TimeStampToken); repeatable.",
)
@tsa_root_option
@json_option
def add(
    proof_bundle: str,
    tsa_url: str | None,
    token_paths: tuple[str, ...],
    tsa_roots: tuple[str, ...],
    as_json: bool,
) -> None:
    """Store timestamp tokens with a proof (verified first when TSA roots are known)."""
    m = manager()
    tokens = [_read_token(p) for p in token_paths]
    if not tsa_url and not tokens:
        tsa_url = m.timestamping().tsa_url
        if not tsa_url:
            raise click.UsageError("give --tsa URL or --token FILE (or timestamping.tsaUrl)")
    added = m.timestamp_proof(
        proof_bundle.strip(), tsa_url=tsa_url, tokens=tokens, verifier=verifier_from(tsa_roots)
    )
    if as_json:
        emit_json({"proof": proof_bundle.strip(), "timestamps": [a.to_dict() for a in added]})
        return
    for a in added:
        status = "verified" if a.verified else "stored unverified (no TSA roots configured)"
        click.echo(
            f"signature {a.signature_index} ({a.keyid or 'no keyid'}): {a.token.describe()}"
            f" - {status}"
        )


@timestamp.command("list")
@click.option(
    "--proof-bundle",
    required=True,
    type=PROOF_ADDRESS,
    help="sha256:... address of a stored proof.",
)
@tsa_root_option
@json_option
def list_(proof_bundle: str, tsa_roots: tuple[str, ...], as_json: bool) -> None:
    """Show the tokens stored with a proof and whether each verifies now."""
    from stellakeys.timestamp import parse_token

    m = manager()
    digest = proof_bundle.strip()
    envelope = m.get_proof(digest)
    verifier = verifier_from(tsa_roots) or m.timestamping().verifier()
    rows: list[dict[str, Any]] = []
    for der in m.proof_timestamps(digest):
        token = parse_token(der)
        covered = [i for i, s in enumerate(envelope.signatures) if token.covers(s.sig)]
        failure: str | None = "covers none of the proof's signatures"
        if covered:
            failure = "no TSA roots configured"
            if verifier is not None:
                failure = verifier.verify(token, envelope.signatures[covered[0]].sig).failure
        rows.append(
            {
                **token.to_dict(),
                "signatures": covered,
                "verified": failure is None,
                "failure": failure,
            }
        )
    if as_json:
        emit_json({"proof": digest, "timestamps": rows})
        return
    if not rows:
        click.echo(f"no timestamps stored with {digest}")
    for row in rows:
        sigs = ",".join(map(str, row["signatures"])) or "-"
        state = "OK" if row["verified"] else f"NOT VERIFIED: {row['failure']}"
        click.echo(f"{row['genTime']}  {row['tsa']}  serial {row['serial']}  sig {sigs}  {state}")
