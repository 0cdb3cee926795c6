"""Triton int8 x int8 -> int32 matrix multiplication.

Motivation
----------
Weight/activation int8 quantisation (W8A8) halves memory traffic compared with
fp16 and lets the GPU use its int8 tensor-core paths (IMMA on Ampere, integer
wgmma on Hopper), which have roughly twice the peak throughput of fp16. The
quantised GEMM itself must be *exact*: all scaling/dequantisation happens
afterwards on the int32 result, so this kernel does no rounding at all.

Math
----
Given ``A`` int8 of shape ``[M, K]`` and ``B`` int8 of shape ``[K, N]`` (any
strides, e.g. ``B`` may be ``W.t()`` for a row-major ``[N, K]`` weight ``W``)::

    C[m, n] = sum_{k=0}^{K-1} int32(A[m, k]) * int32(B[k, n])      (C is int32)

Each product lies in [-16256, 16384], so the accumulation is exact in int32 as
long as ``K * 16384 < 2**31``, i.e. K up to ~131k, which covers every realistic
hidden size. (Beyond that the int32 result may overflow; not supported.)

Tiling
------
The output is split into ``BLOCK_M x BLOCK_N`` tiles, one Triton program per
tile. Each program walks the K dimension in ``BLOCK_K`` steps, loading a
``BLOCK_M x BLOCK_K`` tile of A and a ``BLOCK_K x BLOCK_N`` tile of B and
accumulating ``tl.dot(a, b, out_dtype=tl.int32)`` into an int32 register
accumulator. Tails on M, N and K are handled with masked loads (``other=0``,
which contributes nothing to the sum) and a masked store.

Programs are launched on a 1-D grid and remapped with "grouped ordering":
``GROUP_M`` consecutive rows of tiles are visited column by column, so that
programs running concurrently share the same A row-panels and B column-panels
in L2 instead of streaming all of B for every row of tiles.

Address arithmetic is done in int64 (row/column/k offsets are cast before they
are multiplied by strides) so that tensors with more than 2**31 elements, or
large strides from transposed views, do not overflow.

Under ``TRITON_INTERPRET=1`` (Triton's CPU interpreter, used by the CPU test
suite) a single small config is used and inputs may be CPU tensors. Otherwise
``triton.autotune`` picks among a handful of tensor-core friendly configs,
keyed on (M, N, K).

Input validation (dtype, rank, shape agreement, device) lives in
``llmaccel/ops/int8_mm.py``; the launcher here assumes it has been done.
"""

import torch
import triton
import triton.language as tl

from ._interpret import INTERPRET as _INTERPRET
from ._tiling import gemm_tile


@triton.jit
def _int8_mm_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    stride_cm,
    stride_cn,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # ---- this program's tile, grouped order (L2 reuse), int64 offsets -------
    offs_m, offs_n, offs_k0, mask_m, mask_n = gemm_tile(M, N, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)

    # Row part of A addresses and column part of B addresses are loop-invariant.
    a_row = a_ptr + offs_m[:, None] * stride_am  # [BLOCK_M, 1]
    b_col = b_ptr + offs_n[None, :] * stride_bn  # [1, BLOCK_N]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        offs_k = k * BLOCK_K + offs_k0  # int64
        mask_k = offs_k < K
        a = tl.load(
            a_row + offs_k[None, :] * stride_ak,
            mask=mask_m[:, None] & mask_k[None, :],
            other=0,
        )
        b = tl.load(
            b_col + offs_k[:, None] * stride_bk,
            mask=mask_k[:, None] & mask_n[None, :],
            other=0,
        )
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)

    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc, mask=mask_m[:, None] & mask_n[None, :])


if _INTERPRET:
    # Triton's CPU interpreter: one small config, plain launch (no autotune).
    _INTERPRET_META = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, GROUP_M=1)
    _kernel = _int8_mm_kernel
else:
    _INTERPRET_META = {}

    def _cfg(bm, bn, bk, warps, stages, group_m=8):
        return triton.Config(
            {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m},
            num_warps=warps,
            num_stages=stages,
        )

    # int8 MMA consumes K in chunks of 32, so BLOCK_K of 64/128 keeps the
    # tensor cores fed; shared-memory use stays <= 128 KB for every entry
    # (fits Ampere's 164 KB and Hopper's 228 KB). The first three are Hopper
    # only: on Ampere they spill registers (config_fits, _prune).
    _CONFIGS = [
        _cfg(128, 256, 64, 8, 3),
        _cfg(256, 128, 64, 8, 3),
        _cfg(128, 128, 64, 4, 4),
        _cfg(128, 128, 128, 8, 3),
        _cfg(64, 128, 128, 4, 4),
        _cfg(128, 64, 128, 4, 4),
        _cfg(64, 64, 128, 4, 5),
        _cfg(32, 64, 128, 4, 5),  # small-M (decode-like) shapes
    ]

    def _prune(configs, named_args, **kwargs):
        """The configs that compile without register spills on this GPU (:func:`config_fits`)."""
        a = named_args.get("a_ptr")
        major = 9
        if isinstance(a, torch.Tensor) and a.is_cuda:
            major = torch.cuda.get_device_capability(a.device)[0]
        return [c for c in configs if config_fits(c.kwargs, c.num_warps, major)] or configs

    _kernel = triton.autotune(configs=_CONFIGS, key=["M", "N", "K"],
                              prune_configs_by={"early_config_prune": _prune})(_int8_mm_kernel)


def config_fits(kwargs: dict, num_warps: int, major: int) -> bool:
    """Whether an autotune config compiles without register spills for compute capability ``major``.

    On Ampere (sm_8x, ``mma.sync``) an int32 accumulator of 128 registers per thread (128 x 256 or
    256 x 128 on 8 warps, 128 x 128 on 4) spills 224-608 bytes per thread whatever BLOCK_K; 64 per
    thread does not. Hopper's ``wgmma`` takes those tiles without spilling (measured with Triton 3.9's
    ptxas: tests/test_triton_compile.py).
    """
    acc_regs = kwargs["BLOCK_M"] * kwargs["BLOCK_N"] // (32 * num_warps)
    return major >= 9 or acc_regs <= 64


def int8_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return ``a @ b`` as int32 for int8 ``a`` [M, K] and int8 ``b`` [K, N].

    Arbitrary strides are supported (no copies are made). Validation of dtype,
    rank, shapes and devices is the caller's job (see llmaccel/ops/int8_mm.py).
    """
    M, K = a.shape
    N = b.shape[1]
    if K == 0:
        return torch.zeros((M, N), dtype=torch.int32, device=a.device)
    out = torch.empty((M, N), dtype=torch.int32, device=a.device)
    if M == 0 or N == 0:
        return out

    def grid(META):
        return (triton.cdiv(M, META["BLOCK_M"]) * triton.cdiv(N, META["BLOCK_N"]),)

    args = (
        a, b, out,
        M, N, K,
        a.stride(0), a.stride(1),
        b.stride(0), b.stride(1),
        out.stride(0), out.stride(1),
    )
    if a.is_cuda:
        with torch.cuda.device(a.device):
            _kernel[grid](*args, **_INTERPRET_META)
    else:
        _kernel[grid](*args, **_INTERPRET_META)
    return out
