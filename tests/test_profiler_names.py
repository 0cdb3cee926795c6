"""llmaccel kernels appear by name in torch.profiler traces (the direct-call fast path would hide them)."""
import torch
from torch.profiler import ProfilerActivity, profile

import llmaccel
from llmaccel.sparsity import NMPackedWeight, prune


def _event_names(fn):
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def test_quantized_linear_attention_and_sparse_ops_are_named_in_a_profile():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    q = llmaccel.Int8Linear.from_linear(lin)
    w = torch.randn(32, 64)
    fields = llmaccel.sparse_linear_fields(NMPackedWeight.from_dense(w, prune(w, "2:4"), "2:4"))
    x = torch.randn(5, 64)
    qkv = torch.randn(1, 2, 9, 16)
    names = _event_names(lambda: (q(x), llmaccel.attention(qkv, qkv, qkv), llmaccel.sparse_linear(x, *fields)))
    for op in ("llmaccel::int8_linear", "llmaccel::attention", "llmaccel::sparse_linear"):
        assert op in names, sorted(n for n in names if "llmaccel" in n)
