"""``stellaops verify --batch FILE.jsonl|DIR``: many proofs, streamed in constant memory, a
progress bar, a summary (docs/batch.md)."""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from stellakeys_cli.context import manager, parse_time_option, state

if TYPE_CHECKING:
    from collections.abc import Callable
    from concurrent.futures import Executor

    from stellakeys.batch import BatchSummary
    from stellakeys.batch_stream import StreamTally
    from stellakeys.manager import KeyManager
    from stellakeys.verification import VerificationPolicy
    from stellakeys.verifier import Verifier


def _executor(
    stack: ExitStack,
    workers: int,
    dask_scheduler: str | None,
    factory: Callable[[], KeyManager | Verifier],
) -> tuple[Executor | None, int]:
    """The executor and how many chunks to keep in flight on it (a few per worker: enough
    to keep every worker busy, few enough that memory stays flat)."""
    if dask_scheduler:
        try:
            from distributed import Client
        except ImportError:
            raise click.ClickException(
                "--dask-scheduler needs dask.distributed: pip install 'stellakeys[dask]'"
            ) from None
        client = stack.enter_context(Client(dask_scheduler))  # type: ignore[no-untyped-call]
        executor: Executor = client.get_executor()
        cores = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
        return executor, 4 * max(1, cores)
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        from stellakeys.batch_stream import open_worker

        # Each worker opens its one store and manager when it starts, and reuses it.
        pool = ProcessPoolExecutor(workers, initializer=open_worker, initargs=(factory,))
        return stack.enter_context(pool), 4 * workers
    return None, 1


def run_batch(
    path: str,
    *,
    workers: int,
    dask_scheduler: str | None,
    at_time: str | None,
    purl: str | None,
    policy: VerificationPolicy,
    as_json: bool,
    tsa_roots: tuple[str, ...] = (),
    factory: Callable[[], KeyManager | Verifier] | None = None,
    verifier: Verifier | None = None,
) -> None:
    """Verify every proof of ``path``, streaming: read a chunk, verify it, write its results;
    exit 1 if any fails. ``verifier`` (with its picklable ``factory``): verify with it, from a
    feed, instead of the store. Memory stays flat whatever the size of the input."""
    import attrs

    from stellakeys.batch import ManagerSpec
    from stellakeys.batch_stream import StreamOptions, StreamTally, chunked, read_raw, verify_stream
    from stellakeys_cli.context import now

    source = Path(path)
    if not source.exists():
        raise click.ClickException(f"{path}: no such file or directory")
    from stellakeys_cli.timestamp import verifier_from

    roots = tuple(str(Path(r).resolve()) for r in tsa_roots)
    local: KeyManager | Verifier
    if verifier is not None:
        from stellakeys.feed import FeedVerifierSpec

        assert isinstance(factory, FeedVerifierSpec)
        factory = attrs.evolve(factory, tsa_roots=roots)
        # Rebuilt with the roots (a verifier's collaborators are given at construction).
        local = factory() if roots else verifier
    else:
        m = manager(timestamp_verifier=verifier_from(tsa_roots))
        local = m
        # Workers reopen the store from the same options this command was given.
        cli = state()
        factory = ManagerSpec(
            home=str(m.settings.home) if m.settings else cli.home,
            config_path=cli.config_path,
            database_url=cli.database_url,
            actor=cli.actor,
            tsa_roots=roots,
        )
    # One instant for the whole batch, passed to every verification (no clock is swapped).
    options = StreamOptions(
        now=now(), policy=policy, at=parse_time_option(at_time), purl=purl, as_json=as_json
    )
    tally = StreamTally()
    out = sys.stdout
    from concurrent.futures.process import BrokenProcessPool

    from stellakeys_cli.collector import settled

    settled()  # also for a feed's verifier, which opens no store (decision 0033)

    with ExitStack() as stack:
        executor, in_flight = _executor(stack, workers, dask_scheduler, factory)
        bar = _progress_bar(stack, source)
        try:
            for chunk, reports in verify_stream(
                chunked(read_raw(source)),
                options,
                executor,
                manager=local,
                manager_factory=factory,
                max_in_flight=in_flight,
            ):
                for report in reports:
                    tally.add(report)
                if as_json:  # one write per chunk, as soon as it is done
                    out.write("".join(f"{r.line}\n" for r in reports))
                    out.flush()  # a reader of the pipe sees each chunk when it is done
                if bar is not None:
                    bar(chunk.offset, tally)
        except BrokenProcessPool:
            # A worker was killed (the OOM killer, a signal): the batch is incomplete, so no
            # summary is written (a --json reader sees the stream end without one) and the
            # answer is an error, never a partial "verified".
            raise click.ClickException(
                f"{path}: a verification worker process died (killed, or out of memory) after"
                f" {tally.total:,} results; the batch is incomplete. Rerun it, with fewer"
                " --workers or more memory, or --workers 1 to verify in this process"
            ) from None
    if as_json:
        out.write(json.dumps({"summary": _summary(tally).to_dict()}) + "\n")
        out.flush()
        _print_summary(tally, _console(stderr=True))
    else:
        _print_summary(tally, _console(stderr=False))
    if tally.failed:
        raise SystemExit(1)


def _console(*, stderr: bool) -> Any:
    from rich.console import Console

    return Console(stderr=stderr)


def _summary(tally: StreamTally) -> BatchSummary:
    from stellakeys.batch import BatchSummary

    ordered = tuple(sorted(tally.by_reason.items(), key=lambda kv: (-kv[1], kv[0])))
    return BatchSummary(tally.total, tally.ok, tally.failed, ordered)


def _progress_bar(stack: ExitStack, source: Path) -> Callable[[int, StreamTally], None] | None:
    """A progress bar on stderr when stderr is a terminal (else None, and rich is not even
    imported): items/s, failures so far, and the ETA from the bytes of the file read."""
    if not sys.stderr.isatty():
        return None
    import time

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    progress = stack.enter_context(
        Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            TextColumn("{task.fields[items]:,} items  {task.fields[rate]:,.0f}/s"),
            TextColumn("{task.fields[failed]:,} failed"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
    )
    # A directory's size is unknown without walking it twice: no total, no ETA.
    total = None if source.is_dir() else max(1, source.stat().st_size)
    task = progress.add_task("verifying", total=total, items=0, rate=0.0, failed=0)
    started = time.monotonic()

    def advance(offset: int, tally: StreamTally) -> None:
        elapsed = max(time.monotonic() - started, 1e-9)
        progress.update(
            task,
            completed=offset if total else tally.total,
            items=tally.total,
            rate=tally.total / elapsed,
            failed=tally.failed,
        )

    return advance


def _print_summary(tally: StreamTally, console: Any) -> None:
    from rich.table import Table

    summary = _summary(tally)
    console.print(f"Batch verification: {summary.total} proofs", soft_wrap=True, markup=False)
    table = Table()
    table.add_column("Result")
    table.add_column("Proofs", justify="right")
    table.add_row("[green]ok[/green]", str(summary.ok))
    table.add_row("[red]failed[/red]", str(summary.failed))
    for category, count in summary.by_reason:
        table.add_row(f"  {category}", str(count))
    console.print(table)
    for label, why in tally.first_failures:
        console.print(f"FAILED {label}: {why}", markup=False, soft_wrap=True)
    if tally.failed > len(tally.first_failures):
        more = tally.failed - len(tally.first_failures)
        console.print(f"... and {more} more (use --json for all)")
