"""Verify many proofs on any :class:`concurrent.futures.Executor`.

>>> from concurrent.futures import ProcessPoolExecutor
>>> from stellakeys.batch import BatchItem, ManagerSpec, verify_many
>>> items = [BatchItem(path.read_bytes(), label=str(path)) for path in paths]  # doctest: +SKIP
>>> with ProcessPoolExecutor(4) as pool:                                        # doctest: +SKIP
...     outcomes = verify_many(items, pool, manager_factory=ManagerSpec(home="/srv/keys"))

Dask is the same call with ``client.get_executor()`` (``dask`` extra), which is how one
verifies more proofs than a machine can: the workers need the package and read access to the
store (the same SQLite file on a shared disk, or the PostgreSQL database).

Why the work travels as it does: a :class:`~stellakeys.manager.KeyManager` holds database
connections and key store sessions and is not picklable. So what is shipped to a worker is a
picklable *recipe* for a manager (``manager_factory``, by default a :class:`ManagerSpec` of
the caller's settings) plus chunks of items (envelope bytes or stored addresses, and
options). Each worker process opens its manager once and keeps it in a module-level cache,
so the cost of opening the store and warming the anchor cache is paid once per process, not
per chunk.

Semantics, the same as one ``KeyManager.verify`` call per item:

* results come back in input order, one :class:`BatchOutcome` per item;
* malformed input (not an envelope, a bad PURL, a malformed token) is an outcome with an
  ``error``, not an exception that would sink the whole batch;
* items without an asserted time are verified at one "now" for the whole batch, taken when
  the batch starts, so a batch is judged at one instant wherever and whenever its chunks run;
* RFC 3161 tokens stored with a proof are used, whether the proof is given by its
  ``sha256:`` address or as the envelope itself (as ``stellaops verify`` does).
"""

from __future__ import annotations

import os
import pickle
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from stellakeys.errors import MalformedEnvelopeError, StellaKeysError
from stellakeys.reasons import ReasonCode, reason_code
from stellakeys.verification import VerificationPolicy, VerificationResult
from stellakeys.verifier import Verifier

if TYPE_CHECKING:
    from stellakeys.config import Settings
    from stellakeys.dsse import Envelope
    from stellakeys.manager import KeyManager

__all__ = [
    "BatchItem",
    "BatchLineError",
    "BatchOutcome",
    "ManagerSpec",
    "category_of",
    "in_order",
    "parse_line",
    "read_items",
    "reason_category",
    "summarize",
    "verify_many",
]

#: Items per task. Large enough that pickling and scheduling are small next to the
#: verifications (tens of microseconds to milliseconds each), small enough to balance load
#: and to move a progress bar.
DEFAULT_CHUNK_SIZE = 64


@attrs.frozen
class BatchItem:
    """One proof to verify: an envelope (parsed, or its JSON as bytes or str) or a stored
    ``sha256:`` address."""

    proof: Envelope | bytes | str
    purl: str | None = None
    #: Asserted signing time (``--at-time``); None means the batch's "now".
    at: datetime | None = None
    #: DER RFC 3161 tokens given with the proof, besides any stored with it.
    timestamps: tuple[bytes, ...] = ()
    #: Where the item came from (``file.jsonl:12``), carried into the outcome for reports.
    label: str | None = None


@attrs.frozen
class BatchOutcome:
    index: int
    label: str | None
    result: VerificationResult | None = None
    #: Malformed input: why the item could not be verified at all.
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.result is not None and self.result.ok

    @property
    def category(self) -> str | None:
        """The primary reason of a failure, as a short category (None when ok)."""
        if self.ok:
            return None
        if self.result is None:
            return "malformed input"
        return category_of(reason_code(self.result.reasons[0])) if self.result.reasons else "other"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"input": self.label, "index": self.index}
        if self.result is not None:
            out.update(self.result.to_dict())
        else:
            out.update({"ok": False, "error": self.error})
        return out


@attrs.frozen
class ManagerSpec:
    """A picklable recipe for a KeyManager: what ``KeyManager.open`` takes, or the resolved
    :class:`~stellakeys.config.Settings` of an existing manager. Worker processes call it."""

    home: str | None = None
    config_path: str | None = None
    database_url: str | None = None
    actor: str | None = None
    settings: Settings | None = None
    #: PEM files of TSA roots to trust, besides the configuration's timestamping.tsaRoots.
    tsa_roots: tuple[str, ...] = ()

    @classmethod
    def of(cls, manager: KeyManager) -> ManagerSpec:
        if manager.settings is None:
            raise ValueError(
                "this KeyManager was built directly on a store (no settings); worker processes "
                "cannot reopen it: pass manager_factory=, e.g. ManagerSpec(home=...)"
            )
        return cls(settings=manager.settings)

    def __call__(self) -> KeyManager:
        from stellakeys.manager import KeyManager

        tsa = None
        if self.tsa_roots:
            from stellakeys.timestamp import RFC3161Verifier

            tsa = RFC3161Verifier.from_pem_files(list(self.tsa_roots))
        if self.settings is not None:
            return KeyManager.from_settings(self.settings, timestamp_verifier=tsa)
        return KeyManager.open(
            self.home,
            config_path=self.config_path,
            database_url=self.database_url,
            actor=self.actor,
            timestamp_verifier=tsa,
        )


# --- the worker side ---------------------------------------------------------------------------

#: Per thread: pickled factory -> (pid that opened it, manager). Per thread because a
#: store's connections are not shared between threads (a thread pool, a Dask worker with
#: several threads). A forked child inherits the forking thread's entries and must not use
#: them (their connections belong to the parent): the pid tells.
_LOCAL = threading.local()


def _worker_manager(factory: Callable[[], Any]) -> Any:
    cache: dict[bytes, tuple[int, Any]] | None = getattr(_LOCAL, "managers", None)
    if cache is None:
        cache = _LOCAL.managers = {}
    key = pickle.dumps(factory)
    pid = os.getpid()
    cached = cache.get(key)
    if cached is not None and cached[0] == pid:
        return cached[1]
    manager = factory()
    cache[key] = (pid, manager)
    return manager


def _verify_one(
    target: KeyManager | Verifier,
    index: int,
    item: BatchItem,
    policy: VerificationPolicy,
    now: datetime,
) -> BatchOutcome:
    from stellakeys.dsse import Envelope

    try:
        if isinstance(target, Verifier):
            if isinstance(item.proof, str) and item.proof.startswith("sha256:"):
                from stellakeys.errors import NotFoundError

                raise NotFoundError(
                    f"no proof {item.proof} here: verification from a feed has no store;"
                    " give the envelope itself"
                )
            result = target.verify(
                item.proof if isinstance(item.proof, Envelope) else Envelope.from_json(item.proof),
                purl=item.purl,
                at=item.at,
                now=now,
                policy=policy,
                tokens=item.timestamps,
            )
        else:
            proof, tokens = target.stored_tokens_for(item.proof, item.timestamps)
            result = target.verify(
                proof, purl=item.purl, at=item.at, now=now, policy=policy, timestamps=tokens
            )
    except (StellaKeysError, ValueError) as exc:
        return BatchOutcome(index, item.label, error=f"{type(exc).__name__}: {exc}")
    return BatchOutcome(index, item.label, result=result)


def _verify_chunk(
    factory: Callable[[], KeyManager | Verifier] | None,
    now: datetime,
    policy: VerificationPolicy,
    chunk: Sequence[tuple[int, BatchItem]],
    manager: KeyManager | Verifier | None = None,
) -> list[BatchOutcome]:
    """Runs in the worker. ``manager`` is given only for in-process execution. ``now`` is
    the batch's one instant, passed to every verification (no clock is swapped)."""
    if manager is None:
        assert factory is not None
        manager = _worker_manager(factory)
    return [_verify_one(manager, index, item, policy, now) for index, item in chunk]


# --- the caller side ---------------------------------------------------------------------------


def _as_item(item: BatchItem | bytes | str) -> BatchItem:
    return item if isinstance(item, BatchItem) else BatchItem(item)


def verify_many(
    items: Iterable[BatchItem | bytes | str],
    executor: Executor | None = None,
    *,
    manager: KeyManager | Verifier | None = None,
    manager_factory: Callable[[], KeyManager | Verifier] | None = None,
    policy: VerificationPolicy | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    now: datetime | None = None,
    progress: Callable[[int], None] | None = None,
    max_in_flight: int | None = None,
) -> list[BatchOutcome]:
    """Verify every item; outcomes in input order.

    Without ``executor`` the items are verified here, with ``manager`` (or one made by
    ``manager_factory``). With one, chunks of ``chunk_size`` items are submitted to it and
    each worker uses a manager made by ``manager_factory`` -- which must be picklable; the
    default is :meth:`ManagerSpec.of` ``manager``. ``manager`` may be a bare
    :class:`~stellakeys.verifier.Verifier` (verification from a feed: no store, so items are
    envelopes, not addresses), and ``manager_factory`` may make one
    (:class:`~stellakeys.feed.FeedVerifierSpec`). ``progress`` is called with the number of
    items finished each time a chunk completes. ``now`` (default: the manager's clock, else
    the system clock) is the time of items without an asserted time. ``max_in_flight``
    bounds the chunks submitted to ``executor`` at a time (default: all of them). For more
    items than fit in memory, see :mod:`stellakeys.batch_stream`.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    policy = policy or VerificationPolicy()
    batch = [(i, _as_item(item)) for i, item in enumerate(items)]
    if now is None:
        if manager is not None and not isinstance(manager, Verifier):
            now = manager.clock.now()
        else:
            from stellakeys.clock import SystemClock

            now = SystemClock().now()
    chunks = [batch[i : i + chunk_size] for i in range(0, len(batch), chunk_size)]

    if executor is None:
        local = manager
        owned = False
        if local is None:
            if manager_factory is None:
                raise ValueError("give a manager or a manager_factory")
            local, owned = manager_factory(), True
        try:
            out: list[BatchOutcome] = []
            for chunk in chunks:
                out.extend(_verify_chunk(None, now, policy, chunk, manager=local))
                if progress is not None:
                    progress(len(chunk))
            return out
        finally:
            if owned and not isinstance(local, Verifier):
                local.close()

    if manager_factory is None:
        if manager is None or isinstance(manager, Verifier):
            raise ValueError("give a manager_factory (picklable) or a manager opened from settings")
        manager_factory = ManagerSpec.of(manager)
    factory = manager_factory
    results: list[BatchOutcome] = []
    outcomes: list[BatchOutcome]
    for chunk, outcomes in in_order(
        executor,
        lambda chunk: (_verify_chunk, factory, now, policy, chunk),
        chunks,
        max_in_flight or max(1, len(chunks)),
    ):
        results.extend(outcomes)
        if progress is not None:
            progress(len(chunk))
    return results


_C = TypeVar("_C")
_R = TypeVar("_R")


def in_order(
    executor: Executor,
    call: Callable[[_C], tuple[Any, ...]],
    chunks: Iterable[_C],
    max_in_flight: int = 8,
) -> Iterator[tuple[_C, _R]]:
    """(chunk, result) for every chunk, in input order, with at most ``max_in_flight``
    chunks submitted and not yet taken back: the next chunk is read from ``chunks`` only when
    there is room (back-pressure, so a lazy ``chunks`` is never read far ahead of the
    workers), and a result is yielded as soon as it and every earlier one are done.
    ``call(chunk)`` gives the function to submit and its arguments. Chunks still in flight
    when the caller stops (an error, a closed generator) are cancelled."""
    if max_in_flight < 1:
        raise ValueError("max_in_flight must be at least 1")
    pending: deque[tuple[_C, Future[_R]]] = deque()
    try:
        for chunk in chunks:
            fn, *args = call(chunk)
            pending.append((chunk, executor.submit(fn, *args)))
            if len(pending) >= max_in_flight:
                head, future = pending.popleft()
                yield head, future.result()
        while pending:
            head, future = pending.popleft()
            yield head, future.result()
    finally:
        for _, future in pending:
            future.cancel()


# --- reporting ---------------------------------------------------------------------------------

#: Report categories by reason code (stellakeys.reasons): the summary's wording.
_CATEGORY_OF: dict[ReasonCode, str] = {
    ReasonCode.COMPROMISED_WITHOUT_TRUSTED_TIME: "compromised key without trusted time",
    ReasonCode.KEY_COMPROMISED: "compromised key",
    ReasonCode.KEY_REVOKED: "key revoked",
    ReasonCode.KEY_NOT_YET_VALID: "key not yet valid",
    ReasonCode.KEY_EXPIRED: "key expired",
    ReasonCode.TRUSTED_TIME_REQUIRED: "no trusted time",
    ReasonCode.TIMESTAMP_NO_TRUSTED_TIME: "no trusted time",
    ReasonCode.TIMESTAMP_UNUSED: "timestamp problem",
    ReasonCode.NO_TRUST_ANCHOR: "no trust anchor",
    ReasonCode.AMBIGUOUS_ANCHORS: "ambiguous trust anchors",
    ReasonCode.NO_ARTIFACT: "no artifact",
    ReasonCode.NOT_A_SUBJECT: "artifact not a subject",
    ReasonCode.MALFORMED_STATEMENT: "malformed statement",
    ReasonCode.SUBJECT_NOT_A_PURL: "subject not a package URL",
    ReasonCode.PREDICATE_TYPE_NOT_ALLOWED: "predicate type not allowed",
    ReasonCode.NOT_A_STATEMENT: "not an in-toto statement",
    ReasonCode.THRESHOLD_NOT_MET: "threshold not met",
    ReasonCode.NO_VALID_SIGNATURE: "no valid signature",
    ReasonCode.OTHER: "other",
}


def category_of(code: ReasonCode) -> str:
    """The summary category of a reason code."""
    return _CATEGORY_OF.get(code, "other")


# Deprecated (reason_category): the wording-based classification, for plain strings that
# carry no code (reasons read back from JSON). Results classify by code (category_of).
_CATEGORIES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), name)
    for pattern, name in (
        (r"revoked for compromise", "compromised key without trusted time"),
        (r"^key .* was revoked at .*\(compromise\)", "compromised key"),
        (r"^key .* was revoked at", "key revoked"),
        (r"^key .* was added at", "key not yet valid"),
        (r"^key .* expired at", "key expired"),
        (r"policy requires trusted time|needs trusted time|no trusted time", "no trusted time"),
        (r"timestamp|TSA|token", "timestamp problem"),
        (r"^no active trust anchor matches", "no trust anchor"),
        (r"^ambiguous", "ambiguous trust anchors"),
        (r"^no artifact PURL", "no artifact"),
        (r" is not a subject", "artifact not a subject"),
        (r"not a valid in-toto statement|statement but its payloadType", "malformed statement"),
        (r"is not a package URL", "subject not a package URL"),
        (r"predicateType .* is not allowed", "predicate type not allowed"),
        (r"not an in-toto statement", "not an in-toto statement"),
        (r"required (anchor )?keys signed", "threshold not met"),
        (r"^no signature verifies", "no valid signature"),
    )
)


#: A statement with several subjects prefixes each reason with its subject (stellakeys.binding).
_SUBJECT_PREFIX = re.compile(r"^subject (?:pkg:\S+|'[^']*'|\"[^\"]*\"): ")


def reason_category(reason: str) -> str:
    """A short, countable category for a failure reason: by its code when it has one
    (:class:`~stellakeys.reasons.Reason`); for a plain string, deprecated matching of its
    wording (``other`` when unrecognised)."""
    code = reason_code(reason)
    if code is not ReasonCode.OTHER:
        return category_of(code)
    reason = _SUBJECT_PREFIX.sub("", reason, count=1)
    for pattern, name in _CATEGORIES:
        if pattern.search(reason):
            return name
    return "other"


@attrs.frozen
class BatchSummary:
    total: int
    ok: int
    failed: int
    #: category -> number of failed items whose primary reason is in it, most common first
    by_reason: tuple[tuple[str, int], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "ok": self.ok,
            "failed": self.failed,
            "byReason": dict(self.by_reason),
        }


def summarize(outcomes: Iterable[BatchOutcome]) -> BatchSummary:
    counts: dict[str, int] = {}
    total = ok = 0
    for outcome in outcomes:
        total += 1
        if outcome.ok:
            ok += 1
            continue
        category = outcome.category or "other"
        counts[category] = counts.get(category, 0) + 1
    ordered = tuple(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return BatchSummary(total, ok, total - ok, ordered)


# --- input files -------------------------------------------------------------------------------


def read_items(path: Path, malformed: list[tuple[int, str, str]] | None = None) -> list[BatchItem]:
    """Items from a JSON Lines file or a directory (see docs/batch.md for the formats).

    A line is a DSSE envelope object, or ``{"envelope": {...} | "proof": "sha256:...",
    "purl": ..., "atTime": ...}``. A directory contributes every ``*.json`` and ``*.dsse``
    file below it, sorted by path, each holding one envelope.

    With ``malformed`` given, a line that cannot be read is appended to it as (its position
    among the items, ``file:line``, the reason) and reading goes on (issue 17: one bad line
    must not abort a batch); without it, the first bad line raises.
    """

    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and p.suffix in (".json", ".dsse") and not p.name.startswith(".")
        )
        return [BatchItem(p.read_bytes(), label=str(p)) for p in files]
    items: list[BatchItem] = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line:
                continue
            label = f"{path}:{number}"
            try:
                proof, purl, at = parse_line(line, label)
            except (BatchLineError, StellaKeysError) as exc:
                reason = str(exc).removeprefix(f"{label}: ")
                if malformed is None:
                    raise MalformedEnvelopeError(f"{label}: {reason}") from None
                malformed.append((len(items) + len(malformed), label, reason))
                continue
            items.append(BatchItem(proof, purl=purl, at=at, label=label))
    return items


class BatchLineError(ValueError):
    """A JSON Lines item that cannot be read; the message is the reason, without the item's
    ``file:line`` label (reports put the label in front, issue 17)."""


def parse_line(line: bytes, label: str) -> tuple[Envelope | str, str | None, datetime | None]:
    """(the envelope or stored address, purl, asserted time) of one JSON Lines item (the
    formats of docs/batch.md), parsed once: the envelope object is built from the parsed
    document, never re-encoded. BatchLineError for a line that is not such an item; a
    top-level envelope that is not valid DSSE raises MalformedEnvelopeError."""
    import stellakeys.strict_json as strict_json
    from stellakeys.dsse import Envelope
    from stellakeys.errors import DuplicateEnvelopeMemberError, DuplicateMemberError
    from stellakeys.times import parse_time

    try:
        # Strict (docs/decisions/0014): a duplicated "envelope" or "purl" would be read one
        # way here and another way by a peer.
        obj = strict_json.loads(line, document=label, error=DuplicateEnvelopeMemberError)
    except DuplicateMemberError as exc:
        raise BatchLineError(str(exc).removeprefix(f"{label}: ")) from None
    except (ValueError, RecursionError):
        raise BatchLineError(
            'not JSON (each line is one DSSE envelope or a {"proof": ...} object)'
        ) from None
    if not isinstance(obj, dict):
        raise BatchLineError("expected a JSON object")
    if "payloadType" in obj:
        return Envelope.from_dict(obj), None, None
    proof: Envelope | str
    if isinstance(obj.get("proof"), str):
        proof = obj["proof"]
    elif isinstance(obj.get("envelope"), dict):
        try:
            proof = Envelope.from_dict(obj["envelope"])
        except StellaKeysError as exc:
            raise BatchLineError(str(exc)) from None
    else:
        raise BatchLineError("expected an envelope, or an object with 'envelope' or 'proof'")
    at = obj.get("atTime")
    try:
        when = parse_time(at) if isinstance(at, str) else None
    except (StellaKeysError, ValueError) as exc:
        raise BatchLineError(str(exc).removeprefix(f"{label}: ")) from None
    purl = obj.get("purl")
    if purl is not None and not isinstance(purl, str):
        raise BatchLineError("'purl' must be a string")
    return proof, purl, when
