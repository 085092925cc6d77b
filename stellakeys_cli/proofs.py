"""``stellaops sign`` and ``stellaops verify``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import click

from stellakeys_cli.context import (
    emit_json,
    json_option,
    manager,
    now,
    parse_time_option,
    read_input,
    state,
)
from stellakeys_cli.params import KEY_ID, PROOF_ADDRESS, parse_proof_address, shown

_OCTET_STREAM = "application/octet-stream"


def _statement_payload(
    data: bytes, subjects: tuple[str, ...], predicate_type: str | None, predicate: str | None
) -> bytes:
    from stellakeys.intoto import Statement, Subject

    if not predicate_type:
        raise click.UsageError("--subject needs --predicate-type")
    parsed_subjects = []
    for item in subjects:
        name, _, digest = item.partition("=")
        if digest:
            algo, _, hexdigest = digest.partition(":")
            hexdigest = hexdigest.lower()  # in-toto digests are lowercase hex
            if not algo or not hexdigest or not all(c in "0123456789abcdef" for c in hexdigest):
                raise click.UsageError(f"--subject {item!r}: digest must look like sha256:<hex>")
        else:
            algo, hexdigest = "sha256", hashlib.sha256(data).hexdigest()
        parsed_subjects.append(Subject(name, {algo: hexdigest}))
    body: Any = {}
    if predicate:
        text = Path(predicate[1:]).read_text("utf-8") if predicate.startswith("@") else predicate
        try:
            body = json.loads(text)
        except ValueError:
            raise click.UsageError("--predicate must be JSON or @file with JSON") from None
        if not isinstance(body, dict):
            raise click.UsageError("--predicate must be a JSON object")
    return Statement(tuple(parsed_subjects), predicate_type, body).to_json()


def _guess_payload_type(payload: bytes) -> str:
    from stellakeys.intoto import PAYLOAD_TYPE, looks_like_statement

    # Anything claiming a Statement _type is signed as in-toto, so verification parses it
    # (and refuses it if it is not a valid statement) instead of treating it as opaque bytes.
    return PAYLOAD_TYPE if looks_like_statement(payload) else _OCTET_STREAM


@click.command()
@click.option(
    "--key-id",
    "key_ids",
    required=True,
    multiple=True,
    type=KEY_ID,
    help="Repeat to multi-sign.",
)
@click.option("--input", "input_path", default="-", show_default=True, help="Payload file.")
@click.option("--payload-type", help="DSSE payloadType (default: in-toto if the input is one).")
@click.option("--allow-empty", is_flag=True, help="Sign an empty payload (refused otherwise).")
@click.option(
    "--subject",
    "subjects",
    multiple=True,
    help="Wrap the input in an in-toto statement: NAME[=sha256:HEX].",
)
@click.option("--predicate-type", help="predicateType of the statement built with --subject.")
@click.option("--predicate", help="Statement predicate: JSON, or @FILE.")
@click.option("--output", type=click.Path(dir_okay=False), help="Also write the envelope here.")
@click.option(
    "--timestamp",
    "timestamp_url",
    metavar="URL",
    help="Get an RFC 3161 token per signature from this TSA; stored with the proof.",
)
@click.option(
    "--tsa-root",
    "tsa_roots",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True),
    help="PEM file of a TSA root to verify --timestamp tokens (default: timestamping.tsaRoots).",
)
@json_option
def sign(
    key_ids: tuple[str, ...],
    input_path: str,
    payload_type: str | None,
    subjects: tuple[str, ...],
    predicate_type: str | None,
    predicate: str | None,
    output: str | None,
    timestamp_url: str | None,
    tsa_roots: tuple[str, ...],
    as_json: bool,
    allow_empty: bool = False,
) -> None:
    """Sign a payload; prints the proof's sha256: address."""
    data = read_input(input_path)
    uses_data = not subjects or any("=" not in s for s in subjects)
    if not data and uses_data and not allow_empty:
        source = "stdin gave no bytes" if input_path == "-" else f"{input_path} is empty"
        raise click.UsageError(
            f"nothing to sign: {source}. Give the artifact with --input FILE or on stdin"
            " (--allow-empty signs zero bytes on purpose)"
        )
    if subjects:
        from stellakeys.intoto import PAYLOAD_TYPE

        payload, ptype = _statement_payload(data, subjects, predicate_type, predicate), PAYLOAD_TYPE
    else:
        payload, ptype = data, payload_type or _guess_payload_type(data)
    from stellakeys_cli.timestamp import verifier_from

    m = manager(timestamp_verifier=verifier_from(tsa_roots))
    digest = m.sign(payload, list(key_ids), ptype, timestamp_url=timestamp_url)
    envelope = m.get_proof(digest)
    if output:
        from stellakeys._fileio import write_atomic

        write_atomic(Path(output), envelope.to_json() + b"\n", mode=0o644)
    if as_json:
        emit_json({"proof": digest, "envelope": envelope.to_dict()})
    else:
        click.echo(digest)


def _load_proof(proof_bundle: str | None, envelope_path: str | None) -> Any:
    from stellakeys.dsse import Envelope

    if proof_bundle and envelope_path:
        raise click.UsageError("give --proof-bundle or --envelope, not both")
    if proof_bundle:
        return proof_bundle
    raw = read_input(envelope_path or "-")
    text = raw.strip()
    if text.startswith(b"sha256:"):
        where = "stdin" if (envelope_path or "-") == "-" else envelope_path
        shown_text = text.decode("utf-8", "replace")
        address = parse_proof_address(shown_text)
        if address is None:
            raise click.UsageError(
                f"{where} holds {shown(shown_text)}, which is not a proof address:"
                " expected sha256: and 64 hex digits"
            )
        return address
    if not text:
        raise click.UsageError("no proof given: use --proof-bundle, --envelope or stdin")
    if not text.startswith(b"{"):
        # Not JSON at all: say what the input is not, rather than a JSON parser's position.
        where = "stdin" if (envelope_path or "-") == "-" else envelope_path
        start = shown(text[:40].decode("utf-8", "replace"))
        raise click.UsageError(
            f"{where} is neither a sha256: proof address nor a DSSE envelope (JSON object);"
            f" it starts with {start}. Give --proof-bundle sha256:<64 hex>, --envelope FILE,"
            " or pipe an envelope"
        )
    return Envelope.from_json(text)


@click.command()
@click.option("--proof-bundle", type=PROOF_ADDRESS, help="sha256:... address of a stored proof.")
@click.option("--envelope", "envelope_path", help="DSSE envelope JSON file ('-' for stdin).")
@click.option(
    "--bundle",
    "bundle_path",
    help="Sigstore bundle JSON file from any producer; its RFC 3161 timestamps give trusted time.",
)
@click.option("--purl", help="Artifact PURL (default: the statement's PURL subject).")
@click.option("--at-time", help="Asserted signing time, ISO 8601 (forensics).")
@click.option(
    "--require-trusted-time", is_flag=True, help="Demand an RFC 3161 timestamp for every key."
)
@click.option(
    "--timestamp",
    "token_paths",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True),
    help="DER timestamp token for a signature, besides the stored ones (repeatable).",
)
@click.option(
    "--tsa-root",
    "tsa_roots",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True),
    help="PEM file of a TSA root to trust (repeatable; default: timestamping.tsaRoots).",
)
@click.option("--require-anchor", is_flag=True, help="Fail instead of a key-only check.")
@click.option("--threshold", default=1, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--batch",
    "batch_path",
    type=click.Path(exists=True),
    help="Verify every proof of a JSON Lines file or a directory (docs/batch.md).",
)
@click.option(
    "--workers", default=1, show_default=True, type=click.IntRange(min=1), help="--batch processes."
)
@click.option("--dask-scheduler", metavar="ADDRESS", help="Run --batch on a Dask cluster.")
@click.option(
    "--feed",
    "feed_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Verify offline from this key-material feed alone, not the store (repeatable).",
)
@click.option(
    "--feed-state",
    type=click.Path(file_okay=False),
    help="Trusted feed state directory: refuses rollback, skipped versions (docs/feed.md).",
)
@json_option
def verify(
    proof_bundle: str | None,
    envelope_path: str | None,
    bundle_path: str | None,
    purl: str | None,
    at_time: str | None,
    require_trusted_time: bool,
    token_paths: tuple[str, ...],
    tsa_roots: tuple[str, ...],
    require_anchor: bool,
    threshold: int,
    batch_path: str | None,
    workers: int,
    dask_scheduler: str | None,
    feed_files: tuple[str, ...],
    feed_state: str | None,
    as_json: bool,
) -> None:
    """Verify a proof; exit status 0 only if it verifies."""
    from stellakeys.verification import VerificationPolicy

    feed_factory = None
    cli = state()
    if feed_files:
        from stellakeys_cli.feed import use_feeds

        cli, feed_factory = use_feeds(feed_files, feed_state)  # verifies from the feed alone
    elif feed_state:
        raise click.UsageError("--feed-state goes with --feed")
    if batch_path:
        from stellakeys_cli.batch import run_batch

        if proof_bundle or envelope_path or bundle_path or token_paths:
            raise click.UsageError("--batch takes its proofs from the file or directory")
        run_batch(
            batch_path,
            workers=workers,
            dask_scheduler=dask_scheduler,
            at_time=at_time,
            purl=purl,
            policy=VerificationPolicy(
                threshold=threshold,
                require_trusted_time=require_trusted_time,
                require_anchor=require_anchor,
            ),
            as_json=as_json,
            tsa_roots=tsa_roots,
            factory=feed_factory,
            verifier=cli.given_verifier(),
        )
        return
    bundle_tokens: list[bytes] = []
    if bundle_path:
        # A Sigstore bundle is an envelope plus timestamps; its key hint selects nothing.
        from stellakeys.sigstore_bundle import read_bundle

        if proof_bundle or envelope_path:
            raise click.UsageError("give --bundle alone, not with --proof-bundle or --envelope")
        parsed = read_bundle(read_input(bundle_path))
        proof, bundle_tokens = parsed.envelope, list(parsed.timestamps)
    else:
        proof = _load_proof(proof_bundle, envelope_path)
    policy = VerificationPolicy(
        threshold=threshold,
        require_trusted_time=require_trusted_time,
        require_anchor=require_anchor,
    )
    from stellakeys_cli.timestamp import verifier_from

    given = [*bundle_tokens, *(Path(p).read_bytes() for p in token_paths)]
    offline = cli.given_verifier()
    if offline is not None:
        if isinstance(proof, str):
            from stellakeys.errors import NotFoundError

            raise NotFoundError(
                f"no proof {proof} here: --feed verifies without the store;"
                " give the envelope with --envelope"
            )
        result = offline.verify(
            proof,
            purl=purl,
            at=parse_time_option(at_time),
            now=now(),
            policy=policy,
            tokens=given,
            timestamp_verifier=verifier_from(tsa_roots),
        )
    else:
        store = cli.verifying(timestamp_verifier=verifier_from(tsa_roots))
        # Stored tokens come with a proof given by address; an envelope given as JSON brings
        # the tokens stored for it (if it is stored) and any given with --timestamp.
        target, tokens = store.stored_tokens_for(proof, given)
        result = store.verify(
            target,
            now=now(),
            purl=purl,
            at=parse_time_option(at_time),
            policy=policy,
            timestamps=tokens,
        )
    if as_json:
        emit_json(result.to_dict())
    else:
        _print_result(result)
    if not result.ok:
        raise SystemExit(1)


def _print_result(result: Any) -> None:
    from stellakeys.times import format_time

    head = "OK" if result.ok else "FAILED"
    click.echo(f"{head}: {result.envelope_digest}")
    if result.purl:
        click.echo(f"  Artifact:  {result.purl}")
    if result.anchor_id:
        click.echo(
            f"  Anchor:    {result.anchor_id} ({result.anchor_pattern}, {result.policy_version})"
        )
    key_times = {kt.key_id: kt.time for kt in result.key_times}
    for k in result.verified_keys:
        click.echo(f"  Key:       {k.key_id} ({k.algorithm}) {k.fingerprint}")
        if k.key_id in key_times:
            t = key_times[k.key_id]
            click.echo(f"    signed:  {format_time(t.at)} ({t.source.value}) {t.detail or ''}")
    click.echo(f"  Time:      {format_time(result.time)} ({result.time_source.value})")
    if result.time_detail:
        click.echo(f"  TSA:       {result.time_detail}")
    if len(result.subjects) > 1:
        for subject in result.subjects:
            verdict = "ok" if subject.ok else "NOT COVERED"
            anchor = f"anchor {subject.anchor_id}" if subject.anchor_id else "no anchor"
            keys = ", ".join(subject.key_ids) or "no key"
            label = subject.purl or repr(subject.name)
            click.echo(f"  Subject:   {label} {verdict} ({anchor}; {keys})")
    if result.key_only:
        click.echo("  Check:     key-only (the payload names no artifact)")
    for note in result.notes:
        click.echo(f"  Note:      {note}")
    for reason in result.reasons:
        click.echo(f"  Reason:    {reason}")
