"""Notebook forensics: HTML displays (escaped), DataFrames, the timeline plot, the question
"which proofs did the compromised key sign, and which are still valid?", and the example
notebook executed end to end with nbclient."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stellakeys import COMPROMISE, FrozenClock, KeyManager, Statement, Subject
from stellakeys.dsse import Envelope, sign_envelope, verify_envelope
from stellakeys.keys import public_key_of_pem
from stellakeys.keystores import open_key_store
from stellakeys.keystores.ports import KeyStoreContext
from stellakeys.storage.memory import MemoryStore
from stellakeys.storage.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2024, 1, 15, tzinfo=UTC)
EVIDENCE = "evidence.stella/v1"


def statement(purl: str) -> bytes:
    return Statement((Subject(purl, {"sha256": "ab" * 32}),), EVIDENCE, {}).to_json()


@pytest.fixture
def km(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KeyManager]:
    monkeypatch.setenv("STELLAKEYS_PASSPHRASE", "forensics-test")
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    manager = KeyManager(
        MemoryStore(), clock=FrozenClock(T0), keystore_context=KeyStoreContext(home=home)
    )
    yield manager
    manager.close()


@pytest.fixture
def incident(km: KeyManager) -> dict[str, object]:
    """key "a" signs three proofs (one with "b" too); "a" is compromised; a thief signs one."""
    clock = km.clock
    assert isinstance(clock, FrozenClock)
    km.generate_key("a")
    km.generate_key("b", "pqc")
    anchor = km.create_anchor("pkg:npm/*", ["a", "b"], [EVIDENCE])
    proofs = {}
    for days, purl, keys in [
        (10, "pkg:npm/one@1", ["a"]),
        (20, "pkg:npm/two@1", ["a", "b"]),
        (30, "pkg:npm/three@1", ["b"]),
        (40, "pkg:npm/four@1", ["a"]),
    ]:
        clock.set(T0 + timedelta(days=days))
        proofs[purl] = km.sign(statement(purl), keys)
    record = km.get_key("a")
    assert record.key_store_uri
    handle = open_key_store(record.key_store_uri, km._ks_context).open(record.key_store_uri)
    # The thief's envelope claims key "b" in its keyid: only cryptography decides.
    evil = sign_envelope(
        "application/vnd.in-toto+json", statement("pkg:npm/evil@6"), [handle], ["b"]
    )
    clock.set(T0 + timedelta(days=50))
    km.revoke_key("ALL", "a", COMPROMISE, T0 + timedelta(days=35))
    return {"anchor": anchor, "proofs": proofs, "evil": evil}


def test_proofs_signed_by_answers_the_question(km: KeyManager, incident: dict) -> None:  # type: ignore[type-arg]
    from stellakeys.forensics import proofs_signed_by

    proofs = incident["proofs"]
    findings = proofs_signed_by(km, "a", envelopes=[incident["evil"]])
    by_purl = {p.purl: p for p in findings}
    assert list(by_purl) == ["pkg:npm/one@1", "pkg:npm/two@1", "pkg:npm/four@1", "pkg:npm/evil@6"]
    # Asserted times cannot vouch for a compromised key, even before the revocation.
    assert not by_purl["pkg:npm/one@1"].still_valid
    assert "compromise" in by_purl["pkg:npm/one@1"].result.reasons[0]
    assert by_purl["pkg:npm/one@1"].key_time == T0 + timedelta(days=10)
    assert by_purl["pkg:npm/one@1"].key_time_source.value == "asserted"
    # Co-signed by a key in good standing: still valid, through that key.
    two = by_purl["pkg:npm/two@1"]
    assert two.still_valid and [k.key_id for k in two.result.verified_keys] == ["b"]
    assert two.signed_by == ("a", "b")
    assert not by_purl["pkg:npm/four@1"].still_valid
    evil = by_purl["pkg:npm/evil@6"]
    assert not evil.stored and not evil.still_valid and evil.signed_by == ("a",)
    assert [p.digest for p in findings.still_valid] == [proofs["pkg:npm/two@1"]]
    assert json.loads(json.dumps(findings.to_dict()))["keyId"] == "a"


def test_html_is_escaped(km: KeyManager) -> None:
    from stellakeys.forensics import anchor_html

    # Key ids of imported keys are free text (generated ones are file names): the same public
    # key imported as "k<script>" is the anchor's key.
    generated = km.generate_key("k")
    km.import_key("k<script>", generated.public_key_pem)
    anchor = km.create_anchor("pkg:npm/*", ["k<script>"], ['"><img src=x onerror=alert(1)>'])
    proof = km.sign(
        Statement(
            (Subject("pkg:npm/x@1", {"sha256": "ab" * 32}),), '"><img src=x onerror=alert(1)>', {}
        ).to_json(),
        "k",
    )
    for rendered in (
        anchor._repr_html_(),
        anchor.key_history[0]._repr_html_(),
        km.verify(proof)._repr_html_(),
        km.verify(proof, at=T0 - timedelta(days=1))._repr_html_(),
        anchor_html(anchor, at=T0),
    ):
        assert "<script>" not in rendered and "<img" not in rendered
    shown = anchor._repr_html_()
    assert "k&lt;script&gt;" in shown and "&quot;&gt;&lt;img" in shown
    result = km.verify(proof)._repr_html_()
    assert "OK" in result and proof in result
    failed = km.verify(proof, at=T0 - timedelta(days=1))._repr_html_()
    assert "FAILED" in failed and "added at" in failed


def test_dataframes(km: KeyManager, incident: dict) -> None:  # type: ignore[type-arg]
    import pandas as pd

    from stellakeys.forensics import (
        audit_dataframe,
        history_dataframe,
        key_history,
        proofs_signed_by,
    )

    history = history_dataframe(km)
    assert list(history["key_id"]) == ["a", "b"]
    assert history.loc[history.key_id == "a", "compromised"].item()
    assert history["revoked_at"].dtype == "datetime64[ns, UTC]" or str(
        history["revoked_at"].dtype
    ).startswith("datetime64")
    assert len(key_history(km, "b")) == 1
    audit = audit_dataframe(km)
    assert list(audit["seq"]) == list(range(1, len(audit) + 1))
    assert "KEY_REVOKED" in set(audit["event_type"])
    assert isinstance(audit.loc[0, "details"], dict)
    frame = proofs_signed_by(km, "a").to_dataframe()
    assert isinstance(frame, pd.DataFrame) and list(frame["still_valid"]) == [False, True, False]


def test_dataframes_without_pandas_name_the_extra(
    km: KeyManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stellakeys import forensics

    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"stellakeys\[notebook\]"):
        forensics.audit_dataframe(km)
    with pytest.raises(ImportError, match="pandas"):
        forensics.history_dataframe(km)


def test_timeline_plot(km: KeyManager, incident: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    import matplotlib

    matplotlib.use("Agg")
    from stellakeys.forensics import plot_timeline, proofs_signed_by, timeline_data

    data = timeline_data(km)
    assert [(w.key_id, w.compromised) for w in data.windows] == [("a", True), ("b", False)]
    # Proofs on the rows of the keys that signed them: a signed 3 stored proofs, b signed 2.
    assert sorted(m.row for m in data.marks) == [0, 0, 0, 1, 1]
    assert {m.ok for m in data.marks if m.row == 0} == {False, True}
    ax = plot_timeline(km, proofs_signed_by(km, "a"))
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["pkg:npm/*  a", "pkg:npm/*  b"]
    ax.figure.savefig(tmp_path / "timeline.png")
    assert (tmp_path / "timeline.png").stat().st_size > 1000


def test_plot_without_matplotlib_names_the_extra(
    km: KeyManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stellakeys.forensics import plot_timeline

    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"stellakeys\[notebook\]"):
        plot_timeline(km)


def test_example_notebook_answers_the_question(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run examples/forensics.ipynb in a real kernel and check its answer against the store it
    generated, recomputed here independently (raw DSSE verification with the key's PEM)."""
    import nbformat
    from nbclient import NotebookClient

    if shutil.which("openssl") is None:
        pytest.fail("the openssl command line is missing: install Debian package openssl")
    notebook = nbformat.read(ROOT / "examples" / "forensics.ipynb", as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    keep = tmp_path / "kept"
    keep.mkdir()
    monkeypatch.setenv("FORENSICS_HOME", str(keep))  # the kernel inherits it
    NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=180,
        record_timing=False,
        resources={"metadata": {"path": str(ROOT / "examples")}},
    ).execute()

    text = notebook.cells[-1].outputs[0]["text"]
    answer = json.loads(text[text.index("{") :])
    assert answer["byPurl"] == {
        "pkg:npm/left-pad@1.3.0": False,
        "pkg:npm/lodash@4.17.21": True,
        "pkg:maven/org.apache.commons/commons-lang3@3.14.0": False,
        "pkg:npm/react@18.3.1": True,
        "pkg:npm/event-stream@3.3.6": False,
    }
    assert "(trusted time)" in text and "(asserted time)" in text

    # Independent check: which stored proofs does key-2024-prod's public key verify?
    store = SqliteStore.open_home(keep / "home")
    try:
        with store.read() as tx:
            key = tx.get_key("key-2024-prod")
            assert key is not None
            public = {"k": public_key_of_pem(key.public_key_pem)}
            signed = [
                p.digest
                for p in tx.iter_proofs()
                if verify_envelope(Envelope.from_json(p.envelope_json), public, 1).ok
            ]
            history = tx.history_of_key("key-2024-prod")
    finally:
        store.close()
    assert signed == answer["signed"][:-1]  # the last one was found outside the store
    assert len(signed) == 4
    assert {e.revoke_reason for e in history} == {"compromise"}
    assert set(answer["stillValid"]) | set(answer["invalid"]) == set(answer["signed"])

    # The rich outputs rendered: anchors, findings and a result as HTML, the timeline as PNG.
    kinds = [set(o.get("data", {})) for c in notebook.cells for o in c.get("outputs", [])]
    assert sum("text/html" in k for k in kinds) >= 5
    assert any("image/png" in k for k in kinds)
