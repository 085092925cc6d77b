"""Issue 17 item 1: one schema for every configuration file, checked at load.

Each test writes the file an operator would write and runs the CLI as a subprocess: the error
must name the file, the path and the fix, and the command must not run on a fallback.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stellakeys.config_schema import (
    APPROVERS_SCHEMA,
    SIGNER_SCHEMA,
    published_text,
    validate_config,
)
from stellakeys.errors import ConfigSchemaError

DOCS = Path(__file__).resolve().parent.parent / "docs"
ROOT = DOCS.parent


def run(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STELLAKEYS_")}
    env.update(
        STELLAKEYS_HOME=str(home),
        STELLAKEYS_PASSPHRASE="correct horse battery",
        PYTHONPATH=str(ROOT),
        NO_COLOR="1",
    )
    return subprocess.run(
        [sys.executable, "-m", "stellakeys_cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=home,
        timeout=120,
    )


def _config(tmp_path: Path, text: str) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "signer.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_lowercase_keystore_is_refused_with_did_you_mean(tmp_path: Path) -> None:
    # The case: the key must not be made in software://default instead of KMS.
    _config(
        tmp_path,
        'signer:\n  profiles:\n    release: {algorithm: ed25519, keystore: "kms://aws/key/x"}\n',
    )
    res = run(tmp_path, "key", "generate", "--profile", "release", "--key-id", "k1")
    assert res.returncode != 0
    line = res.stderr.strip().splitlines()[-1]
    assert str(tmp_path / "signer.yaml") in line
    assert "signer.profiles.release.keystore" in line
    assert "did you mean keyStore?" in line
    assert "Traceback" not in res.stderr
    assert not list(tmp_path.glob("keys/**/*.pem")), "no key may be generated on a fallback"


@pytest.mark.parametrize(
    ("text", "path", "hint"),
    [
        ("signerr:\n  profiles: {}\n", "signerr", "signer"),
        ("signer:\n  profile:\n    a: {algorithm: ed25519}\n", "signer.profile", "profiles"),
        ("databse: {url: 'sqlite:///x'}\n", "databse", "database"),
        (
            "ceremonies:\n  thresholds:\n    key-rotaton: {minimum: 2}\n",
            "ceremonies.thresholds.key-rotaton",
            "key-rotation",
        ),
        (
            "notifications:\n  ceremonies:\n    channels:\n      - {type: slack, webhok: x}\n",
            "notifications.ceremonies.channels[0].webhok",
            "webhook",
        ),
        ("feed:\n  keyIDs: [a]\n", "feed.keyIDs", "keyIds"),
    ],
)
def test_unknown_keys_name_file_path_and_closest(
    tmp_path: Path, text: str, path: str, hint: str
) -> None:
    _config(tmp_path, text)
    res = run(tmp_path, "key", "list")
    assert res.returncode == 1, res.stdout
    assert f"{tmp_path / 'signer.yaml'}: {path}: unknown" in res.stderr
    assert f"did you mean {hint}?" in res.stderr


@pytest.mark.parametrize(
    ("text", "path", "expected"),
    [
        (
            "signer:\n  profiles:\n    r: {algorithm: ed25519, rotation: {maxAgeMonths: twelve}}\n",
            "signer.profiles.r.rotation.maxAgeMonths",
            "expected an integer, got 'twelve'",
        ),
        ("ceremonies:\n  enabled: yes please\n", "ceremonies.enabled", "expected true or false"),
        ("database: postgresql://x\n", "database", "expected a mapping"),
        ("feed:\n  keyIds: a\n", "feed.keyIds", "expected a list"),
    ],
)
def test_wrong_types_name_path_and_type(
    tmp_path: Path, text: str, path: str, expected: str
) -> None:
    _config(tmp_path, text)
    res = run(tmp_path, "key", "list")
    assert res.returncode == 1
    assert f"{path}: {expected}" in res.stderr


def test_approvers_yaml_unknown_key(tmp_path: Path) -> None:
    (tmp_path / "approvers.yaml").write_text(
        "approverGroups:\n  - name: g\n    member: [a@example.com]\n", encoding="utf-8"
    )
    _config(tmp_path, "ceremonies: {enabled: true}\n")
    res = run(tmp_path, "auth", "keys", "list")
    assert res.returncode == 1
    assert "approvers.yaml: approverGroups[0].member: unknown key; did you mean members?" in (
        res.stderr
    )


def test_notifier_config_unknown_key(tmp_path: Path) -> None:
    from stellakeys.notify.router import load_router

    (tmp_path / "notifier-config.yaml").write_text(
        "notifications:\n  smtp: {hots: mail.example.com}\n", encoding="utf-8"
    )
    hint = r"notifications\.smtp\.hots: unknown key; did you mean host\?"
    with pytest.raises(ConfigSchemaError, match=hint):
        load_router(None, tmp_path)


def test_error_counts_further_problems() -> None:
    with pytest.raises(ConfigSchemaError, match=r"\(and 1 more problem") as info:
        validate_config({"signerr": {}, "feed": {"threshold": "two"}}, "x.yaml")
    assert info.value.path == "signerr"
    assert info.value.source == "x.yaml"


def test_published_schemas_are_current() -> None:
    # An editor validates against docs/*.schema.json: it must be what the loader checks.
    assert (DOCS / "signer.schema.json").read_text() == published_text(SIGNER_SCHEMA)
    assert (DOCS / "approvers.schema.json").read_text() == published_text(APPROVERS_SCHEMA)
    import jsonschema

    for schema in (SIGNER_SCHEMA, APPROVERS_SCHEMA):
        jsonschema.Draft202012Validator.check_schema(schema)


def _yaml_examples() -> list[tuple[str, str]]:
    found = []
    for page in sorted(DOCS.glob("*.md")):
        for n, block in enumerate(re.findall(r"```yaml\n(.*?)```", page.read_text(), re.S)):
            # A YAML list is a Prometheus rule file shown in docs, not stellakeys configuration.
            if not isinstance(yaml.safe_load(block), list):
                found.append((f"{page.name}#{n}", block))
    return found


@pytest.mark.parametrize(("where", "block"), _yaml_examples(), ids=lambda v: v if "#" in v else "")
def test_every_docs_example_validates(where: str, block: str) -> None:
    document = yaml.safe_load(block)
    assert isinstance(document, dict)
    kind = "approvers" if {"approverGroups", "approvers"} & set(document) else "signer"
    validate_config(document, where, kind)  # raises on any drift between docs and schema
    # And against the published file, as an editor would.
    import jsonschema

    published = json.loads((DOCS / f"{kind}.schema.json").read_text())
    jsonschema.validate(document, published)


def test_docs_have_examples_of_every_kind() -> None:
    names = {w.split("#")[0] for w, _ in _yaml_examples()}
    assert {"configuration.md", "ceremonies.md", "feed.md", "trusted-time.md"} <= names
