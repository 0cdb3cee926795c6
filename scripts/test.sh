#!/usr/bin/env bash
# The test command: install, then both test passes.
#   1. default pass: every backend that runs here (C++ variants, torch reference)
#   2. Triton pass:  the Triton kernels in Triton's CPU interpreter, small shapes
# Any pytest exit code other than 0 fails, including 5 ("no tests collected").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/install.sh
$PY -m pytest tests -q
TRITON_INTERPRET=1 LLMACCEL_BACKEND=triton $PY -m pytest tests -q -m "triton and not slow"
# Benchmarks stay out of the timed tests; this only checks that they run.
$PY -m pytest bench -q --benchmark-disable
