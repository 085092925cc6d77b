"""The ceremony package does not reach up into the facade: it receives the protected
operations at construction (stellakeys.ceremony.ports.ProtectedOperations). Checked statically
on every module of the package, counting imports inside functions and under TYPE_CHECKING,
so a lazy or type-only import cannot hide a dependency either."""

from __future__ import annotations

import ast
from pathlib import Path

import stellakeys.ceremony

PACKAGE = Path(stellakeys.ceremony.__file__).parent
FORBIDDEN = "stellakeys.manager"


def _imported(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    """Every module name an import statement anywhere in ``tree`` names (relative imports
    resolved against ``module``)."""
    found: list[tuple[int, str]] = []
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(tree):  # every statement, inside functions and `if` blocks too
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            found.append((node.lineno, base))
            # `from stellakeys import manager` names the facade module too.
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def _violations(source: str, module: str) -> list[tuple[int, str]]:
    tree = ast.parse(source)
    return [
        (line, name)
        for line, name in _imported(tree, module)
        if name == FORBIDDEN or name.startswith(FORBIDDEN + ".")
    ]


def test_no_ceremony_module_imports_the_facade() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 10  # the package was found
    bad = {
        str(path.relative_to(PACKAGE)): hits
        for path in modules
        if (
            hits := _violations(
                path.read_text(encoding="utf-8"),
                "stellakeys.ceremony." + path.stem,
            )
        )
    }
    assert bad == {}


def test_no_ceremony_module_is_over_600_lines() -> None:
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in PACKAGE.glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 600} == {}


def test_the_check_sees_every_kind_of_import() -> None:
    """The checker itself: each way of importing the facade is caught."""
    for source in (
        "import stellakeys.manager",
        "from stellakeys.manager import KeyManager",
        "from stellakeys import manager",
        "from .. import manager",
        "def f():\n    from stellakeys.manager import KeyManager\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from stellakeys.manager import KeyManager\n",
        "class C:\n    def m(self):\n        import stellakeys.manager as m\n",
    ):
        assert _violations(source, "stellakeys.ceremony.service"), source
    assert not _violations("from stellakeys.manager_tools import x", "stellakeys.ceremony.x")
    assert not _violations("from . import ports", "stellakeys.ceremony.service")
