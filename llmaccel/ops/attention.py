"""``llmaccel.attention``: fused scaled-dot-product attention (SDPA semantics, [B, H, L, D] layout).

Shapes::

    query : [B, Hq,  Lq, D ]   fp32 / fp16 / bf16 (key and value: the same dtype), any strides
    key   : [B, Hkv, Lk, D ]
    value : [B, Hkv, Lk, Dv]
    out   : [B, Hq,  Lq, Dv]   query's dtype
    lse   : [B, Hq,  Lq]       fp32

Math (the documented truth; :func:`attention_reference` computes it, in fp32)::

    g(h)    = h // (Hq // Hkv)                        # GQA: query head h reads kv head g(h)
    s[i, j] = scale * q[h, i] . k[g(h), j]  (+ attn_mask[i, j] when the mask is float)
    allowed(i, j) = attn_mask[i, j]                   (bool mask: True = attend)
                    and j <= i                        (is_causal, top-left aligned like SDPA)
                    and j <= i + (Lk - Lq)            (is_causal and causal_bottom_right: KV-cache decoding)
    lse[i]  = log(sum over allowed j of exp(s[i, j]))           (natural log; -inf when no j is allowed)
    p[i, j] = exp(s[i, j] - lse[i])  for allowed j, else 0
    out[i]  = sum_j dropout(p)[i, j] * v[g(h), j]                (0 for a fully masked row, never NaN)

``scale`` defaults to ``1 / sqrt(D)``.  The mask (bool, or any float dtype:
added to the scores) broadcasts to ``[B, Hq, Lq, Lk]`` like SDPA's (a 2-D
``[Lq, Lk]`` mask is fine); a float row that is -inf everywhere is a fully
masked row.  ``is_causal`` together with ``attn_mask`` raises, as in SDPA.
GQA (``Hq != Hkv``) needs ``enable_gqa=True`` and ``Hq % Hkv == 0``; K/V are
never repeated in memory.

Dropout (``dropout_p > 0``) follows SDPA: it is applied on every call with
``dropout_p > 0`` (pass 0 in eval), keeping each probability with chance
``1 - dropout_p`` and scaling kept ones by ``1 / (1 - dropout_p)``; lse is
that of the probabilities before dropout.  The keep mask comes from a seed
drawn from torch's default CPU generator, so results are random and
reproducible under ``torch.manual_seed`` (or pass ``dropout_seed``); backward
regenerates the same mask from that seed.  Only the ``torch`` backend implements dropout.

Backward (from the saved q, k, v, mask, out and lse) is its own op,
``torch.ops.llmaccel.attention_backward``, dispatched like every op
(``llmaccel.backends.explain("attention_backward", ...)`` says what runs and
why).  ``cpp`` (csrc/attention_bwd_driver.h, FlashAttention-2 style: delta =
rowsum(dO * O) - dlse, one pass over kv blocks for dK/dV and one over query
blocks for dQ; fp16/bf16 cast to fp32 and back) and ``triton``
(kernels/attention_backward.py ``attention_bwd``, the same two passes, in the inputs'
dtype with fp32 accumulation) run it when there is no dropout and no float
mask (whose gradient they do not produce).  The requested backend applies as
in the forward, except that a requested kernel which cannot run the backward
hands it to ``torch`` (the forward already ran there).  The dropout seed is an
argument of both ops (the public function draws it), so backward may run on
any thread.  ``torch`` runs plain PyTorch, chunked over queries so memory stays O(L)::

    P  = exp(S - lse)  (recomputed per chunk of queries, renormalized to row sums of 1), Pd = dropout(P)
    dV = Pd^T dO                        dP = dropout(dO V^T)
    dS = P * (dP - rowsum(P * dP) + dlse)   dmask = dS (float masks, summed over broadcast dims)
    dQ = dS K * scale                   dK = dS^T Q * scale     (dK, dV summed over each GQA group)

Backends: ``cpp`` (csrc/attention*.cpp; fp32 core, fp16/bf16 cast in and
out), ``triton`` (kernels/attention.py), ``torch`` (the reference).  Neither
kernel implements dropout yet, so ``dropout_p > 0`` runs on ``torch``.
``llmaccel.backends.explain("attention", q, k, v, attn_mask, dropout_p,
is_causal, scale, enable_gqa, causal_bottom_right)`` says which one runs.

Files: argument checks in ``attention_args.py``, the chunked reference
forward/backward in ``attention_reference.py``, the two ops (specs, backend
adapters, autograd, public function) here.
"""

from __future__ import annotations

import importlib
from typing import Optional

import torch
from torch import Tensor

from .._ext import ext
from ._checks import fail
from ._cpp_views import view, view_or_none
from .. import backends
from .attention_args import OP, _broadcasts_to, mask4, resolve_scale, validate
from .attention_reference import attention_reference  # noqa: F401  (public: llmaccel.attention_reference)
from .attention_reference import default_chunk, draw_seed, reference_backward, reference_forward
from .spec import OpSpec, define

__all__ = ["attention", "attention_reference"]


# --------------------------------------------------------------------------
# the forward op
# --------------------------------------------------------------------------

def _check(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, causal_bottom_right,
           dropout_seed=None):
    """Validates the call; returns the arguments object every backend trusts (``scale`` resolved to a float)."""
    validate(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, causal_bottom_right)
    if dropout_seed is not None and (not isinstance(dropout_seed, int) or isinstance(dropout_seed, bool)):
        fail(OP, f"dropout_seed must be an int or None, got {dropout_seed!r}", TypeError)
    return _pack_forward((query, key, value, attn_mask, dropout_p, is_causal, resolve_scale(scale, query.shape[3]),
                          enable_gqa, causal_bottom_right, dropout_seed))


def out_empty(B: int, Hq: int, Lq: int, Dv: int, dtype: torch.dtype, device) -> Tensor:
    """The forward's output [B, Hq, Lq, Dv], stored as [B, Lq, Hq, Dv] (strides (Lq*Hq*Dv, Dv, Hq*Dv, 1)).

    Why: what a transformer does next is ``out.transpose(1, 2).reshape(B, Lq, Hq * Dv)`` (the heads back
    into the hidden dim), which on this layout is a view; on a contiguous [B, Hq, Lq, Dv] it is a copy of
    the whole output per layer (6 layers of MiniLM at 32 x 128 tokens: 6 copies of 6 MiB).  torch's CPU
    SDPA returns this layout for the same reason.  Every backend's output is brought to it (``finish``)."""
    # empty_strided, not a transposed view: a custom op's output must not be a view (torch.compile
    # would take the view's base layout for the output's)
    return torch.empty_strided((B, Hq, Lq, Dv), (Lq * Hq * Dv, Dv, Hq * Dv, 1), dtype=dtype, device=device)


def _out_layout(outs):
    """Every backend's (out, lse) with out in :func:`out_empty`'s layout (a no-op where it already is)."""
    out, lse = outs
    B, Hq, Lq, Dv = out.shape
    if out.stride() == (Lq * Hq * Dv, Dv, Hq * Dv, 1) or out.numel() == 0:
        return out, lse
    laid = out_empty(B, Hq, Lq, Dv, out.dtype, out.device)
    laid.copy_(out)
    return laid, lse


def _fake(a):
    B, Hq, Lq, _ = a.query.shape
    return (out_empty(B, Hq, Lq, a.value.shape[3], a.query.dtype, a.query.device),
            a.query.new_empty((B, Hq, Lq), dtype=torch.float32))


_forward = define(OpSpec(
    name=OP,
    schema="(Tensor query, Tensor key, Tensor value, Tensor? attn_mask, float dropout_p, bool is_causal, "
           "float? scale, bool enable_gqa, bool causal_bottom_right, int? dropout_seed=None) -> (Tensor, Tensor)",
    check=_check,
    fake=_fake,  # fresh outputs, out in out_empty's layout: `finish` brings every adapter's there (opcheck tests it)
    finish=_out_layout,
))
_pack_forward = _forward.pack


def _no_dropout(a) -> Optional[str]:
    """Op-level limit shared by both kernels, forward and backward."""
    if a.dropout_p > 0:
        return "the fused attention kernels do not implement dropout yet (dropout_p > 0 runs on torch)"
    return None


@_forward.implement("torch")
def _attention_torch(a):
    return reference_forward(a.query, a.key, a.value, a.attn_mask, a.dropout_p, a.is_causal, a.scale,
                             a.causal_bottom_right, a.dropout_seed)


def _degenerate(query, key, value):
    """(out, lse) when there is nothing to compute (no queries, or no keys: every row fully masked), else None."""
    B, Hq, Lq, _ = query.shape
    Dv, Lk = value.shape[3], key.shape[2]
    if B * Hq * Lq == 0 or Lk == 0:
        out = out_empty(B, Hq, Lq, Dv, query.dtype, query.device).zero_()
        lse = torch.full((B, Hq, Lq), float("-inf"), dtype=torch.float32, device=query.device)
        return out, lse
    return None


def _cpp_mask(attn_mask: Optional[Tensor], shape) -> Optional[Tensor]:
    """The mask as the C++ kernels read it: expanded to [B, Hq, Lq, Lk] (stride 0 on broadcast dims, no copy),
    bool (nonzero = attend) or fp32 (added to the scores); None without a mask."""
    if attn_mask is None:
        return None
    m = attn_mask if attn_mask.dtype in (torch.bool, torch.float32) else attn_mask.to(torch.float32)
    return mask4(m).expand(*shape)


def _cpp_leading_args(a) -> tuple[tuple, tuple]:
    """The arguments every C++ attention entry (forward, backward) starts with, in its order: q, k, v as fp32
    views (no copy for fp32; llmaccel/ops/_cpp_views.py), the mask's view or None, the causal flags and the
    scale.  Also the tensors those views point into, which the caller keeps alive."""
    B, Hq, Lq, _ = a.query.shape
    # fp32 as is (a no-op .to still costs ~3 us of Python each: a decode step's attention call is ~40 us)
    q, k, v = (t if t.dtype == torch.float32 else t.to(torch.float32) for t in (a.query, a.key, a.value))
    m = _cpp_mask(a.attn_mask, (B, Hq, Lq, a.key.shape[2]))
    args = (view(q), view(k), view(v), view_or_none(m), bool(a.is_causal), bool(a.causal_bottom_right), a.scale)
    return args, (q, k, v, m)


@_forward.implement("cpp", check=_no_dropout)
def _attention_cpp(a):
    """csrc/attention*.cpp: fp32 core; fp16/bf16 are widened first and the output rounded back."""
    done = _degenerate(a.query, a.key, a.value)
    if done is not None:
        return done
    B, Hq, Lq, _ = a.query.shape
    lead, _alive = _cpp_leading_args(a)
    out = out_empty(B, Hq, Lq, a.value.shape[3], torch.float32, a.query.device)
    lse = torch.empty((B, Hq, Lq), dtype=torch.float32, device=a.query.device)
    ext().attention_fwd(*lead, view(out), view(lse), torch.get_num_threads())
    return (out if a.query.dtype == torch.float32 else out.to(a.query.dtype)), lse


def _triton_module():
    return importlib.import_module("llmaccel.kernels.attention")


def _triton_mask(a) -> Optional[Tensor]:
    """The mask passed to the Triton kernels: 4-D, stride 0 on broadcast dims."""
    if a.attn_mask is None:
        return None
    B, Hq, Lq, _ = a.query.shape
    return mask4(a.attn_mask).expand(B, Hq, Lq, a.key.shape[2])


@_forward.implement("triton", check=_no_dropout)
def _attention_triton(a):
    """kernels/attention.py: FlashAttention-style Triton forward."""
    done = _degenerate(a.query, a.key, a.value)
    if done is not None:
        return done
    return _triton_module().attention_fwd(a.query, a.key, a.value, _triton_mask(a), bool(a.is_causal),
                                          bool(a.causal_bottom_right), a.scale)


# --------------------------------------------------------------------------
# the backward op: (dq, dk, dv in the inputs' dtypes, dmask) from the saved forward
# --------------------------------------------------------------------------

def _check_backward(query, key, value, attn_mask, out, lse, grad_out, grad_lse, dropout_p, is_causal, scale,
                    causal_bottom_right, dropout_seed, need_mask_grad):
    validate(query, key, value, attn_mask, dropout_p, is_causal, scale, True, causal_bottom_right)
    B, Hq, Lq, _ = query.shape
    want = (B, Hq, Lq, value.shape[3])
    for name, t, shape in (("out", out, want), ("grad_out", grad_out, want), ("lse", lse, want[:3]),
                           ("grad_lse", grad_lse, want[:3])):
        if t is not None and tuple(t.shape) != shape:
            fail("attention_backward", f"{name} must have shape {list(shape)}, got {list(t.shape)}")
    if dropout_p > 0 and dropout_seed is None:
        fail("attention_backward", "dropout_p > 0 needs the forward's dropout_seed")
    if need_mask_grad and (attn_mask is None or not attn_mask.is_floating_point()):
        fail("attention_backward", "need_mask_grad=True needs a float attn_mask")
    return _pack_backward((query, key, value, attn_mask, out, lse, grad_out, grad_lse, dropout_p, is_causal,
                           resolve_scale(scale, query.shape[3]), causal_bottom_right, dropout_seed, need_mask_grad))


def _fake_backward(a):
    dmask = a.attn_mask.new_empty(a.attn_mask.shape) if a.need_mask_grad else a.query.new_empty((0,))
    return a.query.new_empty(a.query.shape), a.key.new_empty(a.key.shape), a.value.new_empty(a.value.shape), dmask


_backward_op = define(OpSpec(
    name="attention_backward",
    schema="(Tensor query, Tensor key, Tensor value, Tensor? attn_mask, Tensor out, Tensor lse, Tensor grad_out, "
           "Tensor? grad_lse, float dropout_p, bool is_causal, float? scale, bool causal_bottom_right, "
           "int? dropout_seed, bool need_mask_grad) -> (Tensor, Tensor, Tensor, Tensor)",
    check=_check_backward,
    fake=_fake_backward,
    finish=lambda grads: tuple(g.contiguous() for g in grads),
    follows_forward=True,
))
_pack_backward = _backward_op.pack


def _grads(a, dq: Tensor, dk: Tensor, dv: Tensor, dmask: Optional[Tensor] = None):
    """The backward op's outputs: gradients in their inputs' dtypes; dmask in the mask's shape, or empty."""
    if a.need_mask_grad:
        dmask = dmask.reshape(a.attn_mask.shape).to(a.attn_mask.dtype)
    else:
        dmask = a.query.new_empty((0,))
    return dq.to(a.query.dtype), dk.to(a.key.dtype), dv.to(a.value.dtype), dmask


@_backward_op.implement("torch")
def _attention_backward_torch(a):
    dq, dk, dv, dmask = reference_backward(
        a.query, a.key, a.value, a.attn_mask, a.out, a.lse, a.grad_out, a.grad_lse, a.dropout_p, a.is_causal,
        a.scale, a.causal_bottom_right, a.dropout_seed,
        default_chunk(a.query.shape[0], a.query.shape[1], a.key.shape[2]),  # the forward's chunks: same dropout
        a.need_mask_grad)
    return _grads(a, dq, dk, dv, dmask)


def _fused_backward_problem(a) -> Optional[str]:
    """What the fused backward kernels (C++ and Triton) cannot do."""
    if a.attn_mask is not None and a.attn_mask.dtype != torch.bool:
        return "the fused attention backward kernels take no float mask (its gradient is computed in torch)"
    return _no_dropout(a)


@_backward_op.implement("cpp", check=_fused_backward_problem)
def _attention_backward_cpp(a):
    """csrc/attention*.cpp's fused backward; fp32 core (fp16/bf16 widened in, gradients rounded back)."""
    lead, _alive = _cpp_leading_args(a)
    of, gf = a.out.to(torch.float32), a.grad_out.to(torch.float32)  # no copy for fp32; strides passed through
    lsef = a.lse.to(torch.float32).contiguous()
    dl = a.grad_lse.to(torch.float32).contiguous() if a.grad_lse is not None else None
    dq, dk, dv = (torch.empty(t.shape, dtype=torch.float32, device=t.device) for t in (a.query, a.key, a.value))
    ext().attention_bwd(*lead, view(of), view(lsef), view(gf), view_or_none(dl), view(dq), view(dk), view(dv),
                        torch.get_num_threads())
    return _grads(a, dq, dk, dv)


@_backward_op.implement("triton", check=_fused_backward_problem)
def _attention_backward_triton(a):
    """kernels/attention_backward.py: the fused backward, in the inputs' dtype with fp32 accumulation."""
    dq, dk, dv = _triton_module().attention_bwd(a.query, a.key, a.value, _triton_mask(a), bool(a.is_causal),
                                                bool(a.causal_bottom_right), a.scale, a.out, a.lse,
                                                a.grad_out.to(a.out.dtype), a.grad_lse)
    return _grads(a, dq, dk, dv)


# --------------------------------------------------------------------------
# autograd and the public function
# --------------------------------------------------------------------------

def _setup_context(ctx, a, output):
    out, lse = output
    ctx.save_for_backward(a.query, a.key, a.value, a.attn_mask, out, lse)
    ctx.args = (a.dropout_p, a.is_causal, a.scale, a.causal_bottom_right, a.dropout_seed)
    ctx.mask_is_float = a.attn_mask is not None and a.attn_mask.is_floating_point()


def _backward(ctx, grad_out, grad_lse):
    query, key, value, attn_mask, out, lse = ctx.saved_tensors
    dropout_p, is_causal, scale, causal_bottom_right, seed = ctx.args
    if dropout_p > 0 and seed is None:
        raise NotImplementedError("llmaccel.attention: backward with dropout_p > 0 needs the forward's dropout_seed "
                                  "(llmaccel.attention passes one; a direct torch.ops call must too)")
    need_mask_grad = ctx.mask_is_float and ctx.needs_input_grad[3]
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv, dmask = _backward_op.call(query, key, value, attn_mask, out, lse, grad_out, grad_lse, dropout_p,
                                          is_causal, scale, causal_bottom_right, seed, need_mask_grad)
    return {"query": dq, "key": dk, "value": dv, "attn_mask": dmask if need_mask_grad else None}


_forward.autograd(_backward, _setup_context)


# --------------------------------------------------------------------------
# the direct CPU road (decode-sized calls)
# --------------------------------------------------------------------------

def _direct_cpu(query, key, value, attn_mask, is_causal, scale, enable_gqa, causal_bottom_right):
    """``(out, lse)`` from the C++ kernel without the op road's full check and backend selection, or None
    when the call must take the op road.

    Why: at decode a call computes little (one query row per head over the cache) and the op road's Python
    (the full argument check, the custom-op boundary test, the dispatcher's walk over the backends, ~50 us
    with warm caches on the 2-core SPR VM) cost more than the kernel; a decode step of an 8-layer model pays
    it cold, where transformers' SDPA path paid about half.  What runs is unchanged: exactly where the
    dispatcher would pick ``cpp`` (backend request "auto", CPU tensors, the extension loaded, no dropout;
    tests/test_attention_direct.py checks ``explain()`` agrees), for plain fp32 tensors whose shapes pass
    the checks below, which imply everything :func:`~llmaccel.ops.attention_args.validate` checks.  Anything
    else (another dtype, a shape the op would reject, autograd, tracing, the profiler, a tensor subclass)
    returns None and the op road runs (and raises its usual error)."""
    if torch.compiler.is_compiling():  # traced code takes the op road (one node in the graph)
        return None
    T = Tensor
    if type(query) is not T or type(key) is not T or type(value) is not T:
        return None
    f32 = torch.float32
    if query.dtype is not f32 or key.dtype is not f32 or value.dtype is not f32:
        return None
    if not (query.is_cpu and key.is_cpu and value.is_cpu) or query.is_nested or key.is_nested or value.is_nested:
        return None
    if query.layout is not torch.strided or key.layout is not torch.strided or value.layout is not torch.strided:
        return None
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        return None
    B, Hq, Lq, D = query.shape
    Bk, Hkv, Lk, Dk = key.shape
    Bv, Hv, Lv, _ = value.shape
    if Bk != B or Dk != D or Bv != B or Hv != Hkv or Lv != Lk:
        return None
    if Hq != Hkv and (not enable_gqa or Hkv == 0 or Hq % Hkv != 0):
        return None
    if causal_bottom_right and not is_causal:
        return None
    tensors = (query, key, value)
    if attn_mask is not None:
        if (type(attn_mask) is not T or attn_mask.dtype not in (torch.bool, f32) or not attn_mask.is_cpu
                or attn_mask.is_nested or attn_mask.layout is not torch.strided or is_causal
                or not _broadcasts_to(tuple(attn_mask.shape), (B, Hq, Lq, Lk))):
            return None
        tensors = (query, key, value, attn_mask)
    if backends.current() != "auto" or backends.cpp_device_problem(query.device) is not None:
        return None
    if backends._op_boundary_needed(tensors):
        return None
    a = _pack_forward((query, key, value, attn_mask, 0.0, bool(is_causal), resolve_scale(scale, D),
                       bool(enable_gqa), bool(causal_bottom_right), None))
    return _attention_cpp(a)


@_forward.public
def attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor] = None, dropout_p: float = 0.0,
              is_causal: bool = False, scale: Optional[float] = None, enable_gqa: bool = False, *,
              causal_bottom_right: bool = False, return_lse: bool = False, dropout_seed: Optional[int] = None):
    """Scaled-dot-product attention with ``F.scaled_dot_product_attention``'s arguments and semantics.

    ``query`` [B, Hq, Lq, D], ``key`` [B, Hkv, Lk, D], ``value`` [B, Hkv, Lk, Dv] -> ``out`` [B, Hq, Lq, Dv];
    with ``return_lse=True`` also ``lse`` (fp32 [B, Hq, Lq], natural-log log-sum-exp of the scores; -inf for
    fully masked rows).  ``causal_bottom_right=True`` aligns the causal mask to the end of the keys (query i
    sees keys j <= i + Lk - Lq: KV-cache decoding).  ``dropout_seed`` fixes the dropout mask (default: drawn
    from torch's default generator).  Runs ``torch.ops.llmaccel.attention`` (so it traces under
    ``torch.compile``); the backend follows :mod:`llmaccel.backends`; the module docstring has the math.
    """
    # Tensors are validated in the op's body; bad scalars are caught here, before the schema would.
    if not isinstance(dropout_p, (int, float)) or isinstance(dropout_p, bool):
        fail(OP, f"dropout_p must be a float in [0, 1), got {dropout_p!r}", TypeError)
    if scale is not None and (not isinstance(scale, (int, float)) or isinstance(scale, bool)):
        fail(OP, f"scale must be a float or None, got {scale!r}", TypeError)
    if dropout_p == 0:
        direct = _direct_cpu(query, key, value, attn_mask, is_causal, scale, enable_gqa, causal_bottom_right)
        if direct is not None:
            return direct if return_lse else direct[0]
    if dropout_p > 0 and dropout_seed is None and not torch.compiler.is_compiling():
        dropout_seed = draw_seed()  # an argument of the op, so its backward replays the mask on any thread
    out, lse = _forward.call(query, key, value, attn_mask, float(dropout_p), bool(is_causal),
                             None if scale is None else float(scale), bool(enable_gqa), bool(causal_bottom_right),
                             dropout_seed)
    return (out, lse) if return_lse else out
