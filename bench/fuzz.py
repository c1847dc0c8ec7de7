"""A dedicated fuzz run: the generated-input tests with many examples and a random seed.

    .venv/bin/python bench/fuzz.py [--examples 10000] [--seed N] [--all] [--out FILE]

Runs tests/unit/test_fuzz_tokens.py (with ``--all`` also the mapping, proxy-header and
schemathesis tests) under pytest with ``SLURM_JWT_BRIDGE_FUZZ_EXAMPLES`` examples per property
test, Hypothesis' database off and ``--hypothesis-seed`` set (printed, so a failure can be
replayed with the same seed). The token tests count every request they send, by mutation,
door and HTTP status; the summary (JSON, also written to --out) gives the total number of
cases, how many were accepted (only byte-equivalent tokens may be), the statuses seen, the
seed, the duration and pytest's result. Exit status: pytest's.

``make test`` runs the same tests with a small derandomized sample; this is the long run
(10 000 examples per token test: about 40 000 requests, a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKEN_TESTS = ["tests/unit/test_fuzz_tokens.py"]
OTHER_TESTS = [
    "tests/unit/test_fuzz_mapping.py",
    "tests/unit/test_fuzz_proxy_headers.py",
    "tests/unit/test_schemathesis.py",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=10_000, help="per property test")
    ap.add_argument("--seed", type=int, help="Hypothesis seed (default: random, printed)")
    ap.add_argument("--all", action="store_true", help="also mapping, proxy headers, schemathesis")
    ap.add_argument("--out", type=Path, help="also write the JSON summary here")
    args = ap.parse_args(argv)

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    report_file = Path(tempfile.mkstemp(prefix="sjb-fuzz-", suffix=".json")[1])
    env = {
        **os.environ,
        "SLURM_JWT_BRIDGE_FUZZ_EXAMPLES": str(args.examples),
        "SLURM_JWT_BRIDGE_FUZZ_REPORT": str(report_file),
    }
    tests = TOKEN_TESTS + (OTHER_TESTS if args.all else [])
    argv_pytest = [
        sys.executable,
        "-m",
        "pytest",
        *tests,
        "-q",
        "-p",
        "no:cacheprovider",
        f"--hypothesis-seed={seed}",
        "--hypothesis-show-statistics",
    ]
    print(f"seed {seed}; {args.examples} examples per property test", file=sys.stderr)
    started = time.monotonic()
    proc = subprocess.run(argv_pytest, cwd=ROOT, env=env, check=False)
    seconds = time.monotonic() - started

    counts: dict[str, int] = {}
    try:
        counts = json.loads(report_file.read_text() or "{}")
    except (OSError, ValueError):
        pass
    finally:
        report_file.unlink(missing_ok=True)
    accepted = counts.pop("equivalent_accepted", 0)
    by_category: Counter[str] = Counter()
    by_status: Counter[str] = Counter()
    by_door: Counter[str] = Counter()
    for key, n in counts.items():
        category, door, status = key.split("|")
        by_category[category.split(":")[0]] += n
        by_status[status] += n
        by_door[door] += n
    summary = {
        "seed": seed,
        "examples_per_test": args.examples,
        "token_cases": sum(by_category.values()),
        "accepted_equivalent_tokens": accepted,
        "by_mutation": dict(by_category.most_common()),
        "by_door": dict(by_door.most_common()),
        "by_status": dict(sorted(by_status.items())),
        "by_detail": dict(sorted(counts.items())),
        "tests": tests,
        "seconds": round(seconds, 1),
        "pytest_exit": proc.returncode,
        "result": "pass" if proc.returncode == 0 else "fail",
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
