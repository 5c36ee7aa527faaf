"""The scripts in .ci/: they lint clean, and the audit never claims an audit that did not happen.

`.ci/audit` is run against a stand-in `pip-audit` (in a fake virtual environment named by
`VENV`) that writes the JSON report the real one writes, so each outcome is exercised here
without reaching a vulnerability database.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

CI = Path(__file__).resolve().parents[1] / ".ci"


def find_shellcheck() -> str:
    """The shellcheck binary; `make test` installs it (system-deps), so a missing one fails."""
    found = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=str(Path(sys.executable).parent)
    )
    if found is None:
        pytest.fail("shellcheck is not installed: run `make test`, which installs it")
    return found


@pytest.mark.parametrize("script", ["run", "audit"])
def test_ci_scripts_lint_clean(script: str) -> None:
    done = subprocess.run(
        [find_shellcheck(), "--shell=bash", str(CI / script)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout


def run_audit(
    tmp_path: Path, report: dict[str, Any], exit_code: int = 0
) -> subprocess.CompletedProcess[str]:
    """`.ci/audit` with a pip-audit that writes `report` and exits with `exit_code`."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    fake = bin_dir / "pip-audit"
    fake.write_text(
        "#!/bin/sh\n"
        'while [ "$#" -gt 0 ]; do\n'
        '  if [ "$1" = "--output" ]; then cat "$REPORT" >"$2"; fi\n'
        "  shift\n"
        "done\n"
        f"exit {exit_code}\n"
    )
    fake.chmod(0o755)
    (tmp_path / "report.json").write_text(json.dumps(report))
    return subprocess.run(
        [str(CI / "audit")],
        capture_output=True,
        text=True,
        env={
            "PATH": "/usr/bin:/bin",
            "VENV": str(tmp_path / "venv"),
            "REPORT": str(tmp_path / "report.json"),
        },
        timeout=60,
    )


def dependency(
    name: str, vulns: list[dict[str, Any]] | None = None, skip: str = ""
) -> dict[str, Any]:
    """One entry of pip-audit's JSON report."""
    if skip:
        return {"name": name, "skip_reason": skip}
    return {"name": name, "version": "1.0", "vulns": vulns or []}


def test_an_audit_that_reached_nothing_fails_and_says_so(tmp_path: Path) -> None:
    unreachable = "Dependency not found on PyPI and could not be audited: x (1.0)"
    done = run_audit(
        tmp_path,
        {"dependencies": [dependency("a", skip=unreachable), dependency("b", skip=unreachable),
                          dependency("edgefleet", skip="distribution marked as editable")]},
    )  # fmt: skip
    assert done.returncode == 3, done.stdout + done.stderr
    assert "0 of 2 installed packages audited" in done.stdout
    assert "could not reach its vulnerability database" in done.stderr
    assert "Nothing was audited" in done.stderr


def test_known_vulnerabilities_are_listed_and_fail(tmp_path: Path) -> None:
    vuln = {"id": "GHSA-xxxx", "fix_versions": ["1.2"], "description": "bad"}
    done = run_audit(
        tmp_path, {"dependencies": [dependency("a", [vuln]), dependency("b")]}, exit_code=1
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "2 of 2 installed packages audited" in done.stdout
    assert "a 1.0: GHSA-xxxx (fixed in 1.2)" in done.stdout
    assert "known vulnerabilities: 1" in done.stdout


def test_a_clean_audit_passes_and_names_what_it_skipped(tmp_path: Path) -> None:
    done = run_audit(
        tmp_path,
        {"dependencies": [dependency("a"), dependency("b", skip="not on PyPI: b (1.0)")]},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 of 2 installed packages audited" in done.stdout
    assert "not audited: b" in done.stdout
    assert "known vulnerabilities: 0" in done.stdout
