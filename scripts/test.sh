#!/usr/bin/env bash
# The test command (what CI runs through .ci/run): install, then the test
# passes listed at the bottom, each under a "===== pass N/M: label =====" header,
# then one line per pass and the total.  Each pass also prints its 15 slowest tests, and no test may
# run longer than LLMACCEL_TEST_TIMEOUT seconds (default 600; pytest-timeout).
#
# Any pytest exit code other than 0 fails the run, including 5 ("no tests
# collected"); a failed pass does not stop the later ones.
#
# Adding a pass is one more line at the bottom:
#   run_pass "label: what it runs and why" [VAR=value ...] -- [pytest arguments ...]
# LLMACCEL_TEST_PASSES=default,bench-smoke runs only the passes so named (label up to the colon).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
t_all=$SECONDS

bash scripts/install.sh

PASSES=()      # filled by the run_pass lines below, run by run_all
pass_lines=()  # one summary line per pass
sum_passed=0 sum_failed=0 sum_errors=0 sum_skipped=0 any_failed=0
broken=0  # passes that failed without a failing test (exit 5 "no tests collected", a crash): each counts as a failure
log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT

# Count "<n> <word>" from pytest's closing line ("== 5 passed, 2 skipped in 1.2s ==", or -q's bare form).
_count() { grep -oE "[0-9]+ $1" <<<"$2" | grep -oE '^[0-9]+' || echo 0; }

run_pass() {
  PASSES+=("$(printf '%q ' "$@")")
}

_run_one() {  # k n label env... -- pytest args...
  local k=$1 n=$2 label=$3
  shift 3
  local envs=()
  while [[ $# -gt 0 && $1 != -- ]]; do envs+=("$1"); shift; done
  if [[ $# -gt 0 ]]; then shift; fi  # the --
  # Every pass reports its 15 slowest tests and limits each test to LLMACCEL_TEST_TIMEOUT seconds
  # (pytest-timeout; a test marked @pytest.mark.timeout(N) gets its own N): one hung test fails, not the run.
  set -- "$@" --durations=15 "--timeout=${LLMACCEL_TEST_TIMEOUT:-600}"
  echo
  echo "===== pass $k/$n: $label ====="
  # LLMACCEL_PASS_RUNNER=<script> runs that script (which ends in pytest) instead of pytest itself.
  local runner=("$PY" -m pytest) e
  for e in ${envs[@]+"${envs[@]}"}; do
    if [[ $e == LLMACCEL_PASS_RUNNER=* ]]; then runner=(bash "${e#LLMACCEL_PASS_RUNNER=}"); fi
  done
  echo "\$ ${envs[*]:+${envs[*]} }${runner[*]}$(printf ' %q' "$@")"
  local out="$log_dir/pass$k.log" t0=$SECONDS rc
  set +e
  env ${envs[@]+"${envs[@]}"} "${runner[@]}" "$@" 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  set -e
  local dt=$((SECONDS - t0))
  local closing
  closing=$(grep -E '[0-9]+ (passed|failed|skipped|errors?|deselected)|no tests ran' "$out" \
            | grep -E ' in [0-9.]+s' | tail -n 1 || true)
  local p f e s
  p=$(_count passed "$closing"); f=$(_count failed "$closing"); s=$(_count skipped "$closing")
  e=$(_count 'errors?' "$closing")
  sum_passed=$((sum_passed + p)); sum_failed=$((sum_failed + f)); sum_errors=$((sum_errors + e))
  sum_skipped=$((sum_skipped + s))
  local verdict=ok
  if [[ $rc != 0 ]]; then
    any_failed=1
    verdict="FAILED (pytest exit $rc)"
    if [[ $rc == 5 ]]; then verdict="FAILED (pytest exit 5: no tests collected)"; fi
    if [[ $((f + e)) == 0 ]]; then broken=$((broken + 1)); fi
  fi
  pass_lines+=("$(printf 'pass %d/%d %-20s %5d passed, %d failed, %d errors, %4d skipped in %4d s  %s' \
                  "$k" "$n" "${label%%:*}" "$p" "$f" "$e" "$s" "$dt" "$verdict")")
}

run_all() {
  # LLMACCEL_TEST_PASSES=name,name (the label up to its colon) runs only those passes.
  local selected=() spec name
  for spec in "${PASSES[@]}"; do
    eval "set -- $spec"
    name=${1%%:*}
    if [[ -z ${LLMACCEL_TEST_PASSES:-} || ",$LLMACCEL_TEST_PASSES," == *",$name,"* ]]; then selected+=("$spec"); fi
  done
  if [[ ${#selected[@]} == 0 ]]; then
    echo "no test pass matches LLMACCEL_TEST_PASSES=$LLMACCEL_TEST_PASSES" >&2
    return 1
  fi
  local n=${#selected[@]} k=0
  for spec in "${selected[@]}"; do
    k=$((k + 1))
    eval "_run_one $k $n $spec"
  done
  echo
  echo "===== summary ====="
  printf '%s\n' "${pass_lines[@]}"
  local errors=""
  if [[ $sum_errors != 0 ]]; then errors=", $sum_errors errors"; fi
  if [[ $broken != 0 ]]; then errors="$errors, $broken failed pass(es) without a failing test"; fi
  echo "total: $sum_passed passed, $sum_failed failed$errors, $sum_skipped skipped in $((SECONDS - t_all)) s" \
       "($n test passes plus install)"
  # The plain closing line CI reads (errors, and passes that failed without a failing test, count as failures).
  echo "$sum_passed passed, $((sum_failed + sum_errors + broken)) failed"
  return $any_failed
}

# ---------------------------------------------------------------- the passes
run_pass "default: every backend that runs on this machine (each C++ ISA variant, torch reference)" \
  -- tests
# The C++-path tests again with the variants capped at each ISA level this CPU supports below its best
# (an AVX-512 machine: avx2, then generic), so the public ops, packed weights and dispatch run each
# variant end to end, not only through the raw per-variant bindings.  opcheck / torch.compile check the
# op registration, not the kernels, and ran in the default pass.
CPP_TESTS=(tests/test_int8_mm.py tests/test_int8_linear_ops.py tests/test_attention.py tests/test_isa.py tests/test_sparsity_cpu_kernel.py tests/test_sparse_linear.py tests/test_sparse_bitmap_kernel.py tests/test_sparse_nm_large_kernel.py tests/test_sparse_bsr_kernel.py tests/test_sparse_linear_dynamic.py tests/test_sparse_bitmap_index.py tests/test_prepared_call.py)
# On an AMX CPU the avx512 level is left to the default pass (its kernels are the VNNI variants, which the
# per-variant tests there drive through the raw bindings): the fourth pass took CI past 20 minutes on a
# loaded 2-core Sapphire Rapids class VM (1238 s; 1046 s quiet).
for isa in $("$PY" -c "
from llmaccel._ext import ext
have = set(ext().cpu_features())
levels = [lv for lv, feats in ext().isa_levels().items() if set(feats) <= have]
below = levels[:-1]
if levels[-1] == 'amx':
    below = [lv for lv in below if lv != 'avx512']
print(' '.join(reversed(below)))"); do
  run_pass "isa-$isa: the C++-path tests with LLMACCEL_CPU_ISA=$isa (the variants a smaller CPU runs)" \
    LLMACCEL_CPU_ISA=$isa -- "${CPP_TESTS[@]}" -m "not slow" -k "not opcheck and not torch_compile"
done
# The C++ kernels built with AddressSanitizer + UndefinedBehaviorSanitizer (scripts/sanitize.sh: a
# throwaway copy of the tree, its own build); any report aborts the run.
run_pass "sanitize: the C++-path tests against an ASan/UBSan build of llmaccel._C" \
  LLMACCEL_PASS_RUNNER=scripts/sanitize.sh --
run_pass "triton-interpreter: the Triton kernels on CPU in Triton's interpreter, small shapes (slowest, ~3 min)" \
  TRITON_INTERPRET=1 LLMACCEL_BACKEND=triton -- tests -m "triton and not slow"
# Benchmarks stay out of the timed tests; this only checks that every case runs and verifies
# (LLMACCEL_BENCH_SMOKE=1: chained-layer cases build 2 layers instead of 8, llmaccel/bench/case.py smoke_layers).
run_pass "bench-smoke: every benchmark case once, untimed (checks the suites, not speed)" \
  LLMACCEL_BENCH_SMOKE=1 -- bench --benchmark-disable

run_all
