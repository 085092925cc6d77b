"""Compare test outcomes of a calendar-shifted run with the unshifted run (scripts/test-calendar).

Usage: python scripts/compare_outcomes.py BASELINE.xml SHIFTED.xml LABEL

Every test of the shifted run must have run in the baseline with the same outcome (passed,
failed, skipped, error), and every test that passed in the baseline must pass shifted. Exits 1
and lists each difference otherwise. Hand-written because it is twenty lines over the stdlib's
ElementTree; no JUnit-diff tool is worth a dependency for that.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET


def outcomes(path: str) -> dict[str, str]:
    result: dict[str, str] = {}
    # Our own pytest run wrote this file: trusted input.
    for case in ET.parse(path).getroot().iter("testcase"):  # noqa: S314
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case} & {"failure", "error", "skipped"}
        result[name] = kinds.pop() if kinds else "passed"
    return result


def main() -> int:
    baseline_path, shifted_path, label = sys.argv[1:4]
    baseline, shifted = outcomes(baseline_path), outcomes(shifted_path)
    if not shifted:
        print(f"calendar {label}: the shifted run recorded no tests")
        return 1
    differences = [
        f"  {name}: {baseline.get(name, 'not run')} unshifted, {outcome} at {label}"
        for name, outcome in sorted(shifted.items())
        if outcome != "passed" or baseline.get(name) != "passed"
    ]
    if differences:
        print(f"calendar {label}: {len(differences)} test(s) differ from the unshifted run:")
        print("\n".join(differences))
        return 1
    print(f"calendar {label}: {len(shifted)} tests, all passed as they did unshifted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
