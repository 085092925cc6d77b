"""``stellaops feed publish|trust|update|show`` and the ``verify --feed`` plumbing."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from stellakeys_cli.context import CliState, emit_json, json_option, manager, now, state
from stellakeys_cli.context import read_input as _read

if TYPE_CHECKING:
    from stellakeys.feed import FeedVerifierSpec, ParsedFeed


def _describe(feed: ParsedFeed) -> list[str]:
    from stellakeys.times import format_time

    doc = feed.document
    keys = "included" if doc.includes_keys else "NOT included"
    lines = [
        f"Feed version {doc.version}{' (urgent)' if doc.urgent else ''}: sha256:{feed.digest}",
        f"  Issued:   {format_time(doc.issued_at)}",
        f"  Expires:  {format_time(doc.expires_at)}",
        f"  Anchors:  {len(doc.anchors)}; keys {keys}",
        f"  Feed keys ({doc.threshold} of {len(doc.feed_keys)} required):",
    ]
    lines += [f"    {k.key_id} {k.algorithm} {k.fingerprint}" for k in doc.feed_keys]
    return lines


@click.group()
def feed() -> None:
    """Publish and consume the signed key-material feed."""


@feed.command("publish")
@click.option("--include-keys", is_flag=True, help="Include every key's public PEM.")
@click.option(
    "--urgent", is_flag=True, help="After an incident: short expiry (feed.urgentExpiresIn)."
)
@click.option("--output", type=click.Path(dir_okay=False), help="Write here instead of stdout.")
@json_option
def publish(include_keys: bool, urgent: bool, output: str | None, as_json: bool) -> None:
    """Sign and store the next feed version; print (or write) its envelope."""
    from stellakeys._fileio import write_atomic
    from stellakeys.feed import publish_feed

    published = publish_feed(manager(), include_keys=include_keys, urgent=urgent)
    body = published.feed.envelope.to_json() + b"\n"
    if output:
        write_atomic(Path(output), body, mode=0o644)
    if as_json:
        emit_json({**_feed_json(published.feed), "envelope": published.feed.envelope.to_dict()})
        return
    if not output:
        sys.stdout.buffer.write(body)
        sys.stdout.flush()
    for line in _describe(published.feed):
        click.echo(line, err=True)


@feed.command("trust")
@click.argument("feed_file")
@click.option("--feed-state", required=True, type=click.Path(file_okay=False))
@json_option
def trust(feed_file: str, feed_state: str, as_json: bool) -> None:
    """Pin a first feed in a state directory (check its feed keys out of band first)."""
    from stellakeys.feed import FeedConsumer

    pinned = FeedConsumer(feed_state).pin(_read(feed_file), now())
    if as_json:
        emit_json(_feed_json(pinned))
        return
    for line in _describe(pinned):
        click.echo(line)


@feed.command("update")
@click.argument("feed_files", nargs=-1, required=True)
@click.option("--feed-state", required=True, type=click.Path(file_okay=False))
@json_option
def update(feed_files: tuple[str, ...], feed_state: str, as_json: bool) -> None:
    """Move a state directory to newer feed versions (chain rules: no rollback, no gaps)."""
    from stellakeys.feed import FeedConsumer

    newest = FeedConsumer(feed_state).update([_read(f) for f in feed_files], now())
    if as_json:
        emit_json(_feed_json(newest))
        return
    for line in _describe(newest):
        click.echo(line)


def _feed_json(parsed: ParsedFeed) -> dict[str, Any]:
    return {"digest": parsed.digest, "feed": parsed.document.to_dict()}


@feed.command("show")
@click.argument("feed_file")
@json_option
def show(feed_file: str, as_json: bool) -> None:
    """Print a feed's document (not verified: use update or verify --feed for that)."""
    from stellakeys.feed import parse_feed

    parsed = parse_feed(_read(feed_file))
    if as_json:
        emit_json(parsed.document.to_dict())
        return
    for line in _describe(parsed):
        click.echo(line)


def use_feeds(
    feed_files: tuple[str, ...], feed_state: str | None
) -> tuple[CliState, FeedVerifierSpec]:
    """Verify from the feed alone: check the feed chain (against the state directory when
    given), then build a verifier from the newest trusted feed -- no store, no KeyManager.
    Returns a CLI state that verifies with it, and the recipe batch workers rebuild it from."""
    from stellakeys.feed import (
        FeedConsumer,
        FeedVerifierSpec,
        parse_feed,
        verifier_from_feed,
        walk_chain,
    )

    at = now()
    data = [_read(f) for f in feed_files]
    if feed_state:
        newest = FeedConsumer(feed_state).update(data, at)
    else:
        newest = walk_chain(None, [parse_feed(d) for d in data], at)
        click.echo(
            f"note: feed version {newest.document.version} checked against its own keys only;"
            " pin it with 'stellaops feed trust' and pass --feed-state to detect rollback",
            err=True,
        )
    offline = state().with_verifier(verifier_from_feed(newest.document))
    return offline, FeedVerifierSpec(newest.envelope.to_json())
