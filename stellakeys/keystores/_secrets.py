"""Where key stores get their secrets (passphrases, PINs): environment, a file, or a prompt.

The rules are deliberately strict because a secret that leaks through a config mistake is
worse than a store that refuses to start:

* an environment variable (``STELLAKEYS_PASSPHRASE``) and a file named by another variable
  (``STELLAKEYS_PASSPHRASE_FILE``) are both accepted, but never both at once: if two sources
  disagree the wrong one would silently win;
* a secret file readable or writable by group or others is refused (``chmod 600``): readable
  leaks it, writable lets someone else choose the passphrase new keys are encrypted under;
* an empty secret is treated as absent, never as "no passphrase";
* with neither set, the host's ``prompt`` callable is asked; without one the error says how to
  provide the secret.

Secrets never appear in an exception message, a log record or a ``repr``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NoReturn

from stellakeys.errors import KeyStoreError

__all__ = ["Secret", "SecretSource"]


class Secret:
    """A secret value and where it came from. ``repr`` and ``str`` show only the origin."""

    __slots__ = ("_value", "origin")

    def __init__(self, value: str, origin: str) -> None:
        self._value = value
        #: Human description of the source, safe to print: ``$STELLAKEYS_PASSPHRASE``,
        #: ``file /run/secrets/pass``, ``prompt``.
        self.origin = origin

    def reveal(self) -> str:
        """The secret itself. Named so that every use is easy to find in review."""
        return self._value

    def __repr__(self) -> str:
        return f"<Secret from {self.origin}>"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("secrets cannot be pickled")


class SecretSource:
    """One secret (e.g. the software store passphrase) and the ways a user may provide it.

    >>> src = SecretSource("passphrase for key store 'default'", "STELLAKEYS_PASSPHRASE",
    ...                    environ={"STELLAKEYS_PASSPHRASE": "s3cret"})
    >>> src.read().origin
    '$STELLAKEYS_PASSPHRASE'
    """

    __slots__ = ("_environ", "_file", "_prompt", "env_var", "file_env_var", "what")

    def __init__(
        self,
        what: str,
        env_var: str,
        file_env_var: str | None = None,
        *,
        prompt: Callable[[str], str] | None = None,
        file: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        #: What the secret is for, used in prompts and error messages ("PIN for token 'T'").
        self.what = what
        self.env_var = env_var
        self.file_env_var = file_env_var if file_env_var is not None else f"{env_var}_FILE"
        self._prompt = prompt
        #: An explicit file (e.g. RFC 7512 ``pin-source``), used before the file variable.
        self._file = None if file is None else Path(file)
        self._environ = os.environ if environ is None else environ

    def __repr__(self) -> str:
        return f"<SecretSource {self.what!r} via ${self.env_var}, ${self.file_env_var}, prompt>"

    def _how(self) -> str:
        return (
            f"set ${self.env_var}, or put it in a file readable only by you (chmod 600) and "
            f"set ${self.file_env_var} to its path, or run interactively to be prompted"
        )

    def read(self, *, confirm: bool = False) -> Secret:
        """The secret, from the first source that is set; KeyStoreError if none is.

        ``confirm`` asks twice when prompting (used when a new store is being created under
        this passphrase, where a typo would lock the keys away for good).
        """
        value = self._environ.get(self.env_var) or None
        file_value = self._environ.get(self.file_env_var) or None
        if value is not None and (file_value is not None or self._file is not None):
            raise KeyStoreError(
                f"both ${self.env_var} and a secret file are set for the {self.what}; "
                "set only one so it is clear which is used"
            )
        if value is not None:
            return Secret(value, f"${self.env_var}")
        path = self._file if self._file is not None else file_value
        if path is not None:
            return self._read_file(Path(path))
        if self._prompt is not None:
            return self._ask(confirm)
        raise KeyStoreError(f"no {self.what} available: {self._how()}")

    def _read_file(self, path: Path) -> Secret:
        origin = f"file {path}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise KeyStoreError(
                f"cannot read the {self.what} from {origin}: {exc.strerror}"
            ) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise KeyStoreError(f"{origin} (the {self.what}) is not a regular file")
            if st.st_mode & 0o077:
                raise KeyStoreError(
                    f"{origin} (the {self.what}) is accessible by group or others "
                    f"(mode {stat.S_IMODE(st.st_mode):o}); run 'chmod 600 {path}'"
                )
            with os.fdopen(os.dup(fd), "rb") as handle:
                raw = handle.read(64 * 1024 + 1)
        finally:
            os.close(fd)
        if len(raw) > 64 * 1024:
            raise KeyStoreError(f"{origin} (the {self.what}) is larger than 64 KiB")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise KeyStoreError(f"{origin} (the {self.what}) is not UTF-8") from None
        # One trailing newline is what `echo secret > file` adds; it is not part of the secret.
        if text.endswith("\r\n"):
            text = text[:-2]
        elif text.endswith("\n"):
            text = text[:-1]
        if not text:
            raise KeyStoreError(f"{origin} (the {self.what}) is empty")
        return Secret(text, origin)

    def _ask(self, confirm: bool) -> Secret:
        assert self._prompt is not None
        first = self._prompt(f"{self.what[:1].upper()}{self.what[1:]}: ")
        if not first:
            raise KeyStoreError(f"an empty {self.what} was entered")
        if confirm and self._prompt(f"Repeat the {self.what}: ") != first:
            raise KeyStoreError(f"the two entries of the {self.what} differ")
        return Secret(first, "prompt")
