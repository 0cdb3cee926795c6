"""Weight sparsity for ``nn.Linear``: pruning masks, calibration for Wanda, compressed formats.

::

    norms = llmaccel.sparsity.calibrate(model, batches)                      # {fqn: ||X[:, k]||_2}
    mask = llmaccel.sparsity.prune(w, "2:4", method="wanda", activation_norms=norms["fc1"])
    packed = llmaccel.sparsity.NMPackedWeight.from_dense(w, mask, "2:4")      # or quantize="int8"
    assert torch.equal(packed.to_dense(), w * mask)
    y = llmaccel.sparsity.sparse_linear_reference(x, packed, bias)           # the truth for kernels

Files: ``prune.py`` (masks), ``calibrate.py`` (activation norms),
``nm_packed.py`` / ``bitmap.py`` / ``bsr.py`` (one format each), ``int8.py``
(the formats' per-channel int8), ``reference.py`` (the reference matmul),
``_bits.py`` (bit packing), ``_checks.py`` (argument and state checks),
``cpu_kernel.py`` (``nm_linear_cpp``: the C++ N:M kernel on an ``NMPackedWeight``), ``cpu_bitmap.py``
(``bitmap_linear_cpp``: the C++ bitmap kernel on a ``BitmapWeight``), ``cpu_bsr.py``
(``bsr_linear_cpp``: the C++ block-sparse kernel on a ``BSRWeight``), ``_cpu_args.py`` (their argument checks),
``distill.py`` (``distill_``: recover a pruned model's accuracy from its dense original).
"""

from .bitmap import BitmapWeight
from .bsr import BSRWeight
from .calibrate import calibrate
from .cpu_bitmap import bitmap_linear_cpp
from .cpu_bsr import bsr_linear_cpp
from .cpu_kernel import nm_linear_cpp
from .distill import DistillReport, distill_, distill_parameters
from .int8 import quantize_int8_per_row
from .nm_packed import NMPackedWeight
from .prune import prune
from .sparsegpt import sparsegpt_prune
from .reference import FORMATS, sparse_linear_reference

__all__ = ["prune", "calibrate", "NMPackedWeight", "BitmapWeight", "BSRWeight", "FORMATS",
           "quantize_int8_per_row", "sparse_linear_reference", "nm_linear_cpp",
           "bitmap_linear_cpp", "bsr_linear_cpp", "distill_", "distill_parameters", "DistillReport", "sparsegpt_prune"]
