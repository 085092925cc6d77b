"""Parameter types, and the guard every invocation passes first: hostile input on the command
line is a usage error (exit 2) that names the argument, never an internal error (exit 70).

Two layers (decision 0017):

* :func:`check_invocation` runs on the raw argument list before click parses it, and on the
  ``STELLAKEYS_*`` environment: an argument that is not valid UTF-8 (Python hands such bytes
  over as lone surrogates, which no encoder accepts later), holds a NUL byte, or is longer
  than :data:`MAX_ARGUMENT_CHARS` is refused whatever command it is for, so a new command is
  covered without doing anything.
* Types for values with a shape: :data:`PROOF_ADDRESS` (``sha256:`` and 64 hex digits) and
  :data:`KEY_ID` (printable, at most :data:`MAX_KEY_ID_CHARS`). Their errors are click's
  ``Invalid value for '--option'``.

Messages quote at most a short, ASCII-escaped prefix of the value: the value may be huge or
may not be text at all.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    _TextType = click.ParamType[str]
else:  # click < 8.2 has no type parameters at run time
    _TextType = click.ParamType

__all__ = [
    "KEY_ID",
    "MAX_ARGUMENT_CHARS",
    "MAX_KEY_ID_CHARS",
    "PROOF_ADDRESS",
    "KeyIdType",
    "ProofAddressType",
    "check_invocation",
    "parse_proof_address",
    "shown",
]

#: Longest accepted argument. Far above any id, time or path; long documents (predicates,
#: ceremony payloads) are passed as ``@file``. Linux itself caps one argument at 128 KiB.
MAX_ARGUMENT_CHARS = 65536
#: Longest accepted key id: ids name files, PKCS#11 labels and KMS aliases, and are printed in
#: tables and audit events.
MAX_KEY_ID_CHARS = 256

_PROOF_ADDRESS = re.compile(r"sha256:[0-9a-f]{64}", re.ASCII | re.IGNORECASE)
_SURROGATES = re.compile("[\ud800-\udfff]")


def shown(value: str, limit: int = 40) -> str:
    """A short, printable, ASCII rendering of ``value`` for an error message."""
    text = ascii(value[:limit])
    return text + ("..." if len(value) > limit else "")


def problem(value: str, limit: int = MAX_ARGUMENT_CHARS) -> str | None:
    """Why ``value`` cannot be a command-line value, or None."""
    if _SURROGATES.search(value):
        return "is not valid UTF-8 text"
    if "\x00" in value:
        return "contains a NUL byte"
    if len(value) > limit:
        return f"is too long ({len(value)} characters; at most {limit})"
    return None


def _where(args: Sequence[str], i: int) -> str:
    arg = args[i]
    if arg.startswith("--") and "=" in arg:
        name = arg.split("=", 1)[0]
        if problem(name, 100) is None:
            return f"the value of {name} (argument {i + 1})"
    if i > 0:
        before = args[i - 1]
        if before.startswith("-") and "=" not in before and problem(before, 100) is None:
            return f"argument {i + 1} (after {before})"
    return f"argument {i + 1}"


def check_invocation(args: Sequence[str], environ: Mapping[str, str] | None = None) -> None:
    """Refuse, with a UsageError naming it, the first argument or ``STELLAKEYS_*``
    environment variable that is not valid UTF-8, holds a NUL byte, or is too long."""
    env = os.environ if environ is None else environ
    for name in sorted(env):
        if name.startswith("STELLAKEYS_"):
            why = problem(env[name])
            if why is not None:
                raise click.UsageError(f"environment variable {name} {why}")
    for i, arg in enumerate(args):
        why = problem(arg)
        if why is not None:
            raise click.UsageError(f"{_where(args, i)} {why}: {shown(arg)}")


def parse_proof_address(value: str) -> str | None:
    """The normalised address (lowercase hex) if ``value`` is ``sha256:`` and 64 hex
    digits, else None."""
    text = value.strip()
    if _PROOF_ADDRESS.fullmatch(text) is None:
        return None
    return "sha256:" + text[7:].lower()


class ProofAddressType(_TextType):
    """The address of a stored proof: ``sha256:`` and 64 hex digits."""

    name = "sha256:HEX"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not isinstance(value, str):
            self.fail(f"expected text, got {type(value).__name__}", param, ctx)
        address = parse_proof_address(value)
        if address is None:
            why = problem(value) or "is not a proof address"
            hint = ""
            if not problem(value) and os.path.isfile(value):
                hint = f"; {shown(value)} is a file: give it with --envelope {shown(value)}"
            elif not problem(value):
                hint = "; for an envelope file use --envelope FILE, or pipe it on stdin"
            self.fail(f"{shown(value)} {why}: expected sha256: and 64 hex digits{hint}", param, ctx)
        return address


class KeyIdType(_TextType):
    """A key id: printable text (no control characters), 1 to MAX_KEY_ID_CHARS long."""

    name = "KEY_ID"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not isinstance(value, str):
            self.fail(f"expected text, got {type(value).__name__}", param, ctx)
        why = problem(value, MAX_KEY_ID_CHARS)
        if why is None and not value:
            why = "is empty"
        if why is None and not value.isprintable():
            why = "contains control characters"
        if why is not None:
            self.fail(f"{shown(value)} {why}", param, ctx)
        return str(value)


PROOF_ADDRESS = ProofAddressType()
KEY_ID = KeyIdType()
