#!/usr/bin/env bash
# `make test`: unit tests and end-to-end tests against a stack the test session starts on free
# loopback ports; writes reports/zero-trust.{md,json} and fails when a covered control has no
# passing test. Set ZT_STACK_JSON=/path/to/stack.json to test an already running stack instead.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p reports
# A full run enforces the covered-controls list (tests/plugins/controls.py).
export ZT_ENFORCE_CONTROLS=${ZT_ENFORCE_CONTROLS:-1}
exec .venv/bin/python -m pytest "$@"
