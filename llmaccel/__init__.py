"""llmaccel: Triton (CUDA) and C++/OpenMP (CPU) kernels behind torch.library ops.

Quick tour::

    import llmaccel
    c = llmaccel.int8_mm(a, b)                    # torch.ops.llmaccel.int8_mm
    llmaccel.backends.explain("int8_mm", a, b)    # which path runs, and why
    with llmaccel.backends.use("torch"): ...      # force the reference path
    llmaccel.cpu_info()                           # CPU features, kernel variants
"""

import torch  # noqa: F401  (before the extension: one OpenMP runtime)

from . import backends
from .cpu import cpu_info
from . import ops
from .ops import *  # noqa: F401,F403  (every op's public function and reference: ops.__all__)
from .nn import Int8Linear, SparseLinear
from .quantize import Int8Config, QuantizeSummary, quantize_
from .smoothquant import SmoothReport, smooth_
from . import sparsity  # pruning masks, calibration, compressed sparse formats
from .sparsify import SparsifySummary, SparsityConfig, sparsify_
from .optimize import OptimizeReport, optimize

__version__ = "0.1.0"

__all__ = ["backends", "cpu_info", *ops.__all__, "Int8Linear", "Int8Config", "QuantizeSummary", "quantize_",
           "SmoothReport", "smooth_", "sparsity", "SparseLinear", "SparsityConfig", "SparsifySummary", "sparsify_",
           "optimize", "OptimizeReport", "__version__"]
