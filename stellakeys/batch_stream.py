"""Streaming batch verification: any number of proofs in constant memory.

:func:`stellakeys.batch.verify_many` takes items and returns every outcome, so its memory grows
with the batch. This module is what ``stellaops verify --batch`` runs instead:

* :func:`read_raw` reads a JSON Lines file one line at a time (or walks a directory one
  directory listing at a time) and yields :data:`RawItem` s: the raw bytes of a line, or the
  path of a file, with the item's position and label. Nothing is parsed here: the workers do
  that, so a worker process pays for its own JSON parsing and the reader stays cheap.
* :func:`chunked` groups them into :class:`RawChunk` s; :func:`verify_stream` sends chunks to
  the workers with at most ``max_in_flight`` chunks outstanding (back-pressure: the reader
  waits while the workers are busy), and yields every chunk's :class:`ItemReport` s **in input
  order** as soon as that chunk and the ones before it are done.
* a worker verifies a chunk with one manager (or :class:`~stellakeys.verifier.Verifier`) that
  it opened once, at start, and sends back small :class:`ItemReport` s (a few strings), not
  results: nothing large crosses the process boundary either way. With ``as_json`` the worker
  also encodes the item's JSON line, so the parent only writes it.

Semantics are those of one ``KeyManager.verify`` call per item, as in ``stellakeys.batch``:
malformed lines are failed items carrying their ``file:line`` label, items without their own
time are judged at the batch's one ``now``, and RFC 3161 tokens stored with a proof are used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import attrs

from stellakeys.batch import (
    BatchLineError,
    ManagerSpec,
    _worker_manager,
    category_of,
    in_order,
    parse_line,
)
from stellakeys.errors import StellaKeysError
from stellakeys.reasons import reason_code
from stellakeys.verification import VerificationPolicy
from stellakeys.verifier import Verifier

if TYPE_CHECKING:
    from stellakeys.dsse import Envelope
    from stellakeys.manager import KeyManager

__all__ = [
    "ItemReport",
    "RawChunk",
    "RawItem",
    "StreamOptions",
    "StreamTally",
    "chunked",
    "read_raw",
    "verify_stream",
]

#: Items per chunk sent to a worker: large enough that submitting and pickling a chunk is
#: small next to verifying it (hundreds of microseconds an item), small enough that the
#: chunks in flight stay a few hundred kilobytes and a progress bar moves.
STREAM_CHUNK_SIZE = 128

#: (position among the items, label, the line's bytes or a file's path).
RawItem = tuple[int, str, bytes | str]


class RawChunk(NamedTuple):
    items: list[RawItem]
    #: Bytes of the input file read up to the end of this chunk (0 for a directory).
    offset: int


class ItemReport(NamedTuple):
    """What a worker sends back for one item: enough for the summary and the report."""

    #: The item's position among the items (its ``index`` in the JSON output).
    position: int
    label: str
    ok: bool
    #: Failure category (stellakeys.batch.category_of), None when ok.
    category: str | None
    #: The first reason or the input error of a failure, None when ok.
    why: str | None
    #: The item's JSON line (without newline) when the batch asked for JSON, else None.
    line: str | None


@attrs.frozen
class StreamOptions:
    """What every item of a stream is verified with (picklable: it travels to workers)."""

    now: datetime
    policy: VerificationPolicy = attrs.field(factory=VerificationPolicy)
    #: Defaults for items that do not carry their own (``--at-time``, ``--purl``).
    at: datetime | None = None
    purl: str | None = None
    as_json: bool = False


# --- reading -----------------------------------------------------------------------------------


def read_raw(path: Path) -> Iterator[tuple[RawItem, int]]:
    """(item, bytes read so far) for every item of a JSON Lines file or a directory, one at a
    time. Blank lines are skipped (and counted in line numbers). A directory yields every
    ``*.json`` / ``*.dsse`` file below it that is not hidden, in the order of sorting their
    paths, holding one directory's names in memory at a time."""
    if path.is_dir():
        for index, file in enumerate(_walk(path)):
            yield (index, file, file), 0
        return
    name = str(path)
    index = 0
    offset = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            offset += len(raw)
            if raw.isspace():
                continue
            yield (index, f"{name}:{number}", raw), offset
            index += 1


def _walk(directory: Path) -> Iterator[str]:
    # Depth first, each directory's entries sorted by name: the order of sorting the paths
    # (path comparison is part by part), without holding every path of the tree at once.
    # Symbolic links to directories are not followed (as Path.rglob does not).
    names = sorted(os.listdir(directory))
    for name in names:
        full = os.path.join(directory, name)
        if os.path.isdir(full) and not os.path.islink(full):
            yield from _walk(Path(full))
        elif (
            name.endswith((".json", ".dsse")) and not name.startswith(".") and os.path.isfile(full)
        ):
            yield full


def chunked(
    raw: Iterable[tuple[RawItem, int]], size: int = STREAM_CHUNK_SIZE
) -> Iterator[RawChunk]:
    chunk: list[RawItem] = []
    offset = 0
    for item, offset in raw:
        chunk.append(item)
        if len(chunk) >= size:
            yield RawChunk(chunk, offset)
            chunk = []
    if chunk:
        yield RawChunk(chunk, offset)


# --- the worker side ---------------------------------------------------------------------------


#: A parsed item: (position, label, envelope or stored address, purl, asserted time, digest).
_Parsed = tuple[int, str, "Envelope | str", str | None, datetime | None, str | None]


def _parse_raw(item: RawItem, options: StreamOptions) -> _Parsed | ItemReport:
    """The item parsed, or the report of why it cannot be read."""
    from stellakeys.dsse import Envelope

    index, label, data = item
    try:
        proof: Envelope | str
        if isinstance(data, str):  # a file of a directory: one envelope
            with open(data, "rb") as handle:
                content = handle.read()
            proof, purl, at = Envelope.from_json(content), None, None
        else:
            proof, purl, at = parse_line(data, label)
        # The digest re-encodes the envelope: computed once, for the stored-token lookup
        # and for the result both.
        digest = proof.digest() if isinstance(proof, Envelope) else None
    except BatchLineError as exc:
        return _failed(index, label, str(exc), options)
    except (StellaKeysError, ValueError, OSError) as exc:
        return _failed(index, label, f"{type(exc).__name__}: {exc}", options)
    return index, label, proof, purl or options.purl, at or options.at, digest


def _stored_tokens(target: KeyManager, digests: list[str]) -> dict[str, tuple[bytes, ...]]:
    """The RFC 3161 tokens stored with each of ``digests`` (only those that have some), read
    in one transaction for the whole chunk instead of one per item."""
    found: dict[str, tuple[bytes, ...]] = {}
    with target.store.read() as tx:
        for digest in digests:
            record = tx.get_proof(digest)
            if record is not None and record.timestamp_tokens:
                found[digest] = record.timestamp_tokens
    return found


def _verify_parsed(
    target: KeyManager | Verifier,
    parsed: _Parsed,
    tokens: tuple[bytes, ...],
    options: StreamOptions,
) -> ItemReport:
    index, label, proof, purl, at, digest = parsed
    now, policy = options.now, options.policy
    try:
        if isinstance(target, Verifier):
            if isinstance(proof, str):
                from stellakeys.errors import NotFoundError

                raise NotFoundError(
                    f"no proof {proof} here: verification from a feed has no store;"
                    " give the envelope itself"
                )
            result = target.verify(proof, purl=purl, at=at, now=now, policy=policy)
        elif isinstance(proof, str):  # a stored address: verify reads its tokens with it
            result = target.verify(proof, purl=purl, at=at, now=now, policy=policy)
        elif tokens:  # what KeyManager.verify does with them (the rare case)
            result = target.verify(
                proof, purl=purl, at=at, now=now, policy=policy, timestamps=tokens
            )
        else:  # KeyManager.verify without tokens, with the digest already known
            result = target.verifier.verify(
                proof, purl=purl, at=at, now=now, policy=policy, digest=digest
            )
    except (StellaKeysError, ValueError) as exc:
        return _failed(index, label, f"{type(exc).__name__}: {exc}", options)
    line = None
    if options.as_json:
        out = {"input": label, "index": index}
        out.update(result.to_dict())
        line = _ENCODE(out)
    if result.ok:
        return ItemReport(index, label, True, None, None, line)
    if result.reasons:
        first = result.reasons[0]
        return ItemReport(index, label, False, category_of(reason_code(first)), str(first), line)
    return ItemReport(index, label, False, "other", "", line)


#: One encoder for every line (json.dumps with options builds a new encoder per call).
_ENCODE = json.JSONEncoder(ensure_ascii=False).encode


def _failed(index: int, label: str, error: str, options: StreamOptions) -> ItemReport:
    line = None
    if options.as_json:
        line = _ENCODE({"input": label, "index": index, "ok": False, "error": error})
    return ItemReport(index, label, False, "malformed input", error, line)


def _verify_raw_chunk(
    factory: Callable[[], KeyManager | Verifier] | None,
    options: StreamOptions,
    chunk: list[RawItem],
    target: KeyManager | Verifier | None = None,
) -> list[ItemReport]:
    """Runs in the worker, with the manager it opened once (``target`` only in process)."""
    if target is None:
        assert factory is not None
        target = _worker_manager(factory)
    parsed = [_parse_raw(item, options) for item in chunk]
    tokens: dict[str, tuple[bytes, ...]] = {}
    if not isinstance(target, Verifier):
        digests = [p[5] for p in parsed if not isinstance(p, ItemReport) and p[5] is not None]
        try:
            tokens = _stored_tokens(target, digests) if digests else {}
        except StellaKeysError as exc:  # the store failed: every envelope of the chunk fails
            error = f"{type(exc).__name__}: {exc}"
            parsed = [
                _failed(p[0], p[1], error, options)
                if not isinstance(p, ItemReport) and p[5] is not None
                else p
                for p in parsed
            ]
    return [
        p
        if isinstance(p, ItemReport)
        else _verify_parsed(target, p, tokens.get(p[5] or "", ()), options)
        for p in parsed
    ]


def open_worker(factory: Callable[[], KeyManager | Verifier]) -> None:
    """A process pool's ``initializer``: open the worker's manager when the worker starts,
    not on its first chunk (the chunks then find it in the worker's cache)."""
    _worker_manager(factory)


# --- the caller side ---------------------------------------------------------------------------


def verify_stream(
    chunks: Iterable[RawChunk],
    options: StreamOptions,
    executor: Executor | None = None,
    *,
    manager: KeyManager | Verifier | None = None,
    manager_factory: Callable[[], KeyManager | Verifier] | None = None,
    max_in_flight: int = 8,
) -> Iterator[tuple[RawChunk, list[ItemReport]]]:
    """Every chunk with its reports, in input order. Without ``executor``, verified here with
    ``manager``; with one, at most ``max_in_flight`` chunks are submitted at a time, each
    worker verifying with a manager made once by ``manager_factory`` (picklable)."""
    if executor is None:
        if manager is None:
            raise ValueError("give a manager to verify in this process")
        for chunk in chunks:
            yield chunk, _verify_raw_chunk(None, options, chunk.items, manager)
        return
    if manager_factory is None:
        if manager is None or isinstance(manager, Verifier):
            raise ValueError("give a manager_factory (picklable) or a manager opened from settings")
        manager_factory = ManagerSpec.of(manager)
    factory = manager_factory
    yield from in_order(
        executor,
        lambda chunk: (_verify_raw_chunk, factory, options, chunk.items),
        chunks,
        max_in_flight,
    )


@attrs.define
class StreamTally:
    """Counts of a stream so far, and its first failures for the report (bounded)."""

    keep: int = 20
    total: int = 0
    failed: int = 0
    by_reason: dict[str, int] = attrs.field(factory=dict)
    first_failures: list[tuple[str, str]] = attrs.field(factory=list)

    def add(self, report: ItemReport) -> None:
        self.total += 1
        if report.ok:
            return
        self.failed += 1
        category = report.category or "other"
        self.by_reason[category] = self.by_reason.get(category, 0) + 1
        if len(self.first_failures) < self.keep:
            self.first_failures.append((report.label, report.why or ""))

    @property
    def ok(self) -> int:
        return self.total - self.failed
