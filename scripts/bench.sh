#!/usr/bin/env bash
# The main job: install, then print the benchmark table for this machine
# (llmaccel beside the PyTorch path a user would use instead, same run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/install.sh
$PY -m llmaccel.bench "$@"
