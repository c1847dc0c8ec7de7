"""Audit the installed Python packages against PyPI's published advisories.

Runs pip-audit (PyPI's vulnerability data for each installed name and version). Where the
per-version PyPI endpoint pip-audit uses cannot be reached (it then skips every package as
"not found"), the same advisories are read from the package's project page at PyPI
(``/pypi/<name>/json``), which lists them for the latest release only: a package installed at
its latest release is audited that way, any other is listed as not audited. Exit 1 when a
package has a known advisory (or no report came back at all); packages that could not be
audited are listed, and do not fail the run: whether PyPI's per-version data is reachable
depends on the network, not on this project.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from importlib import metadata
from pathlib import Path

OWN = {"slurm-jwt-bridge"}


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def run_pip_audit() -> tuple[int, dict]:
    exe = Path(sys.executable).parent / "pip-audit"
    proc = subprocess.run(
        [str(exe), "--format", "json", "--progress-spinner", "off", "--skip-editable"],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        report = json.loads(proc.stdout or "{}")
    except ValueError:
        report = {}
    if not report:
        sys.stderr.write(proc.stderr)
    return proc.returncode, report


def from_project_page(name: str, version: str) -> tuple[bool, list[str]]:
    """(audited, advisory ids) from PyPI's project JSON, valid for its latest release only."""
    from pip._internal.models.index import PyPI  # pip's own PyPI address, the one it installs from

    url = f"{PyPI.pypi_url}/{name}/json"
    with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 (https)
        doc = json.load(resp)
    if doc["info"]["version"] != version:
        return False, []
    return True, [v["id"] for v in doc.get("vulnerabilities") or [] if not v.get("withdrawn")]


def main() -> int:
    code, report = run_pip_audit()
    deps = report.get("dependencies", [])
    if not deps:
        print(f"audit-deps: pip-audit produced no report (exit {code})", file=sys.stderr)
        return 1
    vulnerable, unaudited, fallback = [], [], 0
    for dep in deps:
        name = dep["name"]
        if _canonical(name) in OWN:
            continue
        version = dep.get("version") or metadata.version(name)
        if dep.get("vulns"):
            vulnerable += [
                f"{name} {version}: {v['id']} (fixed in {v['fix_versions']})" for v in dep["vulns"]
            ]
            continue
        if "skip_reason" not in dep:
            continue
        fallback += 1
        try:
            audited, ids = from_project_page(name, version)
        except Exception as exc:  # any failure: not audited, and said so
            unaudited.append(f"{name} {version}: {type(exc).__name__}: {exc}")
            continue
        if not audited:
            unaudited.append(f"{name} {version}: not the latest release, no per-version data")
        vulnerable += [f"{name} {version}: {i}" for i in ids]
    if fallback:
        print(
            f"audit-deps: pip-audit could not query PyPI for {fallback} packages "
            "(per-version endpoint unavailable); read their project pages instead",
            file=sys.stderr,
        )
    for line in vulnerable:
        print(f"VULNERABLE {line}")
    for line in unaudited:
        print(f"NOT AUDITED {line}")
    audited = len(deps) - len(unaudited)
    print(
        f"audit-deps: {audited} packages audited, {len(vulnerable)} advisories, "
        f"{len(unaudited)} not audited"
    )
    return 1 if vulnerable else 0


if __name__ == "__main__":
    sys.exit(main())
