#!/usr/bin/env bash
# The C++ kernels under AddressSanitizer + UndefinedBehaviorSanitizer.
#
# Builds llmaccel._C with LLMACCEL_SANITIZE (default address,undefined; see
# setup.py) in a throwaway copy of the tree (the normal build is untouched),
# then runs the tests that exercise llmaccel._C (int8_mm, quantize,
# int8_linear ops / C++ variants / fused smooth + activation / module, attention C++ kernel and ops, the
# N:M and BSR sparse kernels) on the default backend (C++ on CPU) against it. Any
# sanitizer report aborts the process, so it fails the run. Tests marked slow
# are skipped (large shapes are 2-5x slower under ASan and add no new code
# paths), and so are opcheck / torch.compile tests (torch's tracing
# machinery, not new C++ paths).
#
#   bash scripts/sanitize.sh                  # address,undefined
#   LLMACCEL_SANITIZE=address bash scripts/sanitize.sh
#   bash scripts/sanitize.sh -k int8_mm       # extra pytest arguments
#
# Environment: PYTHON (default python3), LLMACCEL_SANITIZE_DIR (reuse this
# directory for the copy and its build; default a fresh temp dir, removed after).
#
# Running an instrumented extension inside an uninstrumented Python needs the
# ASan runtime loaded first (LD_PRELOAD); CPython and torch leak by design, so
# leak checking is off, and libstdc++ is preloaded too (see below). torch (its
# bundled libgomp, MKL) imports and runs fine this way: no
# verify_asan_link_order override is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
SAN=${LLMACCEL_SANITIZE:-address,undefined}
start=$(date +%s)

if [[ -n "${LLMACCEL_SANITIZE_DIR:-}" ]]; then
    WORK=$LLMACCEL_SANITIZE_DIR
    mkdir -p "$WORK"
else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/llmaccel-sanitize.XXXXXX")
    trap 'rm -rf "$WORK"' EXIT
fi

# ---- copy the tree (preserving mtimes, so a reused dir rebuilds only what changed)
mkdir -p "$WORK/llmaccel"
cp -a setup.py pyproject.toml csrc tests "$WORK/"
# llmaccel/ without any built extension or the kernels symlink; kernels/ is llmaccel.kernels
(cd llmaccel && find . -path ./kernels -prune -o -name '*.so' -prune -o -name __pycache__ -prune -o -type f -print) |
    while read -r f; do mkdir -p "$WORK/llmaccel/$(dirname "$f")"; cp -a "llmaccel/$f" "$WORK/llmaccel/$f"; done
rm -rf "$WORK/llmaccel/kernels"
cp -a kernels "$WORK/llmaccel/kernels"

# ---- build
echo "sanitize: building llmaccel._C with -fsanitize=$SAN in $WORK"
(cd "$WORK" && LLMACCEL_SANITIZE=$SAN "$PY" setup.py -q build_ext --inplace -j 2 >"$WORK/build.log" 2>&1) || {
    tail -n 60 "$WORK/build.log"; echo "sanitize: build failed"; exit 1; }
built=$(date +%s)
echo "sanitize: built in $(( built - start )) s"

# ---- run
# libasan first; then libstdc++: python links no C++ runtime, so without it ASan's __cxa_throw
# interceptor finds no real __cxa_throw and the first C++ exception (torch's dispatcher, pybind11)
# aborts with "CHECK failed: ... real___cxa_throw != 0".
preload=()
case ",$SAN," in
    *,address,*) preload+=("$(gcc -print-file-name=libasan.so)") ;;
    *,undefined,*) preload+=("$(gcc -print-file-name=libubsan.so)") ;;
esac
preload+=("$(readlink -f "$(gcc -print-file-name=libstdc++.so)")")
export LD_PRELOAD="${preload[*]}${LD_PRELOAD:+ $LD_PRELOAD}"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export PYTHONPATH="$WORK${PYTHONPATH:+:$PYTHONPATH}"
# Tests may take a covering subset of a large case sweep here (tests/helpers.py, rotate_in_slow_pass).
export LLMACCEL_SANITIZED=1
unset TRITON_INTERPRET LLMACCEL_BACKEND
cd "$WORK"

# The sanitized extension must be the one that runs.
"$PY" - "$WORK" <<'EOF'
import sys
import llmaccel._C as C
assert C.__file__.startswith(sys.argv[1]), f"wrong llmaccel._C: {C.__file__}"
print(f"sanitize: testing {C.__file__}")
EOF

# opcheck / torch.compile tests exercise torch's tracing machinery (minutes under ASan), not new
# C++ paths: the same kernels run in the other tests.
"$PY" -m pytest -q -p no:cacheprovider -m "not slow and not cuda" -k "not opcheck and not torch_compile" \
    tests/test_int8_mm.py tests/test_int8_mm_amx.py tests/test_int8_linear_ops.py tests/test_int8_linear_cpp_variants.py tests/test_int8_linear_fused.py \
    tests/test_int8_linear_residual.py tests/test_int8_module.py tests/test_attention_cpp_kernel.py tests/test_attention.py tests/test_backends.py \
    tests/test_sparsity_cpu_kernel.py tests/test_sparse_linear.py tests/test_sparse_bitmap_kernel.py tests/test_sparse_nm_large_kernel.py tests/test_sparse_bsr_kernel.py \
    tests/test_sparse_linear_dynamic.py tests/test_sparse_bitmap_index.py tests/test_prepared_call.py "$@"
echo "sanitize: passed with -fsanitize=$SAN ($(( $(date +%s) - built )) s of tests, $(( $(date +%s) - start )) s in all)"
