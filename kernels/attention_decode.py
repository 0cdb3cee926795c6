"""Split-KV (Flash-Decoding) attention: when to split the keys, and the kernel that merges the splits.

See "Split-KV decode" in ``kernels/attention.py`` for the math.
"""

import torch
import triton
import triton.language as tl

from ._interpret import INTERPRET as _INTERPRET

# Split-KV dispatch thresholds (GPU only; see attention_fwd).
_SPLIT_MAX_LQ = 16
_SPLIT_MIN_LK = 1024
_SPLIT_MIN_KEYS = 256  # keys per split, at least
MAX_SPLITS = 64  # the combine kernel holds a [next_pow2(n_splits), BLOCK_DV] tile


@triton.jit
def _attn_split_combine_kernel(
    acc_ws_ptr, m_ws_ptr, l_ws_ptr, o_ptr, lse_ptr,
    Hq, Lq, Dv, BH, N_SPLITS, exp_scale,
    stride_ob, stride_oh, stride_ol, stride_od,
    BLOCK_S: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    LN2: tl.constexpr = 0.6931471805599453
    row = tl.program_id(0).to(tl.int64)  # over B*Hq*Lq; lse is [B*Hq, Lq] contiguous
    bh = row // Lq
    i = row % Lq
    b = bh // Hq
    h = bh % Hq

    offs_s = tl.arange(0, BLOCK_S)
    s_ok = offs_s < N_SPLITS
    idx = offs_s.to(tl.int64) * BH * Lq + row
    m = tl.load(m_ws_ptr + idx, mask=s_ok, other=float("-inf"))
    l = tl.load(l_ws_ptr + idx, mask=s_ok, other=0.0)
    m_max = tl.max(m, 0)
    m_safe = tl.where(m_max == float("-inf"), 0.0, m_max)
    w = tl.math.exp2((m - m_safe) * exp_scale)  # splits with m == -inf (nothing attended) weigh 0
    l_tot = tl.sum(w * l, 0)

    offs_dv = tl.arange(0, BLOCK_DV).to(tl.int64)
    dv_ok = offs_dv < Dv
    acc = tl.load(acc_ws_ptr + idx[:, None] * Dv + offs_dv[None, :],
                  mask=s_ok[:, None] & dv_ok[None, :], other=0.0)
    o = tl.sum(acc * w[:, None], 0)
    has = l_tot > 0.0
    l_div = tl.where(has, l_tot, 1.0)
    o = o / l_div
    lse = tl.where(has, (m_safe * exp_scale + tl.math.log2(l_div)) * LN2, float("-inf"))
    tl.store(o_ptr + b * stride_ob + h * stride_oh + i * stride_ol + offs_dv * stride_od,
             o.to(o_ptr.dtype.element_ty), mask=dv_ok)
    tl.store(lse_ptr + row, lse)


def _sm_count(device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def auto_splits(bh: int, Lq: int, Lk: int, device) -> int:
    """Number of KV splits for the decode path (1 = plain kernel). Never splits under the interpreter."""
    if _INTERPRET or device.type != "cuda" or Lq > _SPLIT_MAX_LQ or Lk < _SPLIT_MIN_LK:
        return 1
    programs = bh * triton.cdiv(Lq, 16)
    sms = _sm_count(device)
    if programs >= sms:
        return 1
    splits = min(triton.cdiv(2 * sms, programs), Lk // _SPLIT_MIN_KEYS, MAX_SPLITS)
    return max(splits, 1)
