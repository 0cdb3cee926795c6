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
#
# Two lanes: the passes after "lane 2" run one after another in a background job while lane 1's run in the
# foreground; lane 2's output is printed when both are done (the summary lists every pass in order).  Why: almost every pass is one Python process
# that keeps one core busy (the Triton interpreter is pure Python; the C++ tests are small shapes), so on
# CI's 2 cores the passes run sequentially left one core idle, and the run took 1218 s here and 1504 s on
# CI.  LLMACCEL_TEST_LANES=1 runs everything in the foreground, in order.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
t_all=$SECONDS

bash scripts/install.sh

# OpenMP threads that wait at a barrier sleep instead of spinning.  Two lanes on 2 cores means 3-4 threads per
# 2 cores; with libgomp's default spin-wait a pass whose worker is descheduled burns its core spinning: two
# copies of tests/test_sparse_bsr_kernel.py at once took 73 s each against 31 alone, and 27-29 s each with
# PASSIVE (which does not change any result).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

PASSES=()      # filled by the run_pass lines below, run by run_all
PASS_LANES=()  # the lane of each pass (1 foreground, 2 background)
LANE=1         # the lane run_pass puts the next passes in ("lane 2" switches)
log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT

# Count "<n> <word>" from pytest's closing line ("== 5 passed, 2 skipped in 1.2s ==", or -q's bare form).
_count() { grep -oE "[0-9]+ $1" <<<"$2" | grep -oE '^[0-9]+' || echo 0; }

run_pass() {
  PASSES+=("$(printf '%q ' "$@")")
  PASS_LANES+=("$LANE")
}
lane() { LANE=$1; }

_run_one() {  # k n show label env... -- pytest args...   (show: 1 prints the output live, 0 only logs it)
  local k=$1 n=$2 show=$3 label=$4
  shift 4
  local envs=()
  while [[ $# -gt 0 && $1 != -- ]]; do envs+=("$1"); shift; done
  if [[ $# -gt 0 ]]; then shift; fi  # the --
  # Every pass reports its 15 slowest tests and limits each test to LLMACCEL_TEST_TIMEOUT seconds
  # (pytest-timeout; a test marked @pytest.mark.timeout(N) gets its own N): one hung test fails, not the run.
  set -- "$@" --durations=15 "--timeout=${LLMACCEL_TEST_TIMEOUT:-600}"
  # Each pass gets its own pytest temp root, so passes running at once never clean up each other's tmp_path.
  mkdir -p "$log_dir/tmp$k"
  envs+=("PYTEST_DEBUG_TEMPROOT=$log_dir/tmp$k")
  # LLMACCEL_PASS_RUNNER=<script> runs that script (which ends in pytest) instead of pytest itself.
  local runner=("$PY" -m pytest) e
  for e in ${envs[@]+"${envs[@]}"}; do
    if [[ $e == LLMACCEL_PASS_RUNNER=* ]]; then runner=(bash "${e#LLMACCEL_PASS_RUNNER=}"); fi
  done
  local out="$log_dir/pass$k.log" t0=$SECONDS rc
  {
    echo
    echo "===== pass $k/$n: $label ====="
    echo "\$ ${envs[*]:+${envs[*]} }${runner[*]}$(printf ' %q' "$@")"
  } > "$out"
  if [[ $show == 1 ]]; then cat "$out"; fi
  set +e
  if [[ $show == 1 ]]; then
    env ${envs[@]+"${envs[@]}"} "${runner[@]}" "$@" 2>&1 | tee -a "$out"
    rc=${PIPESTATUS[0]}
  else
    env ${envs[@]+"${envs[@]}"} "${runner[@]}" "$@" >> "$out" 2>&1
    rc=$?
  fi
  set -e
  local dt=$((SECONDS - t0))
  local closing
  closing=$(grep -E '[0-9]+ (passed|failed|skipped|errors?|deselected)|no tests ran' "$out" \
            | grep -E ' in [0-9.]+s' | tail -n 1 || true)
  local p f e s
  p=$(_count passed "$closing"); f=$(_count failed "$closing"); s=$(_count skipped "$closing")
  e=$(_count 'errors?' "$closing")
  local verdict=ok broken=0
  if [[ $rc != 0 ]]; then
    verdict="FAILED (pytest exit $rc)"
    if [[ $rc == 5 ]]; then verdict="FAILED (pytest exit 5: no tests collected)"; fi
    if [[ $((f + e)) == 0 ]]; then broken=1; fi
  fi
  # The pass's result, read back by run_all (a lane-2 pass runs in a subshell).
  echo "$p $f $e $s $rc $broken" > "$log_dir/pass$k.counts"
  printf 'pass %d/%d %-20s %5d passed, %d failed, %d errors, %4d skipped in %4d s  %s\n' \
         "$k" "$n" "${label%%:*}" "$p" "$f" "$e" "$s" "$dt" "$verdict" > "$log_dir/pass$k.line"
}

run_all() {
  # LLMACCEL_TEST_PASSES=name,name (the label up to its colon) runs only those passes.
  local selected=() lanes=() i spec name
  for i in "${!PASSES[@]}"; do
    spec=${PASSES[$i]}
    eval "set -- $spec"
    name=${1%%:*}
    if [[ -z ${LLMACCEL_TEST_PASSES:-} || ",$LLMACCEL_TEST_PASSES," == *",$name,"* ]]; then
      selected+=("$spec")
      if [[ ${LLMACCEL_TEST_LANES:-2} == 1 ]]; then lanes+=(1); else lanes+=("${PASS_LANES[$i]}"); fi
    fi
  done
  if [[ ${#selected[@]} == 0 ]]; then
    echo "no test pass matches LLMACCEL_TEST_PASSES=$LLMACCEL_TEST_PASSES" >&2
    return 1
  fi
  local n=${#selected[@]} k bg_pid="" bg=()
  for k in $(seq 1 "$n"); do
    if [[ ${lanes[$((k - 1))]} == 2 ]]; then bg+=("$k"); fi
  done
  if [[ ${#bg[@]} -gt 0 ]]; then
    echo "lane 2 (in the background, printed at the end): passes ${bg[*]}"
    (
      for k in "${bg[@]}"; do eval "_run_one $k $n 0 ${selected[$((k - 1))]}"; done
    ) &
    bg_pid=$!
  fi
  for k in $(seq 1 "$n"); do
    if [[ ${lanes[$((k - 1))]} != 2 ]]; then eval "_run_one $k $n 1 ${selected[$((k - 1))]}"; fi
  done
  if [[ -n $bg_pid ]]; then
    wait "$bg_pid" || true
    for k in "${bg[@]}"; do cat "$log_dir/pass$k.log"; done
  fi
  local sum_passed=0 sum_failed=0 sum_errors=0 sum_skipped=0 any_failed=0 broken=0 p f e s rc b
  for k in $(seq 1 "$n"); do
    if [[ ! -f $log_dir/pass$k.counts ]]; then  # the pass never finished (its lane died)
      any_failed=1 broken=$((broken + 1))
      echo "pass $k/$n did not finish" > "$log_dir/pass$k.line"
      continue
    fi
    read -r p f e s rc b < "$log_dir/pass$k.counts"
    sum_passed=$((sum_passed + p)); sum_failed=$((sum_failed + f)); sum_errors=$((sum_errors + e))
    sum_skipped=$((sum_skipped + s)); broken=$((broken + b))
    if [[ $rc != 0 ]]; then any_failed=1; fi
  done
  echo
  echo "===== summary ====="
  for k in $(seq 1 "$n"); do cat "$log_dir/pass$k.line"; done
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
# Lane 1 (foreground): the default pass and the Triton interpreter; lane 2 (background): the sanitizer, the
# ISA-capped and the benchmark passes.  The split balances the two (measured alone on a 2-core Sapphire
# Rapids class VM: 246 + 273 s against 328 + 71 + 50 + 78 s).
run_pass "default: every backend that runs on this machine (each C++ ISA variant, torch reference)" \
  -- tests
# One OpenMP / torch thread: the interpreter is single-threaded Python, and the other lane needs the other core.
run_pass "triton-interpreter: the Triton kernels on CPU in Triton's interpreter, small shapes (slowest, ~3 min)" \
  TRITON_INTERPRET=1 LLMACCEL_BACKEND=triton OMP_NUM_THREADS=1 -- tests -m "triton and not slow" -p no:cacheprovider

lane 2
# The C++ kernels built with AddressSanitizer + UndefinedBehaviorSanitizer (scripts/sanitize.sh: a
# throwaway copy of the tree, its own build); any report aborts the run.
run_pass "sanitize: the C++-path tests against an ASan/UBSan build of llmaccel._C" \
  LLMACCEL_PASS_RUNNER=scripts/sanitize.sh --
# The C++-path tests again with the variants capped at each ISA level this CPU supports below its best
# (an AVX-512 machine: avx2, then generic), so the public ops, packed weights and dispatch run each
# variant end to end, not only through the raw per-variant bindings.  opcheck / torch.compile check the
# op registration, not the kernels, and ran in the default pass.
CPP_TESTS=(tests/test_int8_mm.py tests/test_int8_linear_ops.py tests/test_attention.py tests/test_isa.py tests/test_sparsity_cpu_kernel.py tests/test_sparse_linear.py tests/test_sparse_bitmap_kernel.py tests/test_sparse_nm_large_kernel.py tests/test_sparse_bsr_kernel.py tests/test_sparse_linear_dynamic.py tests/test_sparse_bitmap_index.py tests/test_prepared_call.py)
# The levels between avx2 and the best (avxvnni / avx512 / avx512vbmi on an AMX CPU, avx512 / avx512vbmi on a Zen 4) are left to
# the default pass, whose per-variant tests drive every variant this CPU runs through the raw bindings: a
# fourth pass took CI past 20 minutes on a loaded 2-core Sapphire Rapids class VM (1238 s; 1046 s quiet).
for isa in $("$PY" -c "
from llmaccel._ext import ext
have = set(ext().cpu_features())
levels = [lv for lv, feats in ext().isa_levels().items() if set(feats) <= have]
below = [lv for lv in levels[:-1] if lv in ('generic', 'avx2')]
print(' '.join(reversed(below)))"); do
  run_pass "isa-$isa: the C++-path tests with LLMACCEL_CPU_ISA=$isa (the variants a smaller CPU runs)" \
    LLMACCEL_CPU_ISA=$isa -- "${CPP_TESTS[@]}" -m "not slow" -k "not opcheck and not torch_compile" -p no:cacheprovider
done
# Benchmarks stay out of the timed tests; this only checks that every case runs and verifies
# (LLMACCEL_BENCH_SMOKE=1: chained-layer cases build 2 layers instead of 8, llmaccel/bench/case.py smoke_layers).
run_pass "bench-smoke: every benchmark case once, untimed (checks the suites, not speed)" \
  LLMACCEL_BENCH_SMOKE=1 -- bench --benchmark-disable -p no:cacheprovider

run_all
