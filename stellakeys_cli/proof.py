"""``stellaops proof ...``: stored proofs in other tools' formats."""

from __future__ import annotations

from pathlib import Path

import click

from stellakeys_cli.context import manager
from stellakeys_cli.params import PROOF_ADDRESS


@click.group()
def proof() -> None:
    """Stored proofs in other tools' formats."""


@proof.command("export")
@click.option(
    "--proof-bundle", required=True, type=PROOF_ADDRESS, help="sha256:... address of the proof."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["sigstore-bundle", "dsse"]),
    default="sigstore-bundle",
    show_default=True,
    help="Sigstore bundle v0.3 (envelope, key hint, RFC 3161 timestamps) or the bare envelope.",
)
@click.option("--output", type=click.Path(dir_okay=False), help="Write here instead of stdout.")
def export(proof_bundle: str, fmt: str, output: str | None) -> None:
    """Export a stored proof (docs/interop.md)."""
    from stellakeys.sigstore_bundle import bundle_json, export_bundle

    m = manager()
    if fmt == "sigstore-bundle":
        data = bundle_json(export_bundle(m, proof_bundle))
    else:
        data = m.get_proof(proof_bundle).to_json() + b"\n"
    if output is None:
        click.echo(data.decode("utf-8"), nl=False)
    else:
        Path(output).write_bytes(data)
