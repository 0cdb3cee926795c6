#!/usr/bin/env bash
# Installs llmaccel (editable, with its C++ extension) and its dev dependencies
# into the current Python.  Needs only Python 3.10+ with pip and a C++17 compiler.
#
# Three steps, one "[install  T s] ..." line each (T: seconds since the start);
# a step is skipped when what it installs is already there
# (scripts/install_state.py checks):
#   1. torch at the pinned version (LLMACCEL_TORCH_VERSION, default 2.13.0, CPU build)
#   2. requirements-dev.txt, every line satisfied by the installed versions
#   3. llmaccel itself (pip install --no-build-isolation -e .): skipped when this
#      checkout is already installed editable and its C++ build stamp
#      (build/llmaccel-install.stamp, a hash of csrc/, setup.py, pyproject.toml,
#      the build environment and the Python) matches.  A fresh clone has no
#      stamp, so it always builds.
# LLMACCEL_REINSTALL=1 runs every step regardless.
#
# Measured times (fresh, nothing changed, rebuild): README, "Three commands".
# With nothing changed it only runs three version/stamp checks (~1 s of CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=${LLMACCEL_TORCH_VERSION:-2.13.0}
FORCE=${LLMACCEL_REINSTALL:-0}
t_start=$SECONDS
changed=0  # set when a step installed something: then the import check at the end runs
say() { printf '[install %4d s] %s\n' $((SECONDS - t_start)) "$*"; }
state() { [[ $FORCE != 1 ]] && $PY scripts/install_state.py "$@"; }
# pip with its download lines visible, minus the "Requirement already satisfied" chatter.
pip_install() {
  $PY -m pip install "$@" 2>&1 | { grep --line-buffered -v '^Requirement already satisfied' || true; }
}

# 1. The pinned CPU build of torch first: anything that asks for plain "torch"
#    afterwards is then already satisfied.
if state satisfied "torch==$TORCH_VERSION"; then
  say "torch==$TORCH_VERSION: already installed, skipped"
else
  say "torch==$TORCH_VERSION: installing (a ~200 MB CPU wheel plus its dependencies on a fresh machine) ..."
  pip_install "torch==$TORCH_VERSION"
  changed=1
  say "torch==$TORCH_VERSION: done"
fi

# 2. Test, benchmark and build dependencies.
if state satisfied -r requirements-dev.txt; then
  say "requirements-dev.txt: all installed at the wanted versions, skipped"
else
  say "requirements-dev.txt: installing (triton ~150 MB, transformers, pytest, ...) ..."
  pip_install -r requirements-dev.txt
  changed=1
  say "requirements-dev.txt: done"
fi

# 3. llmaccel.  No build isolation: the build needs pybind11 and setuptools only,
#    both installed above.  pip runs verbose into a log; the terminal gets the
#    per-file progress lines setup.py prints ("llmaccel build: ...").
if state llmaccel-current; then
  say "llmaccel: installed from this checkout, C++ build up to date, skipped"
else
  mkdir -p build
  log=build/pip-install-llmaccel.log
  say "llmaccel: building the C++ extension and installing editable (~50 s on 2 quiet cores; full log: $log) ..."
  set +e
  $PY -m pip install -v --no-build-isolation -e . 2>&1 | tee "$log" \
    | { grep --line-buffered -oE 'llmaccel build: .*'; true; }
  rc=${PIPESTATUS[0]}
  set -e
  if [[ $rc != 0 ]]; then
    echo "pip install -e . failed (exit $rc); the last 40 lines of $log:" >&2
    tail -n 40 "$log" >&2
    exit "$rc"
  fi
  $PY scripts/install_state.py write-stamp
  changed=1
  say "llmaccel: done"
fi
if [[ $changed == 1 ]]; then
  # Importing torch and llmaccel takes seconds: only after an install (the stamp vouches for an unchanged one).
  $PY -c "import llmaccel, json; print('llmaccel', llmaccel.__version__, json.dumps(llmaccel.cpu_info()))"
fi
say "install finished"
