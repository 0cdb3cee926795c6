"""Triton kernels for ``llmaccel.int8_linear``: a Linear layer with an int8 weight.

Math
----
The contract is ``llmaccel/ops/int8_linear.py`` (its torch reference is the
truth the tests compare against). Shapes, after flattening ``x``'s leading
dims::

    x       : float [M, K]    fp32 / fp16 / bf16; y has x's dtype
    w_int8  : int8  [N, K]    nn.Linear layout, read as B = w_int8^T [K, N] via strides (no copy)
    w_scale : fp32  [N]       per output channel
    bias    : float [N] or None

``act="dynamic"`` (W8A8), one fused kernel::

    s[m]  = absmax_k |x[m, k]| / 127   (1.0 if 0)        # prologue, per row of the tile
    q     = clamp(round_half_even(x / s[m]), -127, 127)  # in registers, per K tile (as x * (1/s), below)
    acc   = sum_k int32(q[m, k]) * int32(w_int8[n, k])   # tl.dot(..., out_dtype=int32): exact
    y     = (fp32(acc) * s[m]) * w_scale[n] + bias[n]    # fused epilogue, same order as the reference

The quantization of ``x`` is the per-token rule of ``kernels/quantize.py``
(the contract of ``llmaccel/ops/quantize.py``), computed by the very
``@triton.jit`` helpers that kernel uses (``_scale_from_absmax``: a
correctly rounded ``absmax / 127``; ``_row_reciprocal``: one correctly
rounded ``1 / s`` per row, pre-scaled by a power of two for subnormal
scales; ``_quantize_values``: a product, a clamp to [-127, 127] and an exact
round-half-even). So ``s`` and ``q`` are bit-identical to
``llmaccel.quantize_per_token`` on the Triton backend, and the int32 core
equals ``q @ w_int8.T`` exactly. (The torch reference divides ``x / s`` in
float64; where the exact quotient lies within 2**-16 of a rounding tie, q
may differ from it by one step -- the latitude the quantize contract grants.)
Rows whose ``absmax / 127`` underflows to 0, and all-zero rows, get ``s = 1``
and ``q = 0``.

Each program owns a ``BLOCK_M x BLOCK_N`` tile of y and walks K twice:

1. prologue: load the ``[BLOCK_M, BLOCK_K]`` x tiles (any strides, fp32 /
   fp16 / bf16 upcast to fp32), keep an element-wise running ``|x|`` max,
   reduce it to the per-row absmax at the end, derive ``s``;
2. main loop: reload each x tile, quantize it in registers to int8, and feed
   it to the int8 ``tl.dot`` with the ``[BLOCK_K, BLOCK_N]`` weight tile;

then the fused epilogue. Trade-off against the former two launches (a
quantize kernel writing an int8 ``[M, K]`` q plus ``s [M]``, then a GEMM
reading them):

* saved: one kernel launch (matters at decode sizes, where each kernel runs
  for microseconds), the int8 ``[M, K]`` temporary (allocation, one write
  and one read of M*K bytes), and the serialization between the kernels;
* paid: x is read twice per program (prologue + main loop; the second read
  normally hits L2) in its float dtype (2-4 bytes per element instead of q's
  one), and every one of the ``N / BLOCK_N`` programs along a row of tiles
  re-reads and re-quantizes the same rows of x. The re-quantization is ALU
  work repeated ``N / BLOCK_N`` times, which is why it is a multiply, a
  clamp and a 2-instruction rounding per element rather than a division
  (~20 instructions on a GPU); per element of x it is amortized over
  ``BLOCK_N`` int8 MACs on the tensor cores. Whether that beats the two
  launches for large M*N*K on a GPU is not yet measured.

``int32`` accumulation is exact for K <= 131071 (the op layer enforces it).
The int32 ``[M, N]`` tile never leaves registers: the epilogue scales, adds
the bias and casts to the output dtype before the single store.

``act="weight_only"`` (W8A16 / W8A32)::

    acc = sum_k x[m, k] * float(w_int8[n, k])            # fp32 accumulator
    y   = acc * w_scale[n] + bias[n]

The weight is dequantized in registers: int8 -> float is exact in fp32, fp16
and bf16 alike (|w| <= 128), and since ``w_scale`` is per output channel it
factors out of the K-sum and is applied once in the epilogue. fp32 ``x`` uses
an IEEE fp32 ``tl.dot`` (``input_precision="ieee"``: TF32 would drop 13
mantissa bits of x); fp16/bf16 ``x`` feeds the tensor cores directly with the
weight cast to x's dtype (products are exact in fp32, accumulation is fp32).
Mathematically identical to ``x @ (w_int8 * w_scale[:, None]).T + bias``;
the rounding differs from the reference by a few fp32 ulps of the sum.

Tiling
------
Both GEMMs split y into ``BLOCK_M x BLOCK_N`` tiles on a 1-D grid with
"grouped ordering" (``GROUP_M`` rows of tiles visited column by column, for
L2 reuse of the weight panels), walk K in ``BLOCK_K`` steps with masked tail
loads (``other=0`` adds nothing), and store with a masked, fused epilogue.
Offsets are int64 before they meet strides, so huge or transposed operands do
not overflow address arithmetic. Every operand is addressed through runtime
strides: x, w and y may be any 2-D views (no copies).

Decode (small M) is a GEMV: the ``M/BLOCK_M x N/BLOCK_N`` tile grid is too
small to fill the GPU and each program would stream a long K. The weight-only
kernel therefore supports split-K: a second grid axis of ``SPLIT_K`` programs
per tile each reduces a contiguous range of K tiles into an fp32 partial
``[SPLIT_K, M, N]`` workspace, and a tiny epilogue kernel sums the partials
in a fixed order (deterministic: no atomics), scales, adds bias and casts.
``SPLIT_K`` is chosen by the launcher from M, N, K and the SM count (only when
M <= 16); the tile shape is autotuned.

On a GPU ``triton.autotune`` picks among a handful of configs keyed on
(M, N, K) (and SPLIT_K), including narrow-M configs for decode. Under
``TRITON_INTERPRET=1`` (CPU test suite) a single small config is used
(16 x 16 x 32) and the interpreter's "SM count" is pretended to be 4 so that
split-K is exercised by small test shapes too.

Input validation lives in ``llmaccel/ops/int8_linear.py``; the launcher
assumes it has been done.
"""

import math

import torch
import triton
import triton.language as tl

from ._interpret import INTERPRET as _INTERPRET
from ._tiling import gemm_tile
from .quantize import _abs_for_max, _quantize_values, _row_reciprocal, _scale_from_absmax


# --------------------------------------------------------------------------
# W8A8: per-token quantization of x fused into the int8 x int8 -> int32 GEMM
# --------------------------------------------------------------------------

@triton.jit
def _w8a8_dynamic_kernel(
    x_ptr, w_ptr, ws_ptr, b_ptr, y_ptr,
    M, N, K,
    stride_xm, stride_xk,
    stride_wn, stride_wk,
    stride_ws, stride_b,
    stride_ym, stride_yn,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    offs_m, offs_n, offs_k0, mask_m, mask_n = gemm_tile(M, N, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
    k_tiles = tl.cdiv(K, BLOCK_K)

    x_row = x_ptr + offs_m[:, None] * stride_xm  # [BLOCK_M, 1]
    w_col = w_ptr + offs_n[None, :] * stride_wn  # [1, BLOCK_N]: B[k, n] = w[n, k]

    # ---- prologue: per-row absmax -> scale ------------------------------------
    # Element-wise running max over the K tiles, one cross-lane reduction at the
    # end (max is exact and order-free, so this equals the quantize kernel's
    # absmax bit for bit). Masked lanes load 0, which never raises the max:
    # rows past M come out as all-zero rows (s = 1, q = 0) and are not stored.
    running = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for k in range(0, k_tiles):
        offs_k = k * BLOCK_K + offs_k0
        x = tl.load(x_row + offs_k[None, :] * stride_xk, mask=mask_m[:, None] & (offs_k < K)[None, :], other=0.0)
        running = tl.maximum(running, _abs_for_max(x.to(tl.float32)))
    xs = _scale_from_absmax(tl.max(running, axis=1))  # [BLOCK_M] fp32; K == 0 gives s = 1, y = bias
    xf, xinv = _row_reciprocal(xs)  # per row, so the loop multiplies instead of dividing

    # ---- main loop: quantize the x tile in registers, int8 dot ----------------
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k in range(0, k_tiles):
        offs_k = k * BLOCK_K + offs_k0
        mask_k = offs_k < K
        x = tl.load(x_row + offs_k[None, :] * stride_xk, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        # Same helper as kernels/quantize.py: q is that kernel's q, bit for bit.
        # Masked lanes are 0 -> q = 0, which adds nothing to the dot.
        a = _quantize_values(x.to(tl.float32), xf[:, None], xinv[:, None]).to(tl.int8)
        b = tl.load(w_col + offs_k[:, None] * stride_wk, mask=mask_k[:, None] & mask_n[None, :], other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)

    # ---- fused epilogue: the int32 tile never goes to memory -----------------
    ws = tl.load(ws_ptr + offs_n * stride_ws, mask=mask_n, other=0.0)
    y = acc.to(tl.float32) * xs[:, None] * ws[None, :]
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n * stride_b, mask=mask_n, other=0.0).to(tl.float32)
        y = y + bias[None, :]
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


# --------------------------------------------------------------------------
# Weight-only: float x, int8 w dequantized in registers, optional split-K
# --------------------------------------------------------------------------

@triton.jit
def _weight_only_kernel(
    x_ptr, w_ptr, ws_ptr, b_ptr, y_ptr, p_ptr,
    M, N, K,
    stride_xm, stride_xk,
    stride_wn, stride_wk,
    stride_ws, stride_b,
    stride_ym, stride_yn,
    HAS_BIAS: tl.constexpr,
    DOT_FP32: tl.constexpr,
    SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    offs_m, offs_n, offs_k0, mask_m, mask_n = gemm_tile(M, N, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
    pid_k = tl.program_id(1)

    x_row = x_ptr + offs_m[:, None] * stride_xm
    w_col = w_ptr + offs_n[None, :] * stride_wn

    # This program's contiguous range of K tiles (all of them when SPLIT_K == 1).
    k_tiles = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    k_begin = pid_k * per_split
    k_end = tl.minimum(k_begin + per_split, k_tiles)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(k_begin, k_end):
        offs_k = k * BLOCK_K + offs_k0
        mask_k = offs_k < K
        x = tl.load(x_row + offs_k[None, :] * stride_xk, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        w = tl.load(w_col + offs_k[:, None] * stride_wk, mask=mask_k[:, None] & mask_n[None, :], other=0)
        if DOT_FP32:
            acc = tl.dot(x.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
        else:
            # fp16/bf16 tensor cores; int8 -> fp16/bf16 is exact, accumulation is fp32.
            acc = tl.dot(x, w.to(x.dtype), acc)

    mask_mn = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K == 1:
        ws = tl.load(ws_ptr + offs_n * stride_ws, mask=mask_n, other=0.0)
        y = acc * ws[None, :]
        if HAS_BIAS:
            bias = tl.load(b_ptr + offs_n * stride_b, mask=mask_n, other=0.0).to(tl.float32)
            y = y + bias[None, :]
        y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
        tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=mask_mn)
    else:
        # Partials are a contiguous [SPLIT_K, M, N] fp32 workspace.
        p_ptrs = p_ptr + pid_k.to(tl.int64) * M * N + offs_m[:, None] * N + offs_n[None, :]
        tl.store(p_ptrs, acc, mask=mask_mn)


@triton.jit
def _split_k_epilogue_kernel(
    p_ptr, ws_ptr, b_ptr, y_ptr,
    MN, N,
    stride_ws, stride_b,
    stride_ym, stride_yn,
    HAS_BIAS: tl.constexpr,
    SPLIT_K: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < MN
    m = offs // N
    n = offs % N
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    p_ptrs = p_ptr + offs
    for _ in range(SPLIT_K):  # fixed order: deterministic
        acc += tl.load(p_ptrs, mask=mask, other=0.0)
        p_ptrs += MN  # partials are [SPLIT_K, M, N] contiguous; MN = M * N
    y = acc * tl.load(ws_ptr + n * stride_ws, mask=mask, other=0.0)
    if HAS_BIAS:
        y = y + tl.load(b_ptr + n * stride_b, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + m * stride_ym + n * stride_yn, y.to(y_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------

if _INTERPRET:
    # Triton's CPU interpreter: one small config, plain launches (no autotune).
    _META = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, GROUP_M=1)
    _w8a8 = _w8a8_dynamic_kernel
    _weight_only = _weight_only_kernel
else:
    _META = {}

    def _cfg(bm, bn, bk, warps, stages, group_m=8):
        return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m},
                             num_warps=warps, num_stages=stages)

    # int8 MMA eats K in chunks of 32: BLOCK_K 64/128 keeps tensor cores fed.
    # The fused kernel also holds (and pipelines) a float x tile of
    # BLOCK_M x BLOCK_K -- 4 bytes per element for fp32 x, 4x the int8 q tile it
    # replaces -- so the big tiles take BLOCK_K = 64 to stay within shared
    # memory and registers. Wide BLOCK_N cuts how many column programs
    # re-quantize the same rows of x (module docstring).
    # Registers: the largest accumulators (128 x 256 on 8 warps, 128 x 128 on 4
    # warps: 128 int32 registers per thread) leave room for a BLOCK_K = 32 x
    # tile only; with BLOCK_K = 64 they spilled (up to 120 B of stack per thread
    # for fp32 x on sm_80). Every config here compiles without spills for sm_80
    # and sm_90, bf16 and fp32 x: tests/test_triton_compile.py checks it.
    _W8A8_CONFIGS = [
        _cfg(128, 256, 32, 8, 3),
        _cfg(128, 128, 64, 8, 3),
        _cfg(128, 128, 32, 4, 4),
        _cfg(64, 256, 64, 8, 3),
        _cfg(64, 128, 64, 4, 4),
        _cfg(64, 64, 128, 4, 4),
        _cfg(32, 64, 128, 4, 4),
        _cfg(16, 64, 256, 4, 4),   # decode: narrow M, long K steps
        _cfg(16, 128, 128, 4, 4),
        _cfg(16, 256, 128, 8, 3),  # decode, wide N: fewer programs re-quantizing x
    ]
    _WEIGHT_ONLY_CONFIGS = [
        _cfg(128, 128, 32, 4, 4),
        _cfg(128, 64, 64, 4, 4),
        _cfg(64, 128, 64, 4, 4),
        _cfg(64, 64, 64, 4, 4),
        _cfg(32, 64, 64, 4, 4),
        _cfg(16, 64, 128, 4, 4),   # decode / split-K: narrow M, wide K
        _cfg(16, 128, 128, 4, 3),
        _cfg(16, 32, 256, 4, 4),
    ]
    _w8a8 = triton.autotune(configs=_W8A8_CONFIGS, key=["M", "N", "K"])(_w8a8_dynamic_kernel)
    _weight_only = triton.autotune(configs=_WEIGHT_ONLY_CONFIGS, key=["M", "N", "K", "SPLIT_K"])(_weight_only_kernel)


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda" and not _INTERPRET:
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: small, so that small test shapes exercise split-K


def _choose_split_k(M: int, N: int, K: int, device: torch.device) -> int:
    """SPLIT_K for the weight-only GEMM: > 1 only for decode-like M when the tile grid underfills the SMs."""
    if M > 16:
        return 1
    if _INTERPRET:
        block_n, min_k_per_split, max_split = 16, 32, 4
    else:
        block_n, min_k_per_split, max_split = 64, 512, 16
    tiles = triton.cdiv(N, block_n)
    split = min(max_split, _num_sms(device) // max(tiles, 1), triton.cdiv(K, min_k_per_split))
    return max(1, split)


def _launch(kernel, grid, args, meta, device):
    if device.type == "cuda":
        with torch.cuda.device(device):
            kernel[grid](*args, **meta)
    else:
        kernel[grid](*args, **meta)


def _tile_grid(M, N):
    def grid(META):
        return (triton.cdiv(M, META["BLOCK_M"]) * triton.cdiv(N, META["BLOCK_N"]),)

    return grid


def _store_dtype(out_dtype):
    """The dtype the kernels store y in.

    Triton's interpreter converts fp32 -> bf16 by truncating the mantissa (the
    GPU rounds to nearest even), so under the interpreter bf16 results are
    stored as fp32 and rounded by torch on the host. GPUs store bf16 directly.
    """
    return torch.float32 if (_INTERPRET and out_dtype == torch.bfloat16) else out_dtype


def _pad_k(t: torch.Tensor, kp: int) -> torch.Tensor:
    """``t [R, K]`` as a row-major ``[R, kp]`` buffer's first K columns (the rest zero), unless it already has
    unit column stride and a row stride that is a multiple of 16 with K itself one."""
    R, K = t.shape
    if K == kp and t.stride(1) == 1 and t.stride(0) % 16 == 0:
        return t
    buf = torch.zeros((R, kp), dtype=t.dtype, device=t.device)
    buf[:, :K] = t
    return buf


def w8a8_dynamic_linear(x2, w_int8, w_scale, bias):
    """``y [M, N]`` in x2's dtype: per-token quantization of ``x2 [M, K]`` and the W8A8 GEMM in one launch.

    K and the row strides reach the kernel as multiples of 16: an unaligned one is zero padded first
    (zero columns change neither a row's absmax nor the dot). Triton specializes on that divisibility,
    and the unaligned specialization loads x and w element by element and spills: 32 of its 40 compiles
    (every fp32-x config; 16-3600 B of stack per thread on sm_80 and sm_90, measured with
    tests/triton_resources.py), against none of the aligned ones.
    """
    M, K = x2.shape
    N = w_int8.shape[0]
    y = torch.empty((M, N), dtype=_store_dtype(x2.dtype), device=x2.device)
    if M == 0 or N == 0:
        return y.to(x2.dtype)
    kp = -(-K // 16) * 16
    x2, w_int8, K = _pad_k(x2, kp), _pad_k(w_int8, kp), kp
    b = bias if bias is not None else w_scale  # dummy pointer, never read
    args = (
        x2, w_int8, w_scale, b, y,
        M, N, K,
        x2.stride(0), x2.stride(1),
        w_int8.stride(0), w_int8.stride(1),
        w_scale.stride(0), b.stride(0),
        y.stride(0), y.stride(1),
    )
    _launch(_w8a8, _tile_grid(M, N), args, dict(HAS_BIAS=bias is not None, **_META), x2.device)
    return y.to(x2.dtype)


def weight_only_linear(x2, w_int8, w_scale, bias, split_k=None):
    """``y [M, N] = (x2 @ w_int8.T) * w_scale[None, :] + bias`` in x2's dtype; ``split_k`` overrides the heuristic.

    An unaligned K or row stride is zero padded first, as in :func:`w8a8_dynamic_linear` (the unaligned
    specialization spills 24-1360 B per thread in 12 of its 22 compiles; weights a model holds are
    normally aligned, so the copy is the rare case).
    """
    M, K = x2.shape
    N = w_int8.shape[0]
    y = torch.empty((M, N), dtype=_store_dtype(x2.dtype), device=x2.device)
    if M == 0 or N == 0:
        return y.to(x2.dtype)
    kp = -(-K // 16) * 16
    x2, w_int8, K = _pad_k(x2, kp), _pad_k(w_int8, kp), kp
    if split_k is None:
        split_k = _choose_split_k(M, N, K, x2.device)
    split_k = max(1, int(split_k))
    has_bias = bias is not None
    b = bias if has_bias else w_scale  # dummy pointer, never read
    partials = torch.empty((split_k, M, N), dtype=torch.float32, device=x2.device) if split_k > 1 else y
    args = (
        x2, w_int8, w_scale, b, y, partials,
        M, N, K,
        x2.stride(0), x2.stride(1),
        w_int8.stride(0), w_int8.stride(1),
        w_scale.stride(0), b.stride(0),
        y.stride(0), y.stride(1),
    )
    dot_fp32 = _INTERPRET or x2.dtype == torch.float32  # the interpreter has no bf16 arithmetic

    def grid(META):
        return (triton.cdiv(M, META["BLOCK_M"]) * triton.cdiv(N, META["BLOCK_N"]), split_k)

    _launch(_weight_only, grid, args, dict(HAS_BIAS=has_bias, DOT_FP32=dot_fp32, SPLIT_K=split_k, **_META),
            x2.device)
    if split_k > 1:
        BLOCK = 1024
        ep_args = (partials, w_scale, b, y, M * N, N, w_scale.stride(0), b.stride(0), y.stride(0), y.stride(1))
        _launch(_split_k_epilogue_kernel, (triton.cdiv(M * N, BLOCK),), ep_args,
                dict(HAS_BIAS=has_bias, SPLIT_K=split_k, BLOCK=BLOCK), x2.device)
    return y.to(x2.dtype)


def int8_linear(x, w_int8, w_scale, bias, act):
    """``y [..., N]`` for ``x [..., K]``: ``act`` is "dynamic" (W8A8) or "weight_only" (module docstring).

    Validation (dtypes, shapes, devices, act) is the caller's job (llmaccel/ops/int8_linear.py).
    """
    K = x.shape[-1]
    N = w_int8.shape[0]
    x2 = x.reshape(math.prod(x.shape[:-1]), K)  # not -1: K may be 0
    if act == "dynamic":
        y = w8a8_dynamic_linear(x2, w_int8, w_scale, bias)
    elif act == "weight_only":
        y = weight_only_linear(x2, w_int8, w_scale, bias)
    else:
        raise ValueError(f"llmaccel.int8_linear: unknown act {act!r}")
    return y.reshape(*x.shape[:-1], N)
