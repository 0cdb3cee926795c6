"""The C++ kernels called through the raw bindings of ``llmaccel._C``, one variant and thread count at a time.

The ops always run the best variant with torch's thread count; tests of
per-variant properties (determinism, concurrency, cross-variant checkpoints)
drive each variant directly through these wrappers.  All tensors are
contiguous fp32 / int8 on the CPU.
"""

import math

import torch

from llmaccel._ext import ext
from llmaccel.ops._cpp_views import view


def packed_weight(w, variant, nthreads=2):
    N, K = w.shape
    out = torch.empty(ext().int8_mm_packed_size(variant, N, K), dtype=torch.int8)
    ext().int8_mm_pack_b(variant, N, K, w.data_ptr(), K, out.data_ptr(), nthreads)
    return out


def int8_linear_dynamic_cpp(x, w, s, b, variant, nthreads, packed=True):
    M, K = x.shape
    N = w.shape[0]
    y = torch.full((M, N), float("nan"))
    p = packed_weight(w, variant) if packed else None
    ext().int8_linear_dynamic(M, N, K, x.data_ptr(), K, w.data_ptr(), K, p.data_ptr() if packed else 0,
                              s.data_ptr(), b.data_ptr() if b is not None else 0, y.data_ptr(), N, nthreads, variant)
    return y


def weight_only_cpp(x, w, s, b, variant, nthreads):
    M, K = x.shape
    N = w.shape[0]
    y = torch.full((M, N), float("nan"))
    ext().int8_linear_weight_only(M, N, K, x.data_ptr(), K, w.data_ptr(), K, s.data_ptr(),
                                  b.data_ptr() if b is not None else 0, y.data_ptr(), N, nthreads, variant)
    return y


def attention_fwd_cpp(q, k, v, causal, variant, nthreads):
    """(out, lse) of the C++ forward; q [B,Hq,Lq,D], k/v [B,Hkv,Lk,D*] (any strides), no mask."""
    B, Hq, Lq, D = q.shape
    Dv = v.shape[3]
    out = torch.full((B, Hq, Lq, Dv), float("nan"))
    lse = torch.full((B, Hq, Lq), float("nan"))
    ext().attention_fwd(view(q), view(k), view(v), None, causal, False, 1.0 / math.sqrt(D), view(out), view(lse),
                        nthreads, variant)
    return out, lse


def attention_bwd_cpp(q, k, v, out, lse, dout, causal, variant, nthreads):
    """(dq, dk, dv) of the C++ backward (no mask, no dlse)."""
    dq, dk, dv = (torch.full(t.shape, float("nan")) for t in (q, k, v))
    ext().attention_bwd(view(q), view(k), view(v), None, causal, False, 1.0 / math.sqrt(q.shape[3]), view(out),
                        view(lse), view(dout), None, view(dq), view(dk), view(dv), nthreads, variant)
    return dq, dk, dv


def attention_fwd_kwargs(q_shape=(1, 4, 3, 8), kv_shape=(1, 2, 5, 8), mask_dtype=torch.bool, scale=0.3,
                         nthreads=1, **over):
    """Arguments of ``_C.attention_fwd`` for a small valid problem (q ``q_shape``, k/v ``kv_shape``, no mask),
    each view a mutable list ``[address, dtype, sizes, strides]``, with ``over`` applied: ``"q.sizes"`` /
    ``"v.strides"`` / ``"mask.dtype"`` ... replace one part of one view (``"name.addr"`` too; a mask part first
    puts in a valid all-attend mask of ``mask_dtype``), other keys replace an argument.
    Returns (kwargs, tensors to keep alive (q, k, v, mask, out), out)."""
    q, k, v = torch.randn(*q_shape), torch.randn(*kv_shape), torch.randn(*kv_shape)
    out = torch.zeros(*q_shape)
    mask = torch.ones(q_shape[0], q_shape[1], q_shape[2], kv_shape[2], dtype=mask_dtype)
    kw = dict(q=list(view(q)), k=list(view(k)), v=list(view(v)), mask=None, is_causal=False,
              causal_bottom_right=False, scale=scale, out=list(view(out)), lse=None, nthreads=nthreads, variant="")
    parts = {"addr": 0, "dtype": 1, "sizes": 2, "strides": 3}
    for key, value in over.items():
        if "." in key:
            name, part = key.split(".")
            if kw.get(name) is None:  # the mask: a valid one first
                kw[name] = list(view(mask))
            kw[name][parts[part]] = value
        else:
            kw[key] = value
    for name in ("q", "k", "v", "mask", "out", "lse"):
        if kw[name] is not None:
            kw[name] = tuple(kw[name])
    return kw, (q, k, v, mask, out), out


def sparse_nm_cpp(x, packed, b, variant, nthreads, binding="sparse_nm_linear"):
    """The C++ N:M-sparse linear on an ``NMPackedWeight`` (fp32 or int8; x [M, K] with unit column stride);
    ``binding="sparse_nm_large_linear"``: the large-M kernel."""
    M, K = x.shape
    N = packed.shape[0]
    y = torch.full((M, N), float("nan"))
    s = packed.scale
    getattr(ext(), binding)(M, N, K, packed.n, packed.m, x.data_ptr(), x.stride(0), packed.values.data_ptr(),
                           packed.quantized, packed.values.stride(0), packed.indices.data_ptr(),
                           packed.indices.stride(0), s.data_ptr() if s is not None else 0,
                           b.data_ptr() if b is not None else 0, y.data_ptr(), N, nthreads, variant)
    return y


def sparse_nm_raw_2_4(binding, packed, **over):
    """A valid raw N:M call (M=2, N=5, K=12, 2:4, fp32 ``packed`` of shape [5, 12], with bias) through
    ``llmaccel._C.<binding>``, with some arguments replaced; returns (y, x, bias)."""
    x, y, b = torch.randn(2, 12), torch.empty(2, 5), torch.randn(5)
    args = dict(M=2, N=5, K=12, n=2, m=4, x=x.data_ptr(), x_sm=12, values=packed.values.data_ptr(),
                values_int8=False, values_sn=6, indices=packed.indices.data_ptr(), indices_sn=2, scale=0,
                bias=b.data_ptr(), y=y.data_ptr(), y_sm=5, nthreads=2, variant="")
    args.update(over)
    getattr(ext(), binding)(**args)
    return y, x, b
