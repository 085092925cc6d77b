"""Where state lives and how it is configured: home directory, signer.yaml, database URL.

Resolution order, most specific first: explicit argument (CLI flag) > environment variable >
file in the home > built-in default.

* home: ``--home`` > ``STELLAKEYS_HOME`` > the platform's user data dir (``platformdirs``).
* signer config: ``--config`` > ``STELLAKEYS_CONFIG`` > ``<home>/signer.yaml`` > the runbook's
  five profiles on the software key store.
* database: ``--database-url`` > ``STELLAKEYS_DATABASE_URL`` > ``database.url`` in the signer
  config > SQLite at ``<home>/stellakeys.db``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from stellakeys.errors import ConfigError, DuplicateConfigKeyError
from stellakeys.profiles import SignerConfig

__all__ = ["Settings", "load_settings", "load_yaml", "resolve_home"]

ENV_HOME = "STELLAKEYS_HOME"
ENV_CONFIG = "STELLAKEYS_CONFIG"
ENV_DATABASE_URL = "STELLAKEYS_DATABASE_URL"
ENV_MAX_STALENESS = "STELLAKEYS_MAX_STALENESS"
ENV_ACTOR = "STELLAKEYS_ACTOR"


def resolve_home(home: str | Path | None = None) -> Path:
    if home is not None:
        return Path(home).expanduser()
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("stellakeys", appauthor=False))


@functools.cache
def _strict_yaml_loader() -> Any:
    """PyYAML's SafeLoader, except that a mapping with a duplicate key is an error.

    PyYAML silently keeps the last of two equal keys (``threshold: 3`` then ``threshold: 1``
    later in a long file), and the YAML spec says keys MUST be unique; a config reviewer who
    reads the first copy approves something else than what runs. Merge keys (``<<``) keep
    their meaning: an explicit key may override a merged one, which is what merging is for.
    Built on first use so that importing stellakeys does not import yaml.
    """
    import yaml

    class StrictSafeLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, Any] = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        first = seen.setdefault(key, key_node)
                    except TypeError:
                        continue  # unhashable: the base class reports it
                    if first is not key_node:
                        raise _DuplicateYamlKey(key, first, key_node)
            return super().construct_mapping(node, deep=deep)

    class _DuplicateYamlKey(yaml.YAMLError):
        def __init__(self, key: Any, first: Any, second: Any) -> None:
            super().__init__(f"duplicate key {key!r}")
            self.key = key
            self.first_line = first.start_mark.line + 1
            self.problem_mark = second.start_mark

    return StrictSafeLoader, _DuplicateYamlKey


def load_yaml(path: Path) -> Any:
    """A YAML document (safe loader only), or ConfigError naming the file and the problem.

    Duplicate keys are refused with :class:`DuplicateConfigKeyError` (a ConfigError); JSON
    config files are read by this loader too (YAML is a superset), so the rule covers them.
    """
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    loader, duplicate = _strict_yaml_loader()
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except duplicate as exc:
        line = exc.problem_mark.line + 1
        raise DuplicateConfigKeyError(
            str(exc.key), f"{path} line {line} (first at line {exc.first_line})"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: invalid YAML") from None


def default_actor() -> str:
    env = os.environ.get(ENV_ACTOR)
    if env:
        return env
    # Imported here, and the host name from uname where there is one (what gethostname(2)
    # returns on POSIX): every command builds Settings, and the socket module is start-up
    # time a verification does not need (issue 20: CLI start-up).
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    if hasattr(os, "uname"):
        host = os.uname().nodename
    else:  # pragma: no cover - Windows
        import socket

        host = socket.gethostname()
    return f"{user}@{host}"


@attrs.frozen
class Settings:
    home: Path
    signer: SignerConfig
    database_url: str | None
    actor: str
    #: The whole parsed configuration document, for sections other modules own
    #: (``ceremonies``, ``notifications``, ...).
    document: Mapping[str, Any] = attrs.field(factory=dict)
    #: PostgreSQL's opt-in bounded staleness in seconds (None: strict; decision 0024).
    max_staleness: float | None = None


def load_settings(
    home: str | Path | None = None,
    config_path: str | Path | None = None,
    database_url: str | None = None,
    actor: str | None = None,
    max_staleness: float | None = None,
) -> Settings:
    resolved_home = resolve_home(home)
    path: Path | None = None
    if config_path is not None:
        path = Path(config_path)
    elif os.environ.get(ENV_CONFIG):
        path = Path(os.environ[ENV_CONFIG])
    elif (resolved_home / "signer.yaml").exists():
        path = resolved_home / "signer.yaml"
    document: Any = load_yaml(path) if path is not None else None
    if path is not None:
        from stellakeys.config_schema import validate_config

        # Before any section is read: a typo must not fall back to a default (issue 17).
        validate_config(document, path, "signer")
    signer = SignerConfig.from_dict(document) if document and "signer" in document else None
    url = database_url or os.environ.get(ENV_DATABASE_URL)
    if url is None and document:
        db = document.get("database")
        if isinstance(db, Mapping) and isinstance(db.get("url"), str):
            url = db["url"]
    staleness = max_staleness if max_staleness is not None else _max_staleness(document)
    return Settings(
        max_staleness=staleness,
        home=resolved_home,
        signer=signer or SignerConfig.from_dict(None),
        database_url=url or None,
        actor=actor or default_actor(),
        document=document or {},
    )


def _max_staleness(document: Any) -> float | None:
    """$STELLAKEYS_MAX_STALENESS, else ``database.maxStaleness`` (the schema checked it)."""
    env = os.environ.get(ENV_MAX_STALENESS)
    if env:
        try:
            value = float(env)
        except ValueError:
            value = -1.0
        if not 0 < value < float("inf"):
            raise ConfigError(
                f"{ENV_MAX_STALENESS}={env!r}: give a positive number of seconds, or unset it"
            )
        return value
    db = document.get("database") if isinstance(document, Mapping) else None
    configured = db.get("maxStaleness") if isinstance(db, Mapping) else None
    return float(configured) if isinstance(configured, int | float) else None
