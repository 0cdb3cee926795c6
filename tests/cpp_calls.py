"""The C++ kernels called through the raw bindings of ``llmaccel._C``, one variant and thread count at a time.

The ops always run the best variant with torch's thread count; tests of
per-variant properties (determinism, concurrency, cross-variant checkpoints)
drive each variant directly through these wrappers.  All tensors are
contiguous fp32 / int8 on the CPU.
"""

import math

import torch

from llmaccel._ext import ext


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
    _, Hkv, Lk, Dv = v.shape
    out = torch.full((B, Hq, Lq, Dv), float("nan"))
    lse = torch.full((B, Hq, Lq), float("nan"))
    ext().attention_fwd(B, Hq, Hkv, Lq, Lk, D, Dv, q.data_ptr(), *q.stride(), k.data_ptr(), *k.stride(),
                        v.data_ptr(), *v.stride(), 0, 0, 0, 0, 0, 0, causal, False, 1.0 / math.sqrt(D),
                        out.data_ptr(), *out.stride(), lse.data_ptr(), nthreads, variant)
    return out, lse


def attention_bwd_cpp(q, k, v, out, lse, dout, causal, variant, nthreads):
    """(dq, dk, dv) of the C++ backward (no mask, no dlse)."""
    B, Hq, Lq, D = q.shape
    _, Hkv, Lk, Dv = v.shape
    dq = torch.full(q.shape, float("nan"))
    dk = torch.full(k.shape, float("nan"))
    dv = torch.full(v.shape, float("nan"))
    ext().attention_bwd(B, Hq, Hkv, Lq, Lk, D, Dv, q.data_ptr(), *q.stride(), k.data_ptr(), *k.stride(),
                        v.data_ptr(), *v.stride(), 0, 0, 0, 0, 0, 0, causal, False, 1.0 / math.sqrt(D),
                        out.data_ptr(), *out.stride(), lse.data_ptr(), dout.data_ptr(), *dout.stride(), 0,
                        dq.data_ptr(), *dq.stride(), dk.data_ptr(), *dk.stride(), dv.data_ptr(), *dv.stride(),
                        nthreads, variant)
    return dq, dk, dv


def sparse_nm_cpp(x, packed, b, variant, nthreads):
    """The C++ N:M-sparse linear on an ``NMPackedWeight`` (fp32 or int8; x [M, K] with unit column stride)."""
    M, K = x.shape
    N = packed.shape[0]
    y = torch.full((M, N), float("nan"))
    s = packed.scale
    ext().sparse_nm_linear(M, N, K, packed.n, packed.m, x.data_ptr(), x.stride(0), packed.values.data_ptr(),
                           packed.quantized, packed.values.stride(0), packed.indices.data_ptr(),
                           packed.indices.stride(0), s.data_ptr() if s is not None else 0,
                           b.data_ptr() if b is not None else 0, y.data_ptr(), N, nthreads, variant)
    return y
