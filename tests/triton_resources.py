#!/usr/bin/env python
"""Compile every Triton kernel of ``kernels/`` in every autotune config for real GPUs, without a GPU.

    python tests/triton_resources.py [--arch 80 90] [--kernel int8_linear] [--jobs 2] [--json out.json]

For each (kernel, config, arch) this runs ``triton.compile`` for ``GPUTarget("cuda", arch, 32)`` (CPU
work only: Triton's bundled ptxas makes the cubin) and reads the resources of the result:

* ``regs``, ``stack``, ``local`` (bytes per thread; stack/local > 0 means register spills) from
  ``cuobjdump --dump-resource-usage`` on the cubin (Triton's wheel ships cuobjdump);
* ``shared``: Triton's shared-memory allocation for the kernel (bytes, dynamic);
* ``mma``: the tensor-core instructions in the PTX (``mma.sync`` / ``wgmma``).

The arguments are specialized the way a real launch of the shapes that matter specializes them:
16-byte aligned pointers, sizes and leading strides divisible by 16, unit inner strides as the
constant 1 (contiguous rows). The kernels and their configs are read from ``kernels/*.py`` (the
``triton.autotune`` config lists, plus the fixed launch parameters of the kernels that are not
autotuned), so a config added there is checked here automatically.

``tests/test_triton_compile.py`` runs this in a subprocess (``TRITON_INTERPRET`` must be unset:
under the interpreter ``@triton.jit`` makes no compilable function) and asserts no spills, shared
memory within the architecture's limit and tensor-core instructions where a kernel uses ``tl.dot``
on fp16 / bf16 / int8. Output: one JSON object per line (``--json``) and a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Shared memory a block may use (dynamic, opt-in maximum): sm_80 (A100) 163 KB, sm_90 (H100) 227 KB.
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


@dataclasses.dataclass
class Spec:
    """One compile: kernel ``module:fn`` in one config; ``mma`` names the tensor-core dtype ("" if none)."""

    kernel: str                  # "int8_linear._w8a8_dynamic_kernel"
    variant: str                 # human-readable dtype / mode
    config: str                  # "BM128 BN256 BK64 w8 s3"
    signature: dict              # arg name -> triton type string ("*i8", "i32", "fp32", "constexpr")
    constexprs: dict             # arg name -> value
    aligned: tuple               # arg names with tt.divisibility 16
    num_warps: int
    num_stages: int
    mma: str = ""                # "int8" / "fp16" / "bf16" when tl.dot should use tensor cores
    archs: tuple = (80, 90)      # the architectures the kernel's autotuner runs this config on


def _ptr(dtype: str) -> str:
    return "*" + dtype


def _cfg_name(kwargs: dict, warps: int, stages: int) -> str:
    short = {"BLOCK_M": "BM", "BLOCK_N": "BN", "BLOCK_K": "BK", "GROUP_M": "G", "BLOCK": "B", "BLOCK_S": "BS",
             "BLOCK_DV": "BDV", "BLOCK_D": "BD"}
    parts = [f"{short.get(k, k)}{v}" for k, v in kwargs.items() if k != "GROUP_M"]
    return " ".join(parts + [f"w{warps}", f"s{stages}"])


def _signature(fn, types: dict, constexprs: dict) -> dict:
    """Full signature in fn's argument order: ``types`` for runtime args, "constexpr" for the rest."""
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        else:
            sig[name] = types[name]
    return sig


# --------------------------------------------------------------------------
# the kernels and their configs
# --------------------------------------------------------------------------

def _gemm_specs() -> list[Spec]:
    from kernels import int8_linear, int8_mm

    specs = []
    # int8_mm: A [M, K] row-major, B = W.t() of a row-major [N, K] weight (stride_bk = 1), C row-major.
    fn = int8_mm._int8_mm_kernel
    for c in int8_mm._CONFIGS:
        const = dict(c.kwargs, stride_ak=1, stride_bk=1, stride_cn=1)
        types = {"a_ptr": "*i8", "b_ptr": "*i8", "c_ptr": "*i32"}
        types.update({n: "i32" for n in fn.arg_names if n not in types and n not in const})
        archs = tuple(a for a in (80, 90) if int8_mm.config_fits(c.kwargs, c.num_warps, a // 10))
        specs.append(Spec("int8_mm._int8_mm_kernel", "int8", _cfg_name(c.kwargs, c.num_warps, c.num_stages),
                          _signature(fn, types, const), const,
                          tuple(n for n in fn.arg_names if n not in const), c.num_warps, c.num_stages, "int8",
                          archs))

    # int8_linear W8A8: x [M, K] row-major (bf16, and fp32: its x tile is twice the registers and shared
    # memory), int8 w [N, K] row-major, fp32 scales, bias / y in x's dtype.
    fn = int8_linear._w8a8_dynamic_kernel
    for xdt in ("bf16", "fp32"):
        for c in int8_linear._W8A8_CONFIGS:
            const = dict(c.kwargs, HAS_BIAS=True, stride_xk=1, stride_wk=1, stride_ws=1, stride_b=1, stride_yn=1)
            types = {"x_ptr": _ptr(xdt), "w_ptr": "*i8", "ws_ptr": "*fp32", "b_ptr": _ptr(xdt), "y_ptr": _ptr(xdt)}
            types.update({n: "i32" for n in fn.arg_names if n not in types and n not in const})
            specs.append(Spec("int8_linear._w8a8_dynamic_kernel", f"{xdt} x, int8 dot",
                              _cfg_name(c.kwargs, c.num_warps, c.num_stages), _signature(fn, types, const), const,
                              tuple(n for n in fn.arg_names if n not in const), c.num_warps, c.num_stages, "int8"))

    # int8_linear weight-only: bf16 x (tensor cores), split-K 1 and 4.
    fn = int8_linear._weight_only_kernel
    for c in int8_linear._WEIGHT_ONLY_CONFIGS:
        for split in (1, 4) if c.kwargs["BLOCK_M"] <= 16 else (1,):
            const = dict(c.kwargs, HAS_BIAS=True, DOT_FP32=False, SPLIT_K=split,
                         stride_xk=1, stride_wk=1, stride_ws=1, stride_b=1, stride_yn=1)
            types = {"x_ptr": "*bf16", "w_ptr": "*i8", "ws_ptr": "*fp32", "b_ptr": "*bf16", "y_ptr": "*bf16",
                     "p_ptr": "*fp32"}
            types.update({n: "i32" for n in fn.arg_names if n not in types and n not in const})
            specs.append(Spec("int8_linear._weight_only_kernel", f"bf16 x, split-K {split}",
                              _cfg_name(c.kwargs, c.num_warps, c.num_stages), _signature(fn, types, const), const,
                              tuple(n for n in fn.arg_names if n not in const), c.num_warps, c.num_stages, "bf16"))

    # split-K epilogue: fixed launch (BLOCK 1024, default 4 warps); SPLIT_K as the launcher's heuristic caps it.
    fn = int8_linear._split_k_epilogue_kernel
    const = dict(HAS_BIAS=True, SPLIT_K=4, BLOCK=1024, stride_ws=1, stride_b=1, stride_yn=1)
    types = {"p_ptr": "*fp32", "ws_ptr": "*fp32", "b_ptr": "*bf16", "y_ptr": "*bf16", "MN": "i32", "N": "i32",
             "stride_ym": "i32"}
    specs.append(Spec("int8_linear._split_k_epilogue_kernel", "bf16 y", _cfg_name({"BLOCK": 1024}, 4, 3),
                      _signature(fn, types, const), const, tuple(types), 4, 3))
    return specs


def _sparse_specs() -> list[Spec]:
    """The N:M sparse linear (kernels/sparse_nm.py, one fixed launch config): 2:4 and 4:8 with bf16 values,
    2:4 with int8 values + per-row scales, and 2:4 split-K 4 (decode), bf16 x (tensor cores); the BSR linear
    (kernels/sparse_bsr.py)."""
    from kernels import sparse_nm

    fn = sparse_nm._sparse_nm_kernel
    specs = []
    for n, m, bits, vdt, scaled, split in ((2, 4, 2, "bf16", False, 1), (4, 8, 4, "bf16", False, 1),
                                           (2, 4, 2, "i8", True, 1), (2, 4, 2, "bf16", False, 4)):
        const = dict(NSLOT=n, MGROUP=m, BITS=bits, HAS_SCALE=scaled, HAS_BIAS=True, DOT_FP32=False,
                     BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, SPLIT_K=split, stride_xk=1)
        types = {"x_ptr": "*bf16", "v_ptr": _ptr(vdt), "i_ptr": "*u8", "s_ptr": "*fp32", "b_ptr": "*bf16",
                 "y_ptr": "*bf16"}
        types.update({a: "i32" for a in fn.arg_names if a not in types and a not in const})
        specs.append(Spec("sparse_nm._sparse_nm_kernel", f"{n}:{m} {vdt} values, bf16 x, split-K {split}",
                          "BM16 BN32 BK32 w4 s3",
                          _signature(fn, types, const), const, tuple(types), 4, 3, "bf16"))
    # BSR (kernels/sparse_bsr.py): 32 x 32 tiles, bf16 or int8 values, the launcher's BLOCK_M at decode and prefill.
    from kernels import sparse_bsr

    fn = sparse_bsr._sparse_bsr_kernel
    for vdt, scaled, bm in (("bf16", False, 16), ("bf16", False, 64), ("i8", True, 64)):
        const = dict(BH=32, BW=32, HAS_SCALE=scaled, HAS_BIAS=True, DOT_FP32=False, BLOCK_M=bm, BLOCK_N=32,
                     BLOCK_K=32, stride_xk=1)
        types = {"x_ptr": "*bf16", "v_ptr": _ptr(vdt), "col_ptr": "*i32", "crow_ptr": "*i64", "s_ptr": "*fp32",
                 "b_ptr": "*bf16", "y_ptr": "*bf16"}
        types.update({a: "i32" for a in fn.arg_names if a not in types and a not in const})
        specs.append(Spec("sparse_bsr._sparse_bsr_kernel", f"32x32 {vdt} tiles, bf16 x", f"BM{bm} BN32 BK32 w4 s3",
                          _signature(fn, types, const), const, tuple(types), 4, 3, "bf16"))
    return specs


def _quantize_specs() -> list[Spec]:
    from kernels import quantize

    fn = quantize._quantize_per_token_kernel
    specs = []
    # The launcher's BLOCK_K = clamp(next_pow2(K), 128, 4096); 4 warps up to 1024, else 8.
    for bk in (128, 256, 512, 1024, 2048, 4096):
        warps = 4 if bk <= 1024 else 8
        const = dict(BLOCK_K=bk)
        types = {"x_ptr": "*bf16", "q_ptr": "*i8", "scale_ptr": "*fp32", "K": "i32", "stride_xm": "i32",
                 "stride_qm": "i32"}
        specs.append(Spec("quantize._quantize_per_token_kernel", "bf16 x", _cfg_name(const, warps, 3),
                          _signature(fn, types, const), const, tuple(types), warps, 3))
    return specs


def _kept_per_arch(prune, configs, named, kwargs) -> tuple[list, dict]:
    """(configs ``prune`` keeps on sm_80 or sm_90, {id(config): the architectures it keeps it on})."""
    kept_on = {a: {id(c) for c in (prune(configs, named, GPU_MAJOR=a // 10, **kwargs) if prune else configs)}
               for a in (80, 90)}
    kept = [c for c in configs if any(id(c) in k for k in kept_on.values())]
    return kept, {id(c): tuple(a for a in (80, 90) if id(c) in kept_on[a]) for c in kept}


def _attention_specs(dtypes=("bf16", "fp16"), head_dims=(64, 128)) -> list[Spec]:
    import torch
    from kernels import attention_backward, attention_decode, attention_forward

    specs = []
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}

    def fwd_types(fn, dt, const):
        types = {"q_ptr": _ptr(dt), "k_ptr": _ptr(dt), "v_ptr": _ptr(dt), "mask_ptr": _ptr(dt), "o_ptr": _ptr(dt),
                 "lse_ptr": "*fp32", "acc_ws_ptr": "*fp32", "m_ws_ptr": "*fp32", "l_ws_ptr": "*fp32",
                 "score_scale": "fp32", "exp_scale": "fp32"}
        types.update({n: "i32" for n in fn.arg_names if n not in types and n not in const})
        return types

    class _Named:  # what the autotuner's prune function reads from the launch arguments
        def __init__(self, dt):
            self._dt = dt

        def element_size(self):
            return torch.empty((), dtype=torch_dtype[self._dt]).element_size()

    fn = attention_forward._attn_fwd_kernel
    for dt in dtypes:
        for d in head_dims:
            base = dict(MASK_KIND=0, SCALE_IN_EXP=True, IS_CAUSAL=True, DOT_FP32=False, BLOCK_D=d, BLOCK_DV=d,
                        stride_qd=1, stride_kd=1, stride_vd=1, stride_od=1)
            # configs the autotuner would consider for this head dim (after its early prune)
            named = {"q_ptr": _Named(dt), "mask_ptr": _Named(dt)}
            for split, configs in ((False, attention_forward._FWD_CONFIGS), (True, attention_forward._SPLIT_CONFIGS)):
                # configs its early prune keeps on each architecture (register / shared-memory model and
                # the measured spills of kernels/attention_spills.py)
                kept, archs_of = _kept_per_arch(attention_forward._prune, configs, named, base)
                for c in kept:
                    const = dict(base, SPLIT=split, **c.kwargs)
                    types = fwd_types(fn, dt, const)
                    specs.append(Spec("attention_forward._attn_fwd_kernel",
                                      f"{dt} D{d} causal{' split-KV' if split else ''}",
                                      _cfg_name(c.kwargs, c.num_warps, c.num_stages), _signature(fn, types, const),
                                      const, tuple(types), c.num_warps, c.num_stages, dt, archs_of[id(c)]))

    fn = attention_decode._attn_split_combine_kernel
    for dt in dtypes[:1]:
        for d in head_dims:
            for block_s in (2, 64):  # 2 .. _MAX_SPLITS splits
                warps = 4 if block_s * d <= 4096 else 8
                const = dict(BLOCK_S=block_s, BLOCK_DV=d, stride_od=1)
                types = {"acc_ws_ptr": "*fp32", "m_ws_ptr": "*fp32", "l_ws_ptr": "*fp32", "o_ptr": _ptr(dt),
                         "lse_ptr": "*fp32", "exp_scale": "fp32"}
                types.update({n: "i32" for n in fn.arg_names if n not in types and n not in const})
                specs.append(Spec("attention_decode._attn_split_combine_kernel", f"{dt} Dv{d}",
                                  _cfg_name(dict(BLOCK_S=block_s, BLOCK_DV=d), warps, 3),
                                  _signature(fn, types, const), const, tuple(types), warps, 3))

    fn = attention_backward._attn_bwd_preprocess_kernel
    for dt in dtypes[:1]:
        for d in head_dims:
            const = dict(HAS_DLSE=False, BLOCK_M=64, BLOCK_DV=d, stride_od=1, stride_dod=1)
            types = {"o_ptr": _ptr(dt), "do_ptr": _ptr(dt), "dlse_ptr": "*fp32", "delta_ptr": "*fp32"}
            types.update({n: "i32" for n in fn.arg_names if n not in types and n not in const})
            specs.append(Spec("attention_backward._attn_bwd_preprocess_kernel", f"{dt} Dv{d}",
                              _cfg_name(dict(BLOCK_M=64), 4, 3), _signature(fn, types, const), const,
                              tuple(types), 4, 3))

    for fn, tuner in ((attention_backward._attn_bwd_dkdv_kernel, attention_backward._dkdv_kernel),
                      (attention_backward._attn_bwd_dq_kernel, attention_backward._dq_kernel)):
        for dt in dtypes:
            for d in head_dims:
                # the configs the autotuner would consider at this head dim, per architecture
                configs, archs_of = _kept_per_arch(tuner.early_config_prune, tuner.configs, {"q_ptr": _Named(dt)},
                                                   dict(BLOCK_D=d, BLOCK_DV=d))
                for c in configs:
                    const = dict(c.kwargs, MASK_KIND=0, SCALE_IN_EXP=True, IS_CAUSAL=True, DOT_FP32=False,
                                 BLOCK_D=d, BLOCK_DV=d)
                    const.update({n: 1 for n in fn.arg_names if n.startswith("stride_") and n.endswith("d")})
                    types = {n: _ptr(dt) for n in fn.arg_names if n.endswith("_ptr")}
                    types.update(lse_ptr="*fp32", delta_ptr="*fp32", score_scale="fp32", exp_scale="fp32",
                                 lse_mul="fp32", scale="fp32")
                    types.update({n: "i32" for n in fn.arg_names if n not in types and n not in const})
                    specs.append(Spec(f"attention_backward.{fn.__name__}", f"{dt} D{d} causal",
                                      _cfg_name(c.kwargs, c.num_warps, c.num_stages), _signature(fn, types, const),
                                      const, tuple(types), c.num_warps, c.num_stages, dt, archs_of[id(c)]))
    return specs


SUBSETS = ("default", "extra", "all")


def all_specs(kernel_filter: str | None = None, subset: str = "all") -> list[Spec]:
    """The compiles of ``subset``.

    "default": every config of every kernel once. GEMMs in their representative dtypes; attention in
    bf16 at head dim 128 (the most registers and shared memory) in every config its autotuner keeps
    there, plus head dim 64 for the configs (or architectures) it prunes at 128. "extra": the rest of the matrix
    (attention in fp16, bf16 at head dim 64). "all": both.
    """
    _check_env()
    bf16_attn = _attention_specs(dtypes=("bf16",))
    # architectures each config compiles for at head dim 128
    at_128 = {(s.kernel, s.variant.replace("D128", "D?"), s.config): set(s.archs)
              for s in bf16_attn if "D128" in s.variant}

    def in_default(s):
        return "D128" in s.variant or "Dv128" in s.variant or \
            not set(s.archs) <= at_128.get((s.kernel, s.variant.replace("D64", "D?"), s.config), set())

    default = [s for s in bf16_attn if in_default(s)]
    specs = []
    if subset in ("default", "all"):
        specs += _gemm_specs() + _quantize_specs() + _sparse_specs() + default
    if subset in ("extra", "all"):
        specs += [s for s in bf16_attn if not in_default(s)]
        specs += [s for s in _attention_specs(dtypes=("fp16",)) if s.mma == "fp16"]
    if kernel_filter:
        specs = [s for s in specs if re.search(kernel_filter, s.kernel)]
    return specs


def _check_env():
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("triton_resources: unset TRITON_INTERPRET (under the interpreter @triton.jit makes no "
                           "compilable kernel and kernels/*.py choose their interpreter configs)")


def autotune_configs() -> dict:
    """{"module.kernel": [config names]} of every ``triton.autotune`` object in ``kernels/*.py``.

    A config that a kernel module's ``config_fits(kwargs, num_warps, major)`` rules out on an
    architecture is named with an ``@sm_<arch>`` suffix for the architectures it runs on.
    """
    import importlib
    import pkgutil

    import kernels
    from triton.runtime.autotuner import Autotuner

    _check_env()
    out: dict = {}
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"kernels.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, Autotuner):
                name = f"{info.name}.{obj.fn.__name__}"
                out.setdefault(name, [])
                fits = getattr(module, "config_fits", None)
                table = getattr(module, "SPILL_TABLES", {}).get(obj.fn.__name__)
                for c in obj.configs:
                    cname = _cfg_name(c.kwargs, c.num_warps, c.num_stages)
                    if table is not None:
                        from kernels import attention_spills
                        archs = attention_spills.archs(table, c.kwargs, c.num_warps, c.num_stages)
                    else:
                        archs = tuple(a for a in (80, 90) if fits is None or fits(c.kwargs, c.num_warps, a // 10))
                    out[name] += [cname] if archs == (80, 90) else [f"{cname}@sm_{a}" for a in archs]
    return out


# --------------------------------------------------------------------------
# compile + resources
# --------------------------------------------------------------------------

def _cuobjdump() -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def resources_of_cubin(cubin: bytes) -> dict:
    """REG / STACK / SHARED / LOCAL of the one function in a cubin (cuobjdump --dump-resource-usage)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", out)
    if not m:
        raise RuntimeError(f"cuobjdump: no resource line in:\n{out}")
    return dict(regs=int(m[1]), stack=int(m[2]), static_shared=int(m[3]), local=int(m[4]))


def _fn(spec: Spec):
    import importlib

    module, name = spec.kernel.split(".")
    return getattr(importlib.import_module(f"kernels.{module}"), name)


def compile_spec(spec: Spec, arch: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget

    fn = _fn(spec)
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in spec.aligned}
    row = dict(kernel=spec.kernel, variant=spec.variant, config=spec.config, arch=arch, mma_dtype=spec.mma)
    t0 = time.monotonic()
    cpu0 = _cpu_seconds()
    try:
        k = triton.compile(triton.compiler.ASTSource(fn=fn, signature=spec.signature, constexprs=spec.constexprs,
                                                     attrs=attrs),
                           target=GPUTarget("cuda", arch, 32),
                           options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
    except Exception as exc:  # report, don't stop the sweep
        row.update(error=f"{exc.__class__.__name__}: {str(exc)[:400]}", seconds=time.monotonic() - t0)
        return row
    ptx = k.asm["ptx"]
    row.update(resources_of_cubin(k.asm["cubin"]))
    row["shared"] = int(k.metadata.shared)
    row["wgmma"] = len(re.findall(r"\bwgmma\.mma_async", ptx))
    row["mma_sync"] = len(re.findall(r"\bmma\.sync", ptx))
    row["seconds"] = round(time.monotonic() - t0, 2)
    row["cpu_s"] = round(_cpu_seconds() - cpu0, 2)  # this process + ptxas / cuobjdump: the cost on an idle machine
    return row


def _cpu_seconds() -> float:
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _work(item):
    spec, arch = item
    return compile_spec(spec, arch)


def check_row(row: dict) -> list[str]:
    """Problems of one compiled (kernel, config, arch): spills, shared memory, missing tensor-core instructions."""
    where = f"{row['kernel']} [{row['variant']}] {row['config']} sm_{row['arch']}"
    if "error" in row:
        return [f"{where}: does not compile: {row['error']}"]
    bad = []
    if row["stack"] or row["local"]:
        bad.append(f"{where}: spills ({row['regs']} registers, {row['stack']} B stack, {row['local']} B local)")
    limit = SMEM_LIMIT[row["arch"]]
    if row["shared"] + row["static_shared"] > limit:
        bad.append(f"{where}: {row['shared'] + row['static_shared']} B shared memory > {limit} B")
    if row["mma_dtype"]:
        n = row["mma_sync"] + (row["wgmma"] if row["arch"] >= 90 else 0)
        if n == 0:
            bad.append(f"{where}: tl.dot on {row['mma_dtype']} emits no tensor-core instruction "
                       f"({'wgmma / ' if row['arch'] >= 90 else ''}mma.sync)")
    return bad


def sweep(specs: list[Spec], archs=(80, 90), jobs: int = 1, sink=None) -> list[dict]:
    """Compile every (spec, arch); ``sink(row)`` is called as each finishes (in order)."""
    items = [(s, a) for s in specs for a in archs if a in s.archs]
    rows = []
    if jobs <= 1:
        results = map(_work, items)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=jobs)
        results = pool.map(_work, items, chunksize=1)
    try:
        for row in results:
            rows.append(row)
            if sink:
                sink(row)
    finally:
        if pool:
            pool.shutdown()
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"| kernel | variant | config | arch | regs | stack B | local B | shared B | mma |"
    out = [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['kernel']} | {r['variant']} | {r['config']} | sm_{r['arch']} | ERROR: {r['error'][:80]} |"
                       " | | | |")
            continue
        mma = (f"wgmma {r['wgmma']}, " if r["wgmma"] else "") + f"mma.sync {r['mma_sync']}"
        out.append(f"| {r['kernel']} | {r['variant']} | {r['config']} | sm_{r['arch']} | {r['regs']} | {r['stack']} "
                   f"| {r['local']} | {r['shared']} | {mma} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    p.add_argument("--kernel", help="regex on 'module.kernel'")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--json", help="write the rows here (one JSON object per line)")
    p.add_argument("--subset", choices=SUBSETS, default="all")
    p.add_argument("--quiet", action="store_true", help="no table, only the summary and problems")
    p.add_argument("--list", action="store_true", help="list the compiles, do nothing")
    args = p.parse_args(argv)
    _check_env()
    specs = all_specs(args.kernel, args.subset)
    if args.list:
        for s in specs:
            print(s.kernel, "|", s.variant, "|", s.config)
        print(len(specs), "specs x", len(args.arch), "archs")
        return 0
    t0 = time.monotonic()
    out = open(args.json, "w") if args.json else None

    def sink(row):
        if out:
            out.write(json.dumps(row) + "\n")
            out.flush()

    try:
        rows = sweep(specs, tuple(args.arch), args.jobs, sink)
    finally:
        if out:
            out.close()
    if not args.quiet:
        print(format_table(rows))
    problems = [b for r in rows for b in check_row(r)]
    cpu = sum(r.get("cpu_s", 0.0) for r in rows)
    print(f"\n{len(rows)} compiles in {time.monotonic() - t0:.0f} s ({cpu:.0f} CPU s in the compiles); "
          f"{len(problems)} problem(s)")
    for b in problems:
        print("  " + b)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
