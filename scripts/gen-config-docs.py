#!/usr/bin/env python3
"""Write the key tables of docs/configuration.md from the configuration's JSON Schema.

Each table sits between ``<!-- config-keys TABLE -->`` and ``<!-- /config-keys -->``, where TABLE
is a dotted path in the file (``server``, ``issuers``, ``mapping.rules``); the prose around the
tables is written by hand. ``--check`` changes nothing and exits 1 when the file differs from what
would be written, or when a table of the schema has no place in the file.

    python scripts/gen-config-docs.py           # rewrite docs/configuration.md
    python scripts/gen-config-docs.py --check   # what CI runs (tests/unit/test_config_docs.py)
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path
from typing import Any

from slurm_jwt_bridge.config_fields import NO_DEFAULT
from slurm_jwt_bridge.settings import json_schema

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
BLOCK = re.compile(r"(<!-- config-keys (\S+) -->\n)(.*?)(<!-- /config-keys -->)", re.S)


def tables(schema: dict[str, Any], path: str = "") -> dict[str, dict[str, Any]]:
    """Every table of the file (an object with properties) by its dotted path."""
    out: dict[str, dict[str, Any]] = {}
    if path:
        out[path] = schema
    for name, prop in schema["properties"].items():
        sub = f"{path}.{name}" if path else name
        if prop.get("type") == "array":
            prop = prop["items"]
        if prop.get("type") == "object" and "properties" in prop:
            # [delegation] holds only actors = [[...]]: documented as delegation.actors.
            inner = list(prop["properties"].values())
            if len(inner) == 1 and inner[0].get("type") == "array":
                out.update(tables(prop, sub))
                out.pop(sub, None)
            else:
                out.update(tables(prop, sub))
    return out


def default(name: str, prop: dict[str, Any], required: list[str]) -> str:
    if name in required:
        return "required"
    if "x-default-shown" in prop:
        return str(prop["x-default-shown"])
    if "default" in prop:
        return f"`{json.dumps(prop['default'], ensure_ascii=False)}`"
    return NO_DEFAULT


def render(table: dict[str, Any]) -> str:
    required = table.get("required", [])
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for name, prop in table["properties"].items():
        rows.append(f"| `{name}` | {default(name, prop, required)} | {prop['description']} |")
    return "\n".join(rows) + "\n"


def generate(text: str) -> tuple[str, list[str]]:
    """The file with every table rewritten, and the problems (tables missing or unknown)."""
    known = tables(json_schema())
    seen: list[str] = []
    problems: list[str] = []

    def block(m: re.Match[str]) -> str:
        path = m.group(2)
        seen.append(path)
        if path not in known:
            problems.append(f"docs/configuration.md: {path}: not a table of the configuration")
            return m.group(0)
        return m.group(1) + render(known[path]) + m.group(4)

    out = BLOCK.sub(block, text)
    for path in known:
        if path not in seen:
            problems.append(f"docs/configuration.md: no <!-- config-keys {path} --> table")
    return out, problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    args = parser.parse_args()
    text = DOC.read_text()
    out, problems = generate(text)
    for problem in problems:
        print(problem, file=sys.stderr)
    if args.check:
        if out != text:
            sys.stderr.writelines(
                difflib.unified_diff(
                    text.splitlines(True), out.splitlines(True), str(DOC), "generated"
                )
            )
            print("docs/configuration.md is stale: run scripts/gen-config-docs.py", file=sys.stderr)
            return 1
        return 1 if problems else 0
    if out != text:
        DOC.write_text(out)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
