"""Triton N:M-sparse linear (2:4 first) for ``llmaccel.sparse_linear``'s ``layout="nm"``.

Contract: ``llmaccel/ops/sparse_linear.py`` (its torch reference is the truth).  The weight is
``NMPackedWeight``'s layout (``llmaccel/sparsity/nm_packed.py``): ``values [N, G*n]`` (float, or int8 with
fp32 per-row ``scale``), ``indices`` uint8 ``[N, ceil(G*n*b/8)]`` with a ``b``-bit column-within-group per
slot, LSB first.  Each program owns a ``BLOCK_M x BLOCK_N`` tile of ``y`` and walks K in ``BLOCK_K`` steps.
Per step it builds the dense weight tile in registers from the compressed data only::

    for column c of the tile (group g = c // m, position j = c % m) and row r:
        W[r, c] = sum over slots s < n of  (index(r, g*n + s) == j) * values[r, g*n + s]

(the n slot loads per column hit the same few bytes of ``values`` / ``indices``: the compressed tile is what
is read from memory), then ``acc += x_tile @ W_tile.T`` with ``tl.dot`` and fp32 accumulation (IEEE fp32 for
fp32 inputs).  Epilogue: ``y = acc * scale[r]`` (int8 values) ``+ bias[r]``, cast to x's dtype.  Tails are
masked: rows past M / N and columns past K read 0 (a padding slot's column is past K, so it is never used).
Split-K (decode on a GPU, where ``N / BLOCK_N`` tiles leave SMs idle): program ``(tile, s)`` sums the K steps
``s, s + SPLIT_K, ...`` into fp32 partials that the launcher adds in a fixed order before the epilogue.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._interpret import INTERPRET as _INTERPRET


@triton.jit
def _sparse_nm_kernel(
    x_ptr, v_ptr, i_ptr, s_ptr, b_ptr, y_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_vn, stride_in, stride_ym,
    NSLOT: tl.constexpr, MGROUP: tl.constexpr, BITS: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)  # split-K: this program sums K steps pid_k, pid_k + SPLIT_K, ...
    tiles_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid // tiles_n
    pid_n = pid % tiles_n
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    offs_k0 = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(pid_k * BLOCK_K, K, BLOCK_K * SPLIT_K):
        offs_k = k0 + offs_k0
        mask_k = offs_k < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        group = offs_k // MGROUP
        pos = offs_k % MGROUP
        wmask = mask_n[:, None] & mask_k[None, :]
        w = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for s in tl.static_range(NSLOT):
            slot = group * NSLOT + s                                          # [BLOCK_K]
            byte = tl.load(i_ptr + offs_n[:, None] * stride_in + (slot * BITS // 8)[None, :], mask=wmask, other=0)
            idx = (byte.to(tl.int32) >> ((slot * BITS) % 8)[None, :]) & ((1 << BITS) - 1)
            val = tl.load(v_ptr + offs_n[:, None] * stride_vn + slot[None, :], mask=wmask, other=0)
            w += tl.where(idx == pos[None, :], val.to(tl.float32), 0.0)
        if DOT_FP32:
            acc = tl.dot(x.to(tl.float32), tl.trans(w), acc, input_precision="ieee")
        else:
            acc = tl.dot(x, tl.trans(w).to(x.dtype), acc)
    if SPLIT_K > 1:  # fp32 partial sums [SPLIT_K, M, N]; the launcher adds them in a fixed order
        tl.store(y_ptr + pid_k * M * stride_ym + offs_m[:, None] * stride_ym + offs_n[None, :], acc,
                 mask=mask_m[:, None] & mask_n[None, :])
        return
    if HAS_SCALE:
        acc = acc * tl.load(s_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
    if HAS_BIAS:
        acc = acc + tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


def _split_k(M: int, N: int, K: int, block_n: int, block_k: int, device: torch.device) -> int:
    """Split K across programs when the output tiles alone cannot fill the GPU (decode: M <= 16, so one tile
    row of programs; N / 32 of them is a fraction of an H100/H200's 132 SMs x several programs each)."""
    if device.type != "cuda" or M > 16:
        return 1
    tiles = triton.cdiv(N, block_n)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(8, triton.cdiv(4 * sms, tiles), triton.cdiv(K, block_k)))


def sparse_nm_linear(x, values, indices, scale, bias, n: int, m: int, split_k: int | None = None):
    """``y [..., N] = x @ W.T + bias`` for the N:M packed ``W`` (module docstring); validation is the caller's.

    ``split_k``: programs per output tile along K (None: :func:`_split_k`'s heuristic).  Above 1 each writes
    fp32 partial sums that are added here in a fixed order (deterministic), then scaled and biased."""
    K = x.shape[-1]
    N = values.shape[0]
    x2 = x.reshape(-1, K)
    M = x2.shape[0]
    out_dtype = torch.float32 if (_INTERPRET and x.dtype == torch.bfloat16) else x.dtype
    y = torch.empty((M, N), dtype=out_dtype, device=x.device)
    if M == 0:
        return y.to(x.dtype).reshape(*x.shape[:-1], N)
    values = values if values.stride(-1) == 1 else values.contiguous()
    indices = indices if indices.stride(-1) == 1 else indices.contiguous()
    bits = 1 if m <= 2 else 2 if m <= 4 else 4 if m <= 16 else 8
    dummy = values
    sc = scale.contiguous() if scale is not None else dummy
    b = bias.contiguous() if bias is not None else dummy
    BLOCK_M, BLOCK_N, BLOCK_K = 16, 32, 32
    split = split_k if split_k is not None else _split_k(M, N, K, BLOCK_N, BLOCK_K, x.device)
    out = y if split == 1 else torch.empty((split, M, N), dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(M, BLOCK_M) * triton.cdiv(N, BLOCK_N), split)
    args = (x2, values, indices, sc, b, out, M, N, K, x2.stride(0), x2.stride(1), values.stride(0), indices.stride(0),
            N)
    meta = dict(NSLOT=n, MGROUP=m, BITS=bits, HAS_SCALE=scale is not None, HAS_BIAS=bias is not None,
                DOT_FP32=_INTERPRET or x.dtype == torch.float32, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
                SPLIT_K=split)
    if x.device.type == "cuda":
        with torch.cuda.device(x.device):
            _sparse_nm_kernel[grid](*args, **meta)
    else:
        _sparse_nm_kernel[grid](*args, **meta)
    if split > 1:
        acc = out[0]
        for i in range(1, split):
            acc = acc + out[i]
        if scale is not None:
            acc = acc * scale.to(torch.float32)
        if bias is not None:
            acc = acc + bias.to(torch.float32)
        y = acc
    return y.to(x.dtype).reshape(*x.shape[:-1], N)
