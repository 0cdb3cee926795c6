"""Launch helpers shared by the Triton attention forward and backward launchers.

Shape unpacking, mask strides and kind, the exp2 score scaling, dot precision, batch chunking for the CUDA grid.
"""

import math

import torch

from ._interpret import INTERPRET as _INTERPRET

_LOG2E = 1.4426950408889634
# CUDA grid axes 1 and 2 are limited to 65535 programs: B * Hq is chunked over the batch beyond it.
_MAX_GRID_YZ = 65535


def qkv_dims(q, k, v) -> tuple:
    """(B, Hq, Lq, D, Hkv, Lk, Dv) of 4-D q [B, Hq, Lq, D], k [B, Hkv, Lk, D], v [B, Hkv, Lk, Dv].

    The op layer validated them already; these cheap checks stay because tests call the launchers directly.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("llmaccel::attention: q, k and v must be 4-D [B, H, L, D]")
    B, Hq, Lq, D = q.shape
    Bk, Hkv, Lk, Dk = k.shape
    Dv = v.shape[3]
    if Bk != B or Dk != D or tuple(v.shape[:3]) != (B, Hkv, Lk):
        raise ValueError(f"llmaccel::attention: shape mismatch q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    return B, Hq, Lq, D, Hkv, Lk, Dv


def check_gqa(Hq: int, Hkv: int) -> None:
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"llmaccel::attention: Hq ({Hq}) must be a multiple of Hkv ({Hkv})")


def host_rounds(dtype: torch.dtype) -> bool:
    """The interpreter's fp32 -> bf16 cast truncates (a GPU rounds to nearest even): under
    TRITON_INTERPRET=1 bf16 results are written in fp32 and rounded by torch at the end."""
    return _INTERPRET and dtype == torch.bfloat16


def dot_fp32(dtype: torch.dtype) -> bool:
    """Whether tiles are upcast to fp32 before ``tl.dot``: fp32 inputs, and bf16 under the interpreter (it has
    no bf16 arithmetic); fp16 and bf16 on a GPU use the tensor cores directly."""
    if dtype == torch.float16:
        return False
    if dtype == torch.bfloat16:
        return _INTERPRET
    return True


def batch_chunks(B: int, Hq: int):
    """[b0, b1) batch ranges whose B * Hq fits the CUDA grid's axis 1 (the launchers slice views: no copies)."""
    step = max(1, min(B, _MAX_GRID_YZ // Hq))
    return [(b0, min(B, b0 + step)) for b0 in range(0, B, step)]


def on_device(device: torch.device, launch) -> None:
    """Run ``launch()`` with ``device`` current (CUDA launches go to the current device)."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            launch()
    else:
        launch()


def mask_strides(mask: torch.Tensor, shape) -> tuple:
    """Strides of ``mask`` broadcast to the 4-D ``shape`` (0 on broadcast dims)."""
    if mask.dim() > 4:
        raise ValueError(f"llmaccel::attention: attn_mask must have at most 4 dims, got {mask.dim()}")
    sizes = [1] * (4 - mask.dim()) + list(mask.shape)
    strides = [0] * (4 - mask.dim()) + list(mask.stride())
    out = []
    for size, stride, want in zip(sizes, strides, shape):
        if size == want and size != 1:
            out.append(stride)
        elif size == 1:
            out.append(0)
        else:
            raise ValueError(
                f"llmaccel::attention: attn_mask of shape {tuple(mask.shape)} does not broadcast to {tuple(shape)}")
    return tuple(out)


def launch_params(q, mask, scale, is_causal, causal_bottom_right, B, Hq, Lq, Lk, D):
    """What the forward and backward kernels share: the resolved scale, mask kind/argument/strides, score and
    exp scales, causal offset.

    Scores t satisfy exp(s) = 2^(exp_scale * t): the scale rides in the
    exponent unless a float mask (natural-log units) must be added to the
    scaled logits, or a non-positive scale would turn the running max of
    q . k into a min.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(D) if D > 0 else 1.0
    if mask is None:
        mask_kind, mask_arg, m_strides = 0, q, (0, 0, 0, 0)
    else:
        m_strides = mask_strides(mask, (B, Hq, Lq, Lk))
        if mask.dtype == torch.bool:
            mask_kind, mask_arg = 1, mask.view(torch.uint8)
        elif mask.is_floating_point():
            mask_kind, mask_arg = 2, mask
        else:
            raise ValueError(f"llmaccel::attention: attn_mask must be bool or float, got {mask.dtype}")
    scale_in_exp = mask_kind != 2 and scale > 0
    score_scale = 1.0 if scale_in_exp else float(scale)
    exp_scale = float(scale) * _LOG2E if scale_in_exp else _LOG2E
    causal_off = (Lk - Lq if causal_bottom_right else 0) if is_causal else 0
    return scale, mask_kind, mask_arg, m_strides, scale_in_exp, score_scale, exp_scale, causal_off
