"""``llmaccel.cpu_info()``: what the CPU offers and which kernel variant each op runs, and why.

The C++ side owns the facts (csrc/variants.h: one table of variants, one
``pick``); this module only arranges them per public op.  ``cpu_isa`` caps
the variants for a block of code, the in-process twin of the
``LLMACCEL_CPU_ISA`` environment variable (read when the extension loads).
"""

from __future__ import annotations

import contextlib

import torch

from . import _ext

# Public op -> the C++ kernel family that runs it (csrc/variants.h, Family), where the two names differ or one
# family runs several ops.  int8_linear act="dynamic" and the weight packing share int8_mm's variants: the
# packed layout belongs to the variant.  A family listed nowhere here (a new op family) is reported under its
# own name.
OP_FAMILIES = {
    "int8_mm": "int8_mm",
    "int8_linear_dynamic": "int8_mm",
    "int8_linear_weight_only": "int8_linear_weight_only",
    "quantize_per_token": "quantize_per_token",
    "attention_forward": "attention",
    "attention_decode": "attention",
    "attention_backward": "attention",
    "sparse_nm_linear": "sparse_nm",
    "sparse_nm_i8_linear": "sparse_nm",  # act="dynamic": the same variant's int8-activation tiles
    "sparse_bitmap_linear": "sparse_bitmap",
    "sparse_bitmap_index_linear": "sparse_bitmap",  # the column-index form: the same variant's gather tiles
    "sparse_nm_large_linear": "sparse_nm_large",
    "sparse_bsr_linear": "sparse_bsr",
}


# (op, variant) -> the lower variant whose kernel that variant's unit runs for the op, where the unit has no
# tile of its own for it (csrc/sparse_nm_avx512.cpp hands int8 activations to the AVX2 tiles, and
# csrc/sparse_nm_avx512vbmi.cpp fp32 activations to the AVX-512 ones): cpu_info() reports the variant chosen and,
# as "kernel", the code that runs.
DELEGATED = {("sparse_nm_i8_linear", "avx512"): "avx2", ("sparse_nm_linear", "avx512vbmi"): "avx512"}


def _op_entry(op: str, fam: str, d: dict) -> dict:
    variant = d["variant"]
    kernel = DELEGATED.get((op, variant), variant)
    why = d["why"] if kernel == variant else f"{d['why']}; the {variant} unit runs the {kernel} kernel for this op"
    return {"family": fam, "variant": variant, "kernel": kernel, "why": why}


def cpu_info() -> dict:
    """Detected CPU features (CPUID + XGETBV, at run time) and the C++ variant each op uses, with the reason.

    Example (an AVX2 machine)::

        {'features': ['avx', 'avx2', 'fma', 'f16c'],
         'isa_levels': {'generic': [], 'avx2': ['avx2', 'fma', 'f16c'], 'avx512': [...]},
         'cpu_isa': '',                       # LLMACCEL_CPU_ISA in force ('' = best the CPU supports)
         'ops': {'int8_mm': {'family': 'int8_mm', 'variant': 'avx2', 'kernel': 'avx2',
                             'why': 'avx2: avx512vnni needs avx2, ..., avx512vnni (missing: avx512f, ...)'}, ...},
         'variants': {'int8_mm': 'avx2', 'attention': 'avx2', ...},          # per kernel family
         'available_variants': {'int8_mm': ['avx2', 'generic'], ...},
         'torch_cpu_capability': 'AVX2', 'num_threads': 2, 'extension': 'loaded'}

    Raises the ``LLMACCEL_CPU_ISA`` error (ValueError for an unknown value,
    RuntimeError for a level this CPU lacks) like every C++ kernel call does.
    """
    info = {
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "num_threads": torch.get_num_threads(),
    }
    err = _ext.load_error()
    if err:
        info.update(extension=err, features=[], variants={}, available_variants={}, ops={})
        return info
    c = _ext.ext()
    choice = c.variant_choice()
    op_families = dict(OP_FAMILIES)
    op_families.update({fam: fam for fam in choice if fam not in OP_FAMILIES.values()})
    info.update(
        extension="loaded",
        features=list(c.cpu_features()),
        isa_levels={k: list(v) for k, v in c.isa_levels().items()},
        cpu_isa=c.cpu_isa(),
        ops={op: _op_entry(op, fam, choice[fam]) for op, fam in op_families.items()},
        variants={fam: d["variant"] for fam, d in choice.items()},
        available_variants={fam: list(d["available"]) for fam, d in choice.items()},
        transparent_huge_pages=c.transparent_huge_pages_mode(),
    )
    return info


def set_cpu_isa(level: str) -> None:
    """Caps the C++ variants at ``level`` ("generic", "avx2", "avxvnni", "avx512", "avx512vbmi", "amx"; "" = the best the CPU supports)
    for this process, as ``LLMACCEL_CPU_ISA`` does at load.  Cached packed weights are dropped (their
    layout belongs to the variant that packed them).  ValueError for an unknown level, RuntimeError
    naming the missing features for a level this CPU lacks."""
    import importlib

    _ext.ext().set_cpu_isa(level)
    importlib.import_module("llmaccel.ops.int8_linear")._packed_cache.clear()
    importlib.import_module("llmaccel.ops.sparse_linear_routes").reset()


@contextlib.contextmanager
def cpu_isa(level: str):
    """``with llmaccel.cpu.cpu_isa("generic"): ...`` runs the block with the variants capped at ``level``
    (tests use it to drive the public ops through each variant); the previous cap is restored after."""
    before = _ext.ext().cpu_isa()
    set_cpu_isa(level)
    try:
        yield
    finally:
        set_cpu_isa(before)
