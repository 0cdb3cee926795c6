"""Every Triton kernel in every autotune config compiles for sm_80 and sm_90 without spills.

No GPU needed: ``triton.compile`` for ``GPUTarget("cuda", 80 | 90, 32)`` is CPU work, and Triton's
wheel ships the ptxas that makes the cubin and the cuobjdump that reads its resources
(``tests/triton_resources.py`` does the compiling; ``python tests/triton_resources.py`` prints the
table). Asserted per (kernel, config, arch):

* no register spills: ``STACK == 0`` and ``LOCAL == 0`` in ``cuobjdump --dump-resource-usage``;
* shared memory within the architecture's per-block limit (sm_80: 163 KB, sm_90: 227 KB);
* ``tl.dot`` on fp16 / bf16 / int8 emits tensor-core instructions (``mma.sync`` on sm_80,
  ``wgmma`` or ``mma.sync`` on sm_90).

The sweep runs in a subprocess with ``TRITON_INTERPRET`` unset: under the interpreter
``@triton.jit`` builds an interpreted function that ``triton.compile`` cannot take, and the kernel
modules pick their interpreter configs at import. So this test is not marked ``triton`` (the
interpreter pass does not select it) and gives the same answer in either pass.

Default pass: every config of every kernel once (the default subset): the
GEMMs in their representative dtypes (int8 operands; W8A8 with bf16 and fp32 x; weight-only bf16,
with and without split-K), attention in bf16 at head dim 128 (the most registers and shared memory)
in every config its autotuner keeps there, plus head dim 64 for the configs it prunes at 128. The
``slow`` test compiles the rest of the matrix (attention in fp16: same tile sizes and instruction
shapes as bf16; bf16 at head dim 64).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

HERE = Path(__file__).resolve().parent
TOOL = HERE / "triton_resources.py"
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"

pytestmark = pytest.mark.skipif(not CUOBJDUMP.exists() or not os.access(CUOBJDUMP, os.X_OK),
                                reason="Triton's NVIDIA backend (ptxas, cuobjdump) is not installed")

sys.path.insert(0, str(HERE))
import triton_resources  # noqa: E402  (pure functions; importing it compiles nothing)


def _sweep(tmp_path_factory, subset: str) -> list[dict]:
    out = tmp_path_factory.mktemp("triton_compile") / f"{subset}.jsonl"
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, str(TOOL), "--subset", subset, "--json", str(out), "--quiet"]
    proc = subprocess.run(cmd, env=env, cwd=HERE.parent, capture_output=True, text=True, timeout=1800)
    if not out.exists():
        pytest.fail(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def default_rows(tmp_path_factory):
    return _sweep(tmp_path_factory, "default")


def _problems(rows):
    """Every problem of every compile: no spill is tolerated (a config that spills on an architecture is
    dropped there by its autotuner's prune, kernels/attention_spills.py, and so is not compiled for it)."""
    return [p for r in rows for p in triton_resources.check_row(r)]


@pytest.mark.timeout(1800)  # the first test to use default_rows pays for the whole sweep (the default subset)
def test_every_kernel_every_config_compiles_without_spills(default_rows):
    problems = _problems(default_rows)
    assert not problems, "\n".join(problems)


@pytest.mark.timeout(1800)  # when run alone it pays for the sweep
def test_sweep_covers_every_autotune_config(default_rows):
    """Each triton.autotune config list in kernels/*.py is in the sweep, for both architectures."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    code = (
        "import json, sys; sys.path.insert(0, 'tests'); sys.path.insert(0, '.');"
        "import triton_resources as t; print(json.dumps(t.autotune_configs()))"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=HERE.parent, capture_output=True, text=True,
                          check=True)
    want = json.loads(proc.stdout.strip().splitlines()[-1])
    assert want, "no autotune configs found in kernels/"
    have = {(r["kernel"], r["config"], r["arch"]) for r in default_rows}
    missing = []
    for k, configs in want.items():
        for c in configs:
            # "config@sm_90": the kernel runs this config on that architecture only (its config_fits)
            name, _, only = c.partition("@sm_")
            for a in ((int(only),) if only else (80, 90)):
                if (k, name, a) not in have:
                    missing.append((k, name, a))
    assert not missing, f"autotune configs not compiled: {missing}"
    # every kernel with a tl.dot was checked for tensor-core instructions
    assert {r["kernel"] for r in default_rows if r["mma_dtype"]} >= {
        "int8_mm._int8_mm_kernel", "int8_linear._w8a8_dynamic_kernel", "int8_linear._weight_only_kernel",
        "attention_forward._attn_fwd_kernel", "attention_backward._attn_bwd_dkdv_kernel", "attention_backward._attn_bwd_dq_kernel"}


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(os.environ.get("LLMACCEL_TRITON_FULL_SWEEP") != "1",
                    reason="the full dtype x head-dim sweep (minutes of compiles): LLMACCEL_TRITON_FULL_SWEEP=1")
def test_remaining_attention_variants_compile_without_spills(tmp_path_factory):
    rows = _sweep(tmp_path_factory, "extra")
    assert rows
    problems = _problems(rows)
    assert not problems, "\n".join(problems)


def test_checker_flags_spills_and_missing_tensor_cores():
    """The checks themselves: a spilling row, an oversized one and one without mma are reported."""
    ok = dict(kernel="k", variant="v", config="c", arch=80, mma_dtype="int8", regs=200, stack=0, local=0,
              static_shared=0, shared=1024, wgmma=0, mma_sync=8)
    assert triton_resources.check_row(ok) == []
    assert "spills" in triton_resources.check_row(dict(ok, regs=255, stack=16))[0]
    assert "spills" in triton_resources.check_row(dict(ok, local=8))[0]
    assert "shared memory" in triton_resources.check_row(dict(ok, shared=164 * 1024))[0]
    assert triton_resources.check_row(dict(ok, arch=90, shared=164 * 1024)) == []
    assert "tensor-core" in triton_resources.check_row(dict(ok, mma_sync=0))[0]
    assert triton_resources.check_row(dict(ok, arch=90, mma_sync=0, wgmma=2)) == []
    assert triton_resources.check_row(dict(ok, mma_dtype="", mma_sync=0)) == []
    assert "does not compile" in triton_resources.check_row(dict(kernel="k", variant="v", config="c", arch=90,
                                                                  mma_dtype="", error="boom"))[0]
