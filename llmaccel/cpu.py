"""``llmaccel.cpu_info()``: what the CPU offers and which kernel variant each op runs."""

from __future__ import annotations

import torch

from . import _ext


def cpu_info() -> dict:
    """Detected CPU features (CPUID, at run time) and the C++ variant each op uses.

    Example::

        {'features': ['avx2', 'fma', 'avx512f', ..., 'avx512vnni'],
         'variants': {'int8_mm': 'avx512vnni', 'attention': 'avx512'},
         'available_variants': {'int8_mm': ['avx512vnni', 'avx2', 'generic'], 'attention': ['avx512', 'avx2', 'generic']},
         'torch_cpu_capability': 'AVX512', 'num_threads': 2, 'extension': 'loaded'}
    """
    info = {
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "num_threads": torch.get_num_threads(),
    }
    err = _ext.load_error()
    if err:
        info.update(extension=err, features=[], variants={}, available_variants={})
        return info
    c = _ext.ext()
    available = {"int8_mm": list(c.int8_mm_variants()), "attention": list(c.attention_variants())}
    info.update(
        extension="loaded",
        features=list(c.cpu_features()),
        variants={op: names[0] for op, names in available.items()},
        available_variants=available,
        transparent_huge_pages=c.transparent_huge_pages_mode(),
    )
    return info
