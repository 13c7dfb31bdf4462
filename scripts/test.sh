#!/usr/bin/env bash
# The README's test command: set-up, then the whole test suite (unit, vectors, and the
# network-namespace integration tests, which need root). Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh || exit 1
.venv/bin/python -m pytest "$@"
rc=$?
if [ $rc -eq 0 ] && [ $# -eq 0 ]; then
  # The C fast path again under AddressSanitizer + UBSan (issue 2; see Makefile).
  make -s test-asan PYTHON=.venv/bin/python || rc=1
fi
case $rc in
  0) echo "tests: all passed" ;;
  5) echo "tests: no tests were collected" >&2; rc=1 ;;
  *) echo "tests: pytest exited with $rc" >&2 ;;
esac
exit $rc
