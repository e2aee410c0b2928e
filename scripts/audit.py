"""Dependency audit: pip-audit over the installed environment, judged here.

Exit 0 only when every installed package was looked up and none has a known vulnerability;
1 when some have; 2 when the audit is incomplete. Incomplete covers pip-audit failing to run
and, the case that matters, pip-audit finishing "successfully" without auditing: where it
cannot reach its vulnerability data (a network that reaches a package mirror but not PyPI's
JSON API), it marks every package "not found", prints "No known vulnerabilities found" and
exits 0. A check that could not run must not pass.

Two kinds of package are not audited and do not fail: the project itself (editable) and local
builds such as ``torch 2.13.0+cpu``, whose local version labels never appear on PyPI.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata

TIMEOUT_S = 300
VULNERABLE = 1
NOT_AUDITED = 2
_SHOWN = 5  # packages named in a failure message; the rest are counted
_STDERR_CHARS = 2000


@dataclass(frozen=True)
class Verdict:
    code: int
    lines: tuple[str, ...]  # to stdout when the code is 0, else to stderr


def _canonical(name: str) -> str:
    # PEP 503, as pip-audit names packages.
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_versions() -> dict[str, str]:
    return {_canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}


def _incomplete(message: str) -> Verdict:
    return Verdict(NOT_AUDITED, (f"audit: FAILED: {message}",))


def _listed(deps: list[dict[str, str]]) -> str:
    names = ", ".join(d["name"] for d in deps[:_SHOWN])
    more = len(deps) - _SHOWN
    if more > 0:
        names += f" and {more} more"
    return f"{names}; pip-audit says: {deps[0]['skip_reason']}"


def judge(returncode: int, stdout: str, stderr: str, installed: Mapping[str, str]) -> Verdict:
    """What a pip-audit run (``--format json``) means. ``installed`` maps canonical package
    names to their installed versions, to recognise local builds."""
    if returncode not in (0, 1):  # 1 is "vulnerabilities found"; anything else an error
        return _incomplete(
            f"pip-audit exit status {returncode}:\n{stderr.strip()[-_STDERR_CHARS:]}"
        )
    try:
        deps = json.loads(stdout)["dependencies"]
        valid = all(isinstance(dep["name"], str) for dep in deps)
    except (json.JSONDecodeError, TypeError, KeyError):
        valid = False
    if not valid:
        reason = stderr.strip()[-_STDERR_CHARS:] or f"not a pip-audit JSON report: {stdout[:200]!r}"
        return _incomplete(f"pip-audit did not audit:\n{reason}")

    audited = [d for d in deps if "skip_reason" not in d]
    skipped = [d for d in deps if "skip_reason" in d and "editable" not in d["skip_reason"]]
    local = [d for d in skipped if "+" in installed.get(_canonical(d["name"]), "")]
    missed = [d for d in skipped if d not in local]
    vulnerable = [d for d in audited if d.get("vulns")]
    if vulnerable:
        return Verdict(
            VULNERABLE,
            tuple(
                f"VULNERABLE {dep['name']} {dep['version']}: {vuln['id']} "
                f"(fixed in {', '.join(vuln.get('fix_versions', [])) or 'no fix yet'})"
                for dep in vulnerable
                for vuln in dep["vulns"]
            ),
        )
    total = len(audited) + len(skipped)
    if not audited:
        return _incomplete(
            f"nothing was audited: 0 of {total} packages; pip-audit could not get their "
            "vulnerability data (from https://pypi.org/pypi/NAME/VERSION/json)"
            + (f": {_listed(missed)}" if missed else "")
        )
    if missed:
        return _incomplete(f"{len(missed)} of {total} packages not audited: {_listed(missed)}")
    line = f"audit: {len(audited)} packages audited, no known vulnerabilities"
    if local:
        builds = ", ".join(f"{d['name']} {installed[_canonical(d['name'])]}" for d in local)
        line += f" (not on PyPI, so not audited: {builds})"
    return Verdict(0, (line,))


def main() -> int:
    try:
        run = subprocess.run(
            [sys.executable, "-m", "pip_audit", "--skip-editable", "--format", "json"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        print(f"audit: FAILED: pip-audit did not finish within {TIMEOUT_S} s", file=sys.stderr)
        return NOT_AUDITED
    verdict = judge(run.returncode, run.stdout, run.stderr, installed_versions())
    for line in verdict.lines:
        print(line, file=sys.stdout if verdict.code == 0 else sys.stderr)
    return verdict.code


if __name__ == "__main__":
    sys.exit(main())
