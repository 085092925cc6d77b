"""Run every ``benchmarks/bench_*.py`` script's ``main()`` in turn, in name order.

Usage: ``python benchmarks/run_all.py [--quick]``. Arguments are left in ``sys.argv`` for the
scripts to read. Exits non-zero if any script fails, after running the others.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def scripts() -> list[Path]:
    return sorted(HERE.glob("bench_*.py"))


def run(path: Path) -> bool:
    spec = importlib.util.spec_from_file_location(f"benchmarks_{path.stem}", path)
    if spec is None or spec.loader is None:
        print(f"!! {path.name}: cannot be imported", file=sys.stderr)
        return False
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
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


def main() -> int:
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
