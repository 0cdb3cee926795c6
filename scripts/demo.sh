#!/usr/bin/env bash
# The first command on a fresh machine: install, then `llmaccel demo` (the real all-MiniLM-L6-v2 optimized
# each way, beside the original and ONNX Runtime: accuracy, speed, size). Arguments go to `llmaccel demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/install.sh
$PY -m llmaccel.cli demo "$@"
