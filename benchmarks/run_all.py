"""Run every ``benchmarks/bench_*.py`` script's ``main()`` in turn, in name order.

Usage: ``python benchmarks/run_all.py [--quick]``. Arguments are left in ``sys.argv`` for the
scripts to read. Exits non-zero if any script fails, after running the others.

``--quick`` is the CI guard (issue 20): it runs only the scripts listed in
``benchmarks/floors.json``, each in its quick mode, and fails when a ratio they report falls
below its recorded floor. Only ratios are guarded, never absolute times (each ratio is
measured within one run against its reference: the raw primitive, the bare driver, a
``python -c`` start-up), and the floors sit well below the figures in benchmarks/README.md,
so a noisy shared machine does not fail the build but a lost optimisation does.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def scripts() -> list[Path]:
    return sorted(HERE.glob("bench_*.py"))


FLOORS = HERE / "floors.json"


def load(path: Path) -> object:
    spec = importlib.util.spec_from_file_location(f"benchmarks_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path.name}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run(path: Path) -> bool:
    try:
        module = load(path)
        main = getattr(module, "main", None)
        if not callable(main):
            print(f"!! {path.name}: has no main()", file=sys.stderr)
            return False
        main()
    except Exception:  # report it and go on with the other scripts
        traceback.print_exc()
        print(f"!! {path.name} failed", file=sys.stderr)
        return False
    return True


def check_floors(name: str, rows: list[dict[str, object]], floors: dict[str, float]) -> list[str]:
    """Each floor names a row and a ratio field as ``"<row>: <field>"``; a missing row is a
    failure too (a renamed row must not silently drop its guard)."""
    problems = []
    by_row = {str(r.get("row")): r for r in rows}
    for key, floor in floors.items():
        row_name, _, field = key.rpartition(": ")
        row = by_row.get(row_name)
        if row is None or not isinstance(row.get(field), int | float):
            problems.append(f"{name}: no ratio {key!r} reported")
            continue
        value = float(row[field])  # type: ignore[arg-type]
        ok = value <= floor if field.startswith("times_") else value >= floor
        verdict = "ok" if ok else "BELOW FLOOR"
        print(f"  {name}: {key} = {value:.3f} (floor {floor}) {verdict}")
        if not ok:
            problems.append(f"{name}: {key} = {value:.3f}, floor {floor}")
    return problems


def quick() -> int:
    """The CI guard: scripts named in floors.json, quick mode, ratios against floors. Fields
    named ``times_*`` are ceilings (how many times a reference something takes)."""
    floors: dict[str, dict[str, float]] = json.loads(FLOORS.read_text())
    problems: list[str] = []
    for name, script_floors in floors.items():
        print(f"\n##### {name} --quick", flush=True)
        start = time.perf_counter()
        module = load(HERE / f"{name}.py")
        rows = module.main(["--quick"])  # type: ignore[attr-defined]
        problems += check_floors(name, rows, script_floors)
        print(f"##### {name}: {time.perf_counter() - start:.1f}s", flush=True)
    if problems:
        print("ratios below their floors:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    return 0


def main() -> int:
    if "--quick" in sys.argv[1:]:
        return quick()
    failed: list[str] = []
    for path in scripts():
        print(f"\n##### {path.name}", flush=True)
        start = time.perf_counter()
        if not run(path):
            failed.append(path.name)
        print(f"##### {path.name}: {time.perf_counter() - start:.1f}s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
