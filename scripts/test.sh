#!/usr/bin/env bash
# The test command: install, then the test passes.
#   1. default pass: every backend that runs here (C++ variants, torch reference)
#   2. lower-ISA passes: the C++-path tests again under LLMACCEL_CPU_ISA=<level> for every ISA level
#      this CPU supports below its best (an AVX-512 machine: avx2, then generic), so the public ops,
#      packed weights and dispatch run each variant end to end, not only the raw per-variant bindings
#   3. Triton pass:  the Triton kernels in Triton's CPU interpreter, small shapes
# Any pytest exit code other than 0 fails, including 5 ("no tests collected").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/install.sh
$PY -m pytest tests -q
# Tests that run the C++ kernels through the public ops with the default variant (the raw per-variant
# bindings already ran for every variant above).  opcheck / torch.compile check the op registration,
# not the kernel, and ran above too.  ~1.5 min of 2-core CPU per level.
CPP_TESTS="tests/test_int8_mm.py tests/test_int8_linear_ops.py tests/test_attention.py tests/test_isa.py"
CPP_SELECT="not opcheck and not torch_compile"
LOWER_ISAS=$($PY -c "
from llmaccel._ext import ext
have = set(ext().cpu_features())
levels = [lv for lv, feats in ext().isa_levels().items() if set(feats) <= have]
print(' '.join(reversed(levels[:-1])))")
for isa in $LOWER_ISAS; do
  echo "== LLMACCEL_CPU_ISA=$isa"
  LLMACCEL_CPU_ISA=$isa $PY -m pytest $CPP_TESTS -q -m "not slow" -k "$CPP_SELECT"
done
TRITON_INTERPRET=1 LLMACCEL_BACKEND=triton $PY -m pytest tests -q -m "triton and not slow"
# Benchmarks stay out of the timed tests; this only checks that they run.
$PY -m pytest bench -q --benchmark-disable
