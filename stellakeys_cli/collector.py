"""The cyclic collector tuned for a short-lived ``stellaops`` process (decision 0033).

A plain ``stellaops verify`` spends about a fifth of its life in the cyclic collector
(decision 0033, issue 20): loading click, attrs, cryptography and the command's modules
allocates tens of thousands of objects that live until exit (modules, classes, functions),
and the collector scans them again and again while they load (~7 ms); at exit the
interpreter runs full collections over all of them once more (~12 ms) although the process
is about to end. Neither finds garbage worth the scan.

So the process entry point (:func:`stellakeys_cli.process.run`; never
:func:`stellakeys_cli.main.main` called in a test or an application) raises the collector's
first threshold while the command starts (:func:`starting`), freezes what start-up made once
the command's store is open (:func:`settled`: those objects are never scanned again, the
pattern of CPython's ``gc.freeze`` documentation), then runs the command with the usual
thresholds, and freezes again at exit (:func:`at_exit`) so the interpreter's final
collections skip everything.

Nothing here changes what is freed by reference counting, nor when ``atexit`` handlers,
``with`` blocks and ``finally`` clauses run. A command that never opens a store still
collects: the raised threshold bounds its garbage, it does not switch collection off.
"""

from __future__ import annotations

import gc

__all__ = ["STARTING_THRESHOLD", "at_exit", "settled", "starting"]

#: Container allocations between two young collections while the command starts: more than
#: start-up allocates (about 50,000), so none runs then, yet a bound on cyclic garbage for a
#: command that never reaches :func:`settled`.
STARTING_THRESHOLD = 200_000

_saved: tuple[int, int, int] | None = None


def starting() -> None:
    """At process start: no young collection while the command's modules load."""
    global _saved
    if _saved is None:
        _saved = gc.get_threshold()
        gc.set_threshold(STARTING_THRESHOLD, _saved[1], _saved[2])


def settled() -> None:
    """The command's store is open and its modules loaded: freeze what start-up made and
    collect with the usual thresholds from here. Does nothing outside a ``stellaops``
    process (tests and applications calling the CLI in-process keep their collector)."""
    global _saved
    if _saved is not None:
        gc.freeze()
        gc.set_threshold(*_saved)
        _saved = None


def at_exit() -> None:
    """The command is done: the interpreter's final collections need not scan what is left
    (the process ends; reference counting still frees and closes as usual)."""
    gc.freeze()
