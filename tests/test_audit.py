"""``make audit`` (scripts/audit.py) judges pip-audit's output: only an audit that really
looked up the packages may pass; one that could not run, or looked up nothing, fails."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from scripts import audit
from scripts.audit import judge

INSTALLED = {"aiohttp": "3.14.5", "pyjwt": "2.15.1", "torch": "2.13.0+cpu"}
EDITABLE = {"name": "local-ai-gateway", "skip_reason": "distribution marked as editable"}


def not_found(name: str) -> dict[str, str]:
    version = INSTALLED[name]
    return {
        "name": name,
        "skip_reason": f"Dependency not found on PyPI and could not be audited: {name} ({version})",
    }


def clean(name: str) -> dict[str, Any]:
    return {"name": name, "version": INSTALLED[name], "vulns": []}


def report(*deps: dict[str, Any]) -> str:
    return json.dumps({"dependencies": list(deps), "fixes": []})


def test_audited_and_clean_passes() -> None:
    # A local build (torch +cpu) can never be on PyPI: named, but no reason to fail.
    verdict = judge(
        0, report(clean("aiohttp"), clean("pyjwt"), EDITABLE, not_found("torch")), "", INSTALLED
    )
    assert verdict.code == 0
    assert verdict.lines == (
        "audit: 2 packages audited, no known vulnerabilities "
        "(not on PyPI, so not audited: torch 2.13.0+cpu)",
    )


def test_vulnerabilities_fail_with_exit_1() -> None:
    vulnerable = {
        "name": "aiohttp",
        "version": "3.14.5",
        "vulns": [{"id": "GHSA-xxxx", "fix_versions": ["3.14.6"], "aliases": []}],
    }
    verdict = judge(1, report(vulnerable, clean("pyjwt")), "", INSTALLED)
    assert verdict.code == 1
    assert verdict.lines == ("VULNERABLE aiohttp 3.14.5: GHSA-xxxx (fixed in 3.14.6)",)


def test_nothing_audited_fails() -> None:
    # What pip-audit reports, exit status 0, when its vulnerability service answers 404 for
    # every package (a network that reaches a package index but not PyPI's JSON API).
    stdout = report(not_found("aiohttp"), not_found("pyjwt"), EDITABLE)
    verdict = judge(0, stdout, "No known vulnerabilities found\n", INSTALLED)
    assert verdict.code == audit.NOT_AUDITED
    assert verdict.code != 0
    (line,) = verdict.lines
    assert line.startswith("audit: FAILED: nothing was audited: 0 of 2 packages")
    assert "aiohttp, pyjwt; pip-audit says: Dependency not found on PyPI" in line


def test_some_packages_not_audited_fails() -> None:
    verdict = judge(0, report(clean("aiohttp"), not_found("pyjwt")), "", INSTALLED)
    assert verdict.code == audit.NOT_AUDITED
    (line,) = verdict.lines
    assert line.startswith("audit: FAILED: 1 of 2 packages not audited")
    assert line.endswith(
        "not audited: pyjwt; pip-audit says: "
        "Dependency not found on PyPI and could not be audited: pyjwt (2.15.1)"
    )


@pytest.mark.parametrize(
    ("returncode", "stdout", "stderr", "fragment"),
    [
        (1, "", "ConnectionError: cannot reach pypi.org\n", "ConnectionError: cannot reach"),
        (1, "", "No module named pip_audit\n", "No module named pip_audit"),
        (2, report(clean("aiohttp")), "usage: pip-audit ...\n", "exit status 2"),
        (0, "[]", "", "not a pip-audit JSON report"),
        (0, '{"dependencies": [{"version": "1"}]}', "", "not a pip-audit JSON report"),
        (0, report(), "", "nothing was audited: 0 of 0 packages"),
    ],
)
def test_pip_audit_errors_fail(returncode: int, stdout: str, stderr: str, fragment: str) -> None:
    verdict = judge(returncode, stdout, stderr, INSTALLED)
    assert verdict.code == audit.NOT_AUDITED
    assert fragment in "\n".join(verdict.lines)


def test_main_runs_pip_audit_and_judges(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fake_run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert args[1:4] == ["-m", "pip_audit", "--skip-editable"]
        return subprocess.CompletedProcess(args, 0, report(not_found("aiohttp")), "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert audit.main() == audit.NOT_AUDITED
    assert "nothing was audited" in capsys.readouterr().err


def test_main_fails_when_pip_audit_hangs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fake_run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(args, audit.TIMEOUT_S)

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert audit.main() == audit.NOT_AUDITED
    assert "did not finish" in capsys.readouterr().err
