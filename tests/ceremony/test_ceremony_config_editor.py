"""A config editor alone cannot switch dual control off (issue 15, decision 0015).

Separate ``stellaops`` processes on one home whose store recorded, at ``db migrate``, that
trust-anchor updates and revocations need a ceremony. Pointing the CLI at another
configuration (``--config``, ``STELLAKEYS_CONFIG``) or setting ``enabled: false`` in the
signer configuration leaves the protected operations refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from ceremony_support import CISO, LEAD
from test_ceremony_cli import make_home, write_yaml


def _signer(home: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((home / "signer.yaml").read_text())
    return loaded


def test_config_editor_cannot_switch_dual_control_off(tmp_path: Path) -> None:
    cli = make_home(tmp_path, {LEAD: "default", CISO: "default"})
    migrated = json.loads(cli.run(LEAD, "db", "migrate", "--json").stdout)
    signer = _signer(cli.home)

    other = tmp_path / "other.yaml"  # the same profiles, no ceremonies section at all
    write_yaml(other, {"signer": signer["signer"]})
    create = ("anchor", "create", "--purl-pattern", "pkg:npm/*", "--key-ids", "security-lead-key")
    create += ("--predicate-types", "https://slsa.dev/provenance/v1")

    attempts = [
        (cli.command(LEAD, "--config", str(other), *create), cli.env),
        (cli.command(LEAD, *create), {**cli.env, "STELLAKEYS_CONFIG": str(other)}),
    ]
    disabled = dict(signer, ceremonies={**signer["ceremonies"], "enabled": False})
    write_yaml(cli.home / "signer.yaml", disabled)
    attempts.append((cli.command(LEAD, *create), cli.env))

    import subprocess

    for argv, env in attempts:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1, (argv, proc.stdout, proc.stderr)
        assert "protected by dual control" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert json.loads(cli.run(LEAD, "anchor", "list", "--json").stdout) == []
    assert migrated["ceremonyPolicy"]["recorded"] is True  # at `db migrate`, with an event
    events = json.loads(
        cli.run(
            LEAD, "audit", "query", "--type", "signer.ceremony.policy_recorded", "--json"
        ).stdout
    )
    assert [e["details"]["version"] for e in events] == [1]

    # A weaker configuration given to `db migrate` does not weaken the store either.
    again = json.loads(cli.run(LEAD, "db", "migrate", "--json").stdout)
    assert again["ceremonyPolicy"]["recorded"] is False
    assert any("no longer need a ceremony" in t for t in again["ceremonyPolicy"]["notStrictened"])

    shown = json.loads(cli.run(LEAD, "ceremony", "policy", "--json").stdout)
    assert shown["storeVersion"] == 1
    assert "trust-anchor-update" in shown["inForce"]["protectedOperations"]

    verified = cli.run(LEAD, "audit", "verify")
    assert verified.stdout.startswith("OK:")
