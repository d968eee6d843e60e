"""The compatibility job's last check (.ci/compat): every test it names ran and passed, none was skipped.

pytest's exit status alone lets the job pass with nothing checked: an exactness test skipped (a skipif that turns
true in the job's venv, a gpu marker, a leftover torchvision there) or a file whose tests were all deselected still
exits 0. Usage: python .ci/compat_report.py REPORT.xml TEST [TEST ...] (the junit XML pytest wrote, and the job's
test arguments: a file, or a file::test node id). Prints one line; exits 1 on a problem.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET


def problems(report: str, wanted: list[str]) -> list[str]:
    cases = list(ET.parse(report).getroot().iter("testcase"))
    found = []
    for case in cases:
        outcome = next((child.tag for child in case if child.tag in ("skipped", "failure", "error")), "passed")
        found.append((case.get("classname", ""), case.get("name", "").split("[")[0], outcome))
    out = [f"{module}::{name} {outcome}" for module, name, outcome in found if outcome != "passed"]
    for test in wanted:
        path, _, function = test.partition("::")
        module = path.removesuffix(".py").replace("/", ".")
        ran = [f for f in found if (f[0] == module or f[0].startswith(module + "."))
               and (not function or f[1] == function.split("::")[-1].split("[")[0])]
        if not ran:
            out.append(f"{test}: no test ran")
    return out


def main(argv: list[str]) -> int:
    report, wanted = argv[0], argv[1:]
    found = problems(report, wanted)
    if found:
        print(f"compat job: the exactness tests did not all run and pass: {'; '.join(found)}")
        return 1
    print(f"compat job: all {len(wanted)} test entries ran, none skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
