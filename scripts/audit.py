"""Dependency audit: pip-audit over the installed environment, judged here.

Known vulnerabilities fail (exit 1). Where pip-audit cannot reach its vulnerability data
(a network that only reaches a package mirror), it marks every package "not found" rather
than failing; this says so loudly and exits 0, since there is nothing to judge. The
version floors in pyproject.toml (aiohttp >= 3.14.3, pyjwt >= 2.13) hold either way.
"""

from __future__ import annotations

import json
import subprocess
import sys

TIMEOUT_S = 300


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
        print(f"audit: pip-audit did not finish within {TIMEOUT_S} s", file=sys.stderr)
        return 1
    try:
        report = json.loads(run.stdout)
    except json.JSONDecodeError:
        print(f"audit: pip-audit failed:\n{run.stderr.strip()[-2000:]}", file=sys.stderr)
        return 1
    deps = report["dependencies"]
    audited = [d for d in deps if "skip_reason" not in d]
    vulnerable = [d for d in audited if d.get("vulns")]
    for dep in vulnerable:
        for vuln in dep["vulns"]:
            fixed = ", ".join(vuln.get("fix_versions", [])) or "no fix yet"
            print(f"VULNERABLE {dep['name']} {dep['version']}: {vuln['id']} (fixed in {fixed})")
    if vulnerable:
        return 1
    if not audited:
        print(
            f"audit: WARNING: no vulnerability data reachable; 0 of {len(deps)} packages "
            "audited (run `make audit` where PyPI's JSON API is reachable)"
        )
        return 0
    print(f"audit: {len(audited)} packages audited, no known vulnerabilities")
    return 0


if __name__ == "__main__":
    sys.exit(main())
