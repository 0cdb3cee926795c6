"""Triton block-sparse (BSR) linear for ``llmaccel.sparse_linear``'s ``layout="bsr"``.

Contract: ``llmaccel/ops/sparse_linear.py`` (its torch reference is the truth).  The weight is
``BSRWeight``'s layout (``llmaccel/sparsity/bsr.py``): ``values [nnzb, bh, bw]`` dense tiles (float, or int8
with fp32 per-row ``scale``), ``col_indices`` int32 ``[nnzb]``, ``crow_indices`` int64 ``[R + 1]`` with
``R = ceil(N / bh)``; tile ``t`` of tile row ``i`` covers ``W[i*bh : (i+1)*bh, c*bw : (c+1)*bw]``,
``c = col_indices[t]``, zero-padded at the edges.

One program owns ``BLOCK_M`` rows of ``x`` and one tile row (``bh`` outputs, padded to ``BLOCK_N``, a power
of two >= 16 so ``tl.dot`` applies) and walks only that row's stored tiles: the empty tiles cost nothing,
neither bytes nor FLOPs::

    acc[m, r] = sum over t in crow[i] .. crow[i+1]-1:  sum_j x[m, c_t*bw + j] * values[t, r, j]

with fp32 accumulation (IEEE fp32 ``tl.dot`` for fp32 inputs).  Epilogue: ``* scale[row]`` (int8 tiles),
``+ bias[row]``, cast to x's dtype, masked to rows < N.  Block heights and widths below 16 are padded in
registers (correct, but wasteful on a GPU: pick ``bh, bw >= 16`` there).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._interpret import INTERPRET as _INTERPRET


@triton.jit
def _sparse_bsr_kernel(
    x_ptr, v_ptr, col_ptr, crow_ptr, s_ptr, b_ptr, y_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_ym,
    BH: tl.constexpr, BW: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    tile_row = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_r = tl.arange(0, BLOCK_N)                      # row within the tile
    offs_j = tl.arange(0, BLOCK_K)                      # column within the tile
    rows = tile_row * BH + offs_r
    mask_m = offs_m < M
    mask_r = (offs_r < BH) & (rows < N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    start = tl.load(crow_ptr + tile_row)
    end = tl.load(crow_ptr + tile_row + 1)
    for t in range(start, end):
        c = tl.load(col_ptr + t).to(tl.int64)
        cols = c * BW + offs_j
        mask_j = (offs_j < BW) & (cols < K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + cols[None, :] * stride_xk,
                    mask=mask_m[:, None] & mask_j[None, :], other=0.0)
        w = tl.load(v_ptr + t * (BH * BW) + offs_r[:, None] * BW + offs_j[None, :],
                    mask=(offs_r < BH)[:, None] & (offs_j < BW)[None, :], other=0)
        if DOT_FP32:
            acc = tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc)
    if HAS_SCALE:
        acc = acc * tl.load(s_ptr + rows, mask=mask_r, other=0.0)[None, :]
    if HAS_BIAS:
        acc = acc + tl.load(b_ptr + rows, mask=mask_r, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_m[:, None] * stride_ym + rows[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_r[None, :])


def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def sparse_bsr_linear(x, values, col_indices, crow_indices, scale, bias, n_out: int):
    """``y [..., N] = x @ W.T + bias`` for the BSR ``W`` (module docstring); validation is the caller's."""
    K = x.shape[-1]
    x2 = x.reshape(-1, K)
    M = x2.shape[0]
    out_dtype = torch.float32 if (_INTERPRET and x.dtype == torch.bfloat16) else x.dtype
    y = torch.empty((M, n_out), dtype=out_dtype, device=x.device)
    bh, bw = values.shape[1], values.shape[2]
    rows = crow_indices.shape[0] - 1
    if M == 0 or rows == 0:
        return y.to(x.dtype).reshape(*x.shape[:-1], n_out)
    values = values.contiguous()
    cols = col_indices.contiguous()
    crow = crow_indices.contiguous()
    dummy = values
    sc = scale.contiguous() if scale is not None else dummy
    b = bias.contiguous() if bias is not None else dummy
    BLOCK_M = 16 if M <= 16 else 32 if M <= 64 else 64
    grid = (triton.cdiv(M, BLOCK_M), rows)
    args = (x2, values, cols, crow, sc, b, y, M, n_out, K, x2.stride(0), x2.stride(1), y.stride(0))
    meta = dict(BH=bh, BW=bw, HAS_SCALE=scale is not None, HAS_BIAS=bias is not None,
                DOT_FP32=_INTERPRET or x.dtype == torch.float32, BLOCK_M=BLOCK_M, BLOCK_N=_block(bh),
                BLOCK_K=_block(bw))
    if x.device.type == "cuda":
        with torch.cuda.device(x.device):
            _sparse_bsr_kernel[grid](*args, **meta)
    else:
        _sparse_bsr_kernel[grid](*args, **meta)
    return y.to(x.dtype).reshape(*x.shape[:-1], n_out)
