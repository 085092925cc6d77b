"""The house stays clear (issue 16): no import cycle among stellakeys' modules, counting every
import -- at module level, inside functions and under ``TYPE_CHECKING`` -- read from the source
with ``ast`` (importing would hide lazy imports). Lazy imports are how cycles hid before."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "stellakeys"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """Every stellakeys module ``name`` imports, wherever the import statement is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def resolve(candidate: str) -> str | None:
        while candidate and candidate not in known:
            candidate = candidate.rpartition(".")[0]
        return candidate or None

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            # ``from pkg import x`` runs pkg/__init__ first: the package is a dependency too.
            targets = [base, *(f"{base}.{a.name}" for a in node.names)]
        for target in targets:
            found = resolve(target)
            if found is not None and found != name:
                yield found


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: set(imported(name, path, known)) for name, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    result.append(sorted(component))
    return result


def test_no_import_cycles_even_through_lazy_imports() -> None:
    found = cycles(import_graph())
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": set()}, []),
    ],
)
def test_the_cycle_finder_finds_cycles(
    graph: dict[str, set[str]], expected: list[list[str]]
) -> None:
    assert cycles(graph) == expected


def test_lazy_and_type_checking_imports_are_counted(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from stellakeys.b import X\n"
        "def f():\n    from stellakeys import c\n"
    )
    path = tmp_path / "a.py"
    path.write_text(source)
    known = {"stellakeys.a", "stellakeys.b", "stellakeys.c"}
    # ``from stellakeys import c`` also runs the package's __init__.
    assert set(imported("stellakeys.a", path, known | {"stellakeys"})) == {
        "stellakeys",
        "stellakeys.b",
        "stellakeys.c",
    }


#: The layers of DESIGN.md and docs/architecture.md, from the ground up. A module imports only
#: from its own layer or below. Every module must be placed (the longest matching prefix wins),
#: so a new module is a decision, not an accident.
LAYERS: dict[int, tuple[str, ...]] = {
    1: (
        "errors",
        "clock",
        "times",
        "_fileio",
        "strict_json",
        "limits",
        "_crashpoints",
        "_display",
    ),
    2: ("crypto", "purl", "purl_pattern", "intoto", "dsse", "keystores.uris"),
    3: (
        "keys",
        "anchors",
        "revocation",
        "profiles",
        "rotation",
        "audit",
        "intents",
        "jwk",
        "config",
        "config_schema",
        "ceremony.model",
        "ceremony.protected",
        "ceremony.policy",
        "ceremony.rules",
        "ceremony.recheck",
        "ceremony.statement",
        "ceremony._canonical",
        "ceremony.errors",
        "ceremony.actor",
        "ceremony.config",
        "ceremony.approvers",
    ),
    4: (
        "verification",
        "reasons",
        "binding",
        "key_validity",
        "anchor_keys",
        "signing_time",
        "verifier",
        "timestamp",
        "timestamp_token",
        "proof_index",
    ),
    5: ("storage.ports", "keystores.ports", "ceremony.ports", "notify"),
    6: ("storage", "keystores", "store_source", "store_verifier"),
    7: (
        "manager",
        "manager_core",
        "manager_values",
        "manager_keys",
        "manager_anchors",
        "manager_proofs",
        "ceremony",
        "key_lifecycle",
        "feed",
        "feed_document",
        "batch",
        "batch_stream",
        "metrics",
        "audit_replay",
        "anchor_proofs",
        "sigstore_bundle",
    ),
    8: ("pytest_plugin", "notebook", "forensics", "forensics_proofs"),
}


def layer_of(module: str) -> int | None:
    name = module.removeprefix("stellakeys.")
    best: tuple[int, int] | None = None
    for layer, prefixes in LAYERS.items():
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and (
                best is None or len(prefix) > best[1]
            ):
                best = (layer, len(prefix))
    return best[0] if best else None


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(m for m in modules() if m != "stellakeys" and layer_of(m) is None)
    assert unplaced == [], f"place these in LAYERS (and docs/architecture.md): {unplaced}"


def test_no_import_runs_from_a_lower_layer_to_a_higher_one() -> None:
    upward = [
        f"{module} (layer {layer_of(module)}) imports {dep} (layer {layer_of(dep)})"
        for module, deps in sorted(import_graph().items())
        for dep in sorted(deps)
        if (low := layer_of(module)) is not None
        and (high := layer_of(dep)) is not None
        and high > low
    ]
    assert upward == [], "\n".join(upward)


def test_no_module_is_over_600_lines() -> None:
    """One concept per module (docs/architecture.md): a module that outgrows 600 lines is
    split, its old name re-exporting what moved."""
    roots = [PACKAGE, ROOT / "stellakeys_cli", ROOT / "stellakeys_server"]
    long = sorted(
        f"{p.relative_to(ROOT)}: {n} lines"
        for root in roots
        for p in root.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 600
    )
    assert long == []
