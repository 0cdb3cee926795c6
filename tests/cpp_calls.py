"""The C++ kernels called through the raw bindings of ``llmaccel._C``, one variant and thread count at a time.

The ops always run the best variant with torch's thread count; tests of
per-variant properties (determinism, concurrency, cross-variant checkpoints)
drive each variant directly through these wrappers.  All tensors are
contiguous fp32 / int8 on the CPU.
"""

import math

import torch

from llmaccel._ext import ext
from llmaccel.ops._cpp_views import view, view_or_none


def packed_weight(w, variant, nthreads=2):
    N, K = w.shape
    out = torch.empty(ext().int8_mm_packed_size(variant, N, K), dtype=torch.int8)
    ext().int8_mm_pack_b(variant, view(w), view(out), nthreads)
    return out


def int8_linear_dynamic_cpp(x, w, s, b, variant, nthreads, packed=True):
    M, K = x.shape
    N = w.shape[0]
    y = torch.full((M, N), float("nan"))
    p = packed_weight(w, variant) if packed else None
    ext().int8_linear_dynamic(view(x), view(w), view_or_none(p), view(s), view_or_none(b), view(y), nthreads, variant)
    return y


def weight_only_cpp(x, w, s, b, variant, nthreads):
    M, K = x.shape
    N = w.shape[0]
    y = torch.full((M, N), float("nan"))
    ext().int8_linear_weight_only(view(x), view(w), view(s), view_or_none(b), view(y), nthreads, variant)
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
    y = torch.full((x.shape[0], packed.shape[0]), float("nan"))
    getattr(ext(), binding)(view(x), view(packed.values), view(packed.indices), view_or_none(packed.scale),
                            view_or_none(b), view(y), packed.n, packed.m, nthreads, variant)
    return y


def call_views(binding, tensors, scalars, **over):
    """``llmaccel._C.<binding>(**kwargs)``: each of ``tensors`` (name -> tensor or None) passed as its view
    (``None`` stays None), ``scalars`` as they are, with ``over`` applied: ``"x.sizes"`` / ``"values.dtype"`` /
    ``"y.strides"`` / ``"w.addr"`` replace one part of one view, other keys replace a whole argument (a view
    tuple, None or a scalar).  The caller keeps ``tensors`` alive."""
    kw = {name: None if t is None else list(view(t)) for name, t in tensors.items()}
    kw.update(scalars)
    parts = {"addr": 0, "dtype": 1, "sizes": 2, "strides": 3}
    for key, value in over.items():
        if "." in key:
            name, part = key.split(".")
            kw[name][parts[part]] = value
        else:
            kw[key] = value
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
    return getattr(ext(), binding)(**kw)


def sparse_nm_raw_2_4(binding, packed, **over):
    """A valid raw N:M call (M=2, N=5, K=12, 2:4, fp32 ``packed`` of shape [5, 12], with bias) through
    ``llmaccel._C.<binding>``, with some arguments replaced (``call_views``' ``over``); returns (y, x, bias)."""
    x, y, b = torch.randn(2, 12), torch.empty(2, 5), torch.randn(5)
    call_views(binding, dict(x=x, values=packed.values, indices=packed.indices, scale=None, bias=b, y=y),
               dict(n=2, m=4, nthreads=2, variant=""), **over)
    return y, x, b
