#!/usr/bin/env bash
# The README's main command: set-up, then the self-contained demo.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m vpn.cli demo "$@"
