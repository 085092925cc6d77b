"""``stellaops verify --batch FILE.jsonl|DIR``: many proofs, a progress bar, a summary."""

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

    from stellakeys.batch import BatchOutcome, BatchSummary
    from stellakeys.manager import KeyManager
    from stellakeys.verification import VerificationPolicy
    from stellakeys.verifier import Verifier


def _executor(stack: ExitStack, workers: int, dask_scheduler: str | None) -> Executor | None:
    if dask_scheduler:
        try:
            from distributed import Client
        except ImportError:
            raise click.ClickException(
                "--dask-scheduler needs dask.distributed: pip install 'stellakeys[dask]'"
            ) from None
        client = stack.enter_context(Client(dask_scheduler))  # type: ignore[no-untyped-call]
        executor: Executor = client.get_executor()
        return executor
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        return stack.enter_context(ProcessPoolExecutor(workers))
    return None


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
    """Verify every proof of ``path``; exit 1 if any fails. ``verifier`` (with its picklable
    ``factory``): verify with it, from a feed, instead of the store."""
    import attrs
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from stellakeys.batch import ManagerSpec, read_items, summarize, verify_many

    source = Path(path)
    if not source.exists():
        raise click.ClickException(f"{path}: no such file or directory")
    malformed: list[tuple[int, str, str]] = []
    items = read_items(source, malformed)
    at = parse_time_option(at_time)
    if at is not None or purl is not None:
        items = [
            attrs.evolve(i, at=i.at or at, purl=i.purl or purl)
            for i in items  # flags as defaults
        ]
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
    err = Console(stderr=True)
    with ExitStack() as stack:
        executor = _executor(stack, workers, dask_scheduler)
        progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=not err.is_terminal,
            disable=not err.is_terminal,
        )
        with progress:
            task = progress.add_task("verifying", total=len(items))
            outcomes = verify_many(
                items,
                executor,
                manager=local,
                manager_factory=factory if executor is not None else None,
                policy=policy,
                progress=lambda n: progress.advance(task, n),
            )
    outcomes = _with_malformed(outcomes, malformed)
    summary = summarize(outcomes)
    if as_json:
        for outcome in outcomes:
            sys.stdout.write(json.dumps(outcome.to_dict(), ensure_ascii=False) + "\n")
        _print_summary(summary, outcomes, Console(stderr=True))
    else:
        _print_summary(summary, outcomes, Console())
    if summary.failed:
        raise SystemExit(1)


def _with_malformed(
    outcomes: list[BatchOutcome], malformed: list[tuple[int, str, str]]
) -> list[BatchOutcome]:
    """The verified outcomes with one failed outcome per unreadable line, in input order."""
    import attrs

    from stellakeys.batch import BatchOutcome

    if not malformed:
        return outcomes
    bad = {position: (label, reason) for position, label, reason in malformed}
    merged: list[BatchOutcome] = []
    pending = iter(outcomes)
    for position in range(len(outcomes) + len(malformed)):
        if position in bad:
            label, reason = bad[position]
            merged.append(BatchOutcome(position, label, error=reason))
        else:
            merged.append(attrs.evolve(next(pending), index=position))
    return merged


def _print_summary(summary: BatchSummary, outcomes: list[BatchOutcome], console: Any) -> None:
    from rich.table import Table

    console.print(f"Batch verification: {summary.total} proofs", soft_wrap=True, markup=False)
    table = Table()
    table.add_column("Result")
    table.add_column("Proofs", justify="right")
    table.add_row("[green]ok[/green]", str(summary.ok))
    table.add_row("[red]failed[/red]", str(summary.failed))
    for category, count in summary.by_reason:
        table.add_row(f"  {category}", str(count))
    console.print(table)
    failed = [o for o in outcomes if not o.ok]
    for outcome in failed[:20]:
        why = outcome.error or (outcome.result.reasons[0] if outcome.result else "")
        console.print(
            f"FAILED {outcome.label or outcome.index}: {why}", markup=False, soft_wrap=True
        )
    if len(failed) > 20:
        console.print(f"... and {len(failed) - 20} more (use --json for all)")
