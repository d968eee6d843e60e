"""CI's scripts fail when a step fails: .ci/run stops at a failed command, and the compatibility job (.ci/compat)
does not pass with an exactness test skipped or not run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / ".ci" / "compat_report.py"


def commands(script: Path) -> list[str]:
    return [line.split("#")[0].strip() for line in script.read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_ci_run_has_no_command_whose_failure_set_e_ignores():
    """Under `set -e` only the last command of an && / || list stops the script: `pip install ... && pytest` went on
    to the compatibility job after a failed install, and CI passed on that job alone."""
    lines = commands(ROOT / ".ci" / "run")
    assert "set -euo pipefail" in lines
    assert [line for line in lines if "&&" in line or "||" in line] == []
    assert lines[-1] == ".ci/compat"  # the compatibility job runs, last, and its status is the script's


def test_the_compat_job_checks_its_report_for_each_test_it_runs():
    text = (ROOT / ".ci" / "compat").read_text()
    assert re.search(r'--junitxml="\$report" "\$\{TESTS\[@\]\}"', text)
    assert re.search(r'compat_report\.py "\$report" "\$\{TESTS\[@\]\}"; then', text)


def junit(path: Path, cases: list[tuple[str, str, str]]) -> Path:
    body = "".join(f'<testcase classname="{module}" name="{name}">{"<skipped/>" if kind == "skipped" else ""}'
                   "</testcase>" for module, name, kind in cases)
    path.write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest">{body}</testsuite></testsuites>')
    return path


def run_check(report: Path, *tests: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), str(report), *tests], capture_output=True, text=True)


def test_compat_report_passes_when_every_entry_ran_and_passed(tmp_path):
    report = junit(tmp_path / "r.xml", [("tests.unit.test_a", "test_x", "passed"),
                                        ("tests.integration.test_b", "test_y[56-1.0]", "passed")])
    done = run_check(report, "tests/unit/test_a.py", "tests/integration/test_b.py::test_y")
    assert done.returncode == 0, done.stdout


def test_compat_report_fails_on_a_skipped_exactness_test(tmp_path):
    report = junit(tmp_path / "r.xml", [("tests.unit.test_a", "test_x", "passed"),
                                        ("tests.unit.test_a", "test_without_torchvision", "skipped")])
    done = run_check(report, "tests/unit/test_a.py")
    assert done.returncode == 1 and "test_without_torchvision skipped" in done.stdout
    assert done.stdout.count("\n") == 1


def test_compat_report_fails_when_an_entry_ran_nothing(tmp_path):
    report = junit(tmp_path / "r.xml", [("tests.unit.test_a", "test_x", "passed")])
    done = run_check(report, "tests/unit/test_a.py", "tests/integration/test_b.py::test_y")
    assert done.returncode == 1 and "tests/integration/test_b.py::test_y: no test ran" in done.stdout
