"""Triton per-token (per-row) symmetric absmax int8 quantization.

Math
----
Exactly the contract of ``llmaccel/ops/quantize.py`` (its torch reference is
the truth this kernel is tested against). For ``x`` float ``[..., K]``
(fp32 / fp16 / bf16), every row ``x[r, :]`` of the flattened ``[R, K]`` view::

    absmax[r] = max_k |x[r, k]|                       (in fp32)
    scale[r]  = absmax[r] / 127                        (1.0 where that is 0: an all-zero row,
                                                        or absmax so tiny that absmax / 127 underflows;
                                                        NaN, with q = 0, for a row holding NaN or +-Inf)
    q[r, k]   = clamp(round_half_even(x[r, k] / scale[r]), -127, 127)   (int8)

``scale`` is an IEEE round-to-nearest fp32 division (``tl.math.div_rn``;
Triton's plain ``/`` may lower to the approximate ``div.full.f32`` on NVIDIA
GPUs), so it is bit-identical to the reference.

``q`` is computed as a product with a per-row reciprocal, not a per-element
division: the fused W8A8 GEMM re-quantizes each x tile in every column
program, and a correctly rounded division is a ~20-instruction sequence per
element on a GPU, against 3 instructions here (multiply, clamp, round)::

    f[r]   = 2**64 if scale[r] < 2**-64 else 1        (a power of two: scaling by it is exact)
    inv[r] = 1 / (scale[r] * f[r])                     (div_rn, once per row)
    q      = round_half_even(clamp((x * f[r]) * inv[r], -127, 127))

``f`` exists for subnormal and tiny scales, whose reciprocal would overflow
fp32; ``x * f`` and ``scale * f`` are exact, so the quotient is unchanged.
The reference divides ``x / scale`` in float64; the product above is within
two fp32 roundings (relative 2**-23, i.e. at most 2**-16 for |v| <= 127.5) of
that quotient, so q can differ only when the exact quotient lies that close
to a rounding tie, by one step -- the latitude the contract grants (the C++
kernel multiplies by ``127 / absmax``, which is further off).

Rounding
--------
Triton has no portable round-half-even (``libdevice.rint`` exists only on the
GPU, and the CPU interpreter the test suite uses lacks libdevice). With ``v``
clamped to [-127, 127], ``(v + 1.5 * 2**23) - 1.5 * 2**23`` is exactly
round-half-even(v): the sum lies in [2**23, 2**24), where fp32's spacing is
1, so the addition itself rounds v to an integer (ties to even) and the
subtraction is exact. Two instructions, IEEE only (no fast-math
reassociation is ever enabled, so the compiler cannot fold them).

Tiling
------
One program per row (grid = ``R``). The row is walked in ``BLOCK_K`` chunks
twice: first to reduce ``absmax`` (an element-wise running max over the chunk,
reduced across the chunk at the end), then to quantize and store. Two passes
over a row cost one extra read of ``x`` but work for any ``K`` with a fixed
register footprint; the row is normally still in L2 for the second pass.

Rows may be strided (the row stride of the 2-D view is a runtime argument,
row offsets are computed in int64); the last dimension must be contiguous,
otherwise the launcher makes a contiguous copy first. ``q`` is returned
contiguous, ``scale`` as an fp32 tensor of shape ``x.shape[:-1]``.

bf16/fp16 are loaded and converted to fp32 before any arithmetic (the
interpreter has no bf16 arithmetic, and the contract computes in fp32 anyway).

The scale and rounding rule live in two small ``@triton.jit`` helpers
(``_scale_from_absmax``, ``_quantize_values``) that the fused W8A8 GEMM in
``kernels/int8_linear.py`` calls too: its in-register quantization of ``x``
is bit-identical to this kernel's output.

Input validation lives in ``llmaccel/ops/quantize.py``; the launcher assumes
it has been done.
"""

import math

import torch
import triton
import triton.language as tl

from ._interpret import INTERPRET as _INTERPRET


@triton.jit
def _round_half_even_clamped(v):
    """round_half_even(clamp(v, -127, 127)) as fp32 (module docstring: the 1.5 * 2**23 shift)."""
    v = tl.minimum(tl.maximum(v, -127.0), 127.0)
    return (v + 12582912.0) - 12582912.0


# The two helpers below are the whole per-row quantization rule. Both this
# file's kernel and the fused W8A8 GEMM in kernels/int8_linear.py call them, so
# the two paths produce bit-identical scales and q (the GEMM's int32 core then
# equals q @ w_int8.T of this kernel's q exactly).

@triton.jit
def _abs_for_max(x):
    """|x| for the running absmax, with NaN mapped to +inf: a max reduction on the GPU drops NaN, so a
    row holding NaN or +-Inf is recognised by its absmax being +inf (see ``_scale_from_absmax``)."""
    return tl.where(x == x, tl.abs(x), float("inf"))


@triton.jit
def _scale_from_absmax(absmax):
    """fp32 per-row scale = absmax / 127 (correctly rounded), 1.0 where that is 0, NaN for a
    non-finite row (absmax == +inf, from ``_abs_for_max``)."""
    scale = tl.math.div_rn(absmax, 127.0)
    # All-zero row, or absmax so tiny that absmax / 127 underflows. No reciprocal
    # is ever formed (x is divided by scale), so tiny scales cannot overflow.
    scale = tl.where(scale > 0, scale, 1.0)
    return tl.where(absmax < float("inf"), scale, float("nan"))


@triton.jit
def _row_reciprocal(scale):
    """(f, inv) of a row's scale (module docstring): inv = 1 / (scale * f) is finite for every scale."""
    f = tl.where(scale < 5.421010862427522e-20, 1.8446744073709552e19, 1.0)  # 2**-64, 2**64
    return f, tl.math.div_rn(1.0, scale * f)


@triton.jit
def _quantize_values(x, f, inv):
    """round_half_even(clamp((x * f) * inv, -127, 127)) as fp32 (exact integers); x fp32, f / inv broadcastable.
    A non-finite row (scale NaN, so inv NaN) quantizes to 0."""
    return tl.where(inv == inv, _round_half_even_clamped((x * f) * inv), 0.0)


@triton.jit
def _quantize_per_token_kernel(
    x_ptr,
    q_ptr,
    scale_ptr,
    K,
    stride_xm,
    stride_qm,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xm
    q_row = q_ptr + row * stride_qm
    offs0 = tl.arange(0, BLOCK_K)

    # ---- pass 1: absmax of the row ------------------------------------------
    running = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + offs0
        x = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)
        running = tl.maximum(running, _abs_for_max(x))
    absmax = tl.max(running, axis=0)
    scale = _scale_from_absmax(absmax)
    tl.store(scale_ptr + row, scale)
    f, inv = _row_reciprocal(scale)

    # ---- pass 2: quantize ----------------------------------------------------
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + offs0
        mask = offs < K
        x = tl.load(x_row + offs, mask=mask, other=0.0).to(tl.float32)
        q = _quantize_values(x, f, inv)
        tl.store(q_row + offs, q.to(tl.int8), mask=mask)


def _block_k(K: int) -> int:
    if _INTERPRET:
        return 32 if K <= 32 else 128  # fewer, larger numpy ops are cheaper in the interpreter
    return max(128, min(4096, triton.next_power_of_2(K)))


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q int8 x.shape, scale fp32 x.shape[:-1])``: per-row symmetric absmax quantization of ``x``.

    Validation (dtype fp32/fp16/bf16, at least 1-D) is the caller's job (llmaccel/ops/quantize.py).
    """
    K = x.shape[-1]
    lead = x.shape[:-1]
    if x.dim() > 0 and x.stride(-1) != 1 and K > 1:
        x = x.contiguous()
    x2 = x.reshape(math.prod(lead), K)  # a view when the leading dims allow it (not -1: K may be 0)
    R = x2.shape[0]
    q = torch.empty((R, K), dtype=torch.int8, device=x.device)
    scale = torch.empty((R,), dtype=torch.float32, device=x.device)
    if R == 0:
        return q.reshape(x.shape), scale.reshape(lead)
    if K == 0:
        scale.fill_(1.0)  # an empty row is an all-zero row
        return q.reshape(x.shape), scale.reshape(lead)
    args = (x2, q, scale, K, x2.stride(0), q.stride(0))
    meta = dict(BLOCK_K=_block_k(K))
    if not _INTERPRET:
        meta["num_warps"] = 4 if meta["BLOCK_K"] <= 1024 else 8
    if x.is_cuda:
        with torch.cuda.device(x.device):
            _quantize_per_token_kernel[(R,)](*args, **meta)
    else:
        _quantize_per_token_kernel[(R,)](*args, **meta)
    return q.reshape(x.shape), scale.reshape(lead)
