#!/usr/bin/env bash
# Run pytest; "no tests collected" (exit 5) is a failure, never a silent pass.
#
# With no arguments (make test) the suite runs as two pytest processes side by side: the unit
# tests, and the integration tests, which share root-owned daemons, chroots and accounts and so
# run one after the other in their own process. The unit run's output is printed when both have
# ended; each writes its own JUnit file. With arguments, one pytest runs what they name.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p test-artifacts

# pytest's exit code, with 5 (nothing collected) made a failure.
checked() {
  local rc=$1 what=$2
  if [ "$rc" -eq 5 ]; then
    echo "run-tests: pytest collected no tests in $what; failing" >&2
    return 1
  fi
  return "$rc"
}

if [ "$#" -gt 0 ]; then
  .venv/bin/python -m pytest "$@" --junitxml=test-artifacts/junit.xml
  checked $? "$*"
  exit $?
fi

rm -f test-artifacts/junit.xml
.venv/bin/python -m pytest tests/unit --junitxml=test-artifacts/junit-unit.xml \
  >test-artifacts/unit.log 2>&1 &
unit_pid=$!
trap 'kill "$unit_pid" 2>/dev/null; exit 130' INT TERM
.venv/bin/python -m pytest tests/integration --junitxml=test-artifacts/junit-integration.xml
checked $? tests/integration
integration_rc=$?
wait "$unit_pid"
unit_rc=$?
echo
echo "run-tests: the unit tests (run beside the integration tests; test-artifacts/unit.log):"
cat test-artifacts/unit.log
checked "$unit_rc" tests/unit
unit_rc=$?
echo "run-tests: integration exit $integration_rc, unit exit $unit_rc"
[ "$integration_rc" -eq 0 ] && [ "$unit_rc" -eq 0 ]
