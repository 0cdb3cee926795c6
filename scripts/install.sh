#!/usr/bin/env bash
# Installs llmaccel (editable, with its C++ extension) and its dev dependencies
# into the current Python.  Needs only Python 3.10+ with pip and a C++17 compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# The pinned CPU build of torch first: anything that asks for plain "torch"
# afterwards is then already satisfied.
$PY -m pip install -q "torch==${LLMACCEL_TORCH_VERSION:-2.13.0}"
$PY -m pip install -q -r requirements-dev.txt
# No build isolation: the build needs pybind11 and setuptools only, both installed above.
$PY -m pip install -q --no-build-isolation -e .
$PY -c "import llmaccel, json; print('llmaccel', llmaccel.__version__, json.dumps(llmaccel.cpu_info()))"
