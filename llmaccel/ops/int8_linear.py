"""``llmaccel.int8_linear``: a Linear layer with an int8 weight.

Shapes::

    x       : float [..., K]       fp32 / fp16 / bf16 (output has x's dtype)
    w_int8  : int8  [N, K]         nn.Linear layout
    w_scale : fp32  [N]            per output channel:  W ~= w_int8 * w_scale[:, None]
    bias    : float [N] or None
    smooth  : fp32  [K] or None    SmoothQuant's unfolded per-input-channel factor (finite, > 0)
    activation : None, "gelu" (erf), "gelu_tanh" or "relu"
    residual: float [..., N] or None   added last: y = activation(...) + residual

Every mode first replaces x by ``x' = x.float() * (1 / smooth)`` when
``smooth`` is given: ``r = 1 / smooth`` is one fp32 division per channel
(correctly rounded, ``torch.reciprocal``), then one fp32 product per element
(the C++ kernel multiplies while it packs, the torch and Triton paths call
torch's ``*``, so all of them quantize the very same fp32 values and give the
same int8 codes).  A product, not ``x / smooth``: on AVX2 the per-element
division was 58 % of the int8 prologue's time (perf, MiniLM), and the two
differ by at most one fp32 rounding of x'.  The op ends
with ``y = activation(y)``, then ``y = y + residual`` (fp32, one rounding),
applied to the fp32 result before the cast to x's
dtype (``F.gelu`` / ``F.gelu(approximate="tanh")`` / ``F.relu`` on the torch
path; the C++ kernel evaluates it in its epilogue with its own erf / tanh,
csrc/activation.h, within a few fp32 ulps of torch's).  ``residual`` is a
transformer block's skip connection (BERT: ``LayerNorm(dense(h) + h_in)``):
the C++ kernel adds it in the epilogue while the tile is in registers, so
the separate add's pass over [M, N] (read two, write one) disappears; the
other backends add it after the product, as torch would.

Modes (``act``):

``"dynamic"`` (W8A8)::

    q, s = quantize_per_token(x)                       # q int8 [M, K], s fp32 [M]
    acc  = q @ w_int8.T                                # int32, exact
    y    = acc * s[:, None] * w_scale[None, :] + bias  # fp32 epilogue, cast to x.dtype

``"weight_only"`` (W8A16 / W8A32)::

    y = x @ (w_int8 * w_scale[:, None]).T + bias       # fp32 accumulation, cast to x.dtype

(The C++ AVX-512 VNNI unit's decode GEMV, M <= 2, carries each row of x as
a 24-bit integer, x = s * q with s = max|x| / (2^23 - 1), and sums q * w_int8
exactly in integers: its error against this formula is at most s / 2 per
element of x times the weights, about fp32's own rounding of the row's
largest element; csrc/int8_linear_wo_gemv_vnni.h.)

Backward (weights frozen, as when fine-tuning adapters or heads on a
quantized base): the activation quantization is treated as the identity
(straight-through), so for both modes::

    grad_x    = (g @ (w_int8 * w_scale[:, None])) * (1 / smooth)
    grad_bias = g summed over all leading dims

with ``g = grad_y * activation'(pre)``, ``pre`` the output without the
activation (recomputed in the backward when an activation is set).

``act="auto"`` lets the dispatcher pick the mode per call from M and the
hardware (see :func:`choose_mode`); ``explain()`` says which and why.
"""

from __future__ import annotations

import threading
import weakref
from typing import Callable

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from .. import backends
from .._memory import streamed_buffer
from .._tensor_version import version
from .._ext import ext
from ._checks import check_same_device, check_tensor, fail
from .int8_mm import MAX_K
from .quantize import FLOAT_DTYPES, quantize_per_token_reference
from ._cpp_views import view, view_or_none
from .prepared import call_prepared
from .spec import OpSpec, define

__all__ = ["int8_linear", "int8_linear_reference"]

OP = "int8_linear"
MODES = ("dynamic", "weight_only")
ACTIVATIONS = (None, "gelu", "gelu_tanh", "relu")


def _check_smooth(smooth, K: int, device) -> None:
    check_tensor(OP, "smooth", smooth, dtype=torch.float32, ndim=1)
    if smooth.shape[0] != K:
        fail(OP, f"smooth has {smooth.shape[0]} entries, expected one per input channel (K = {K})")
    if smooth.device != device:
        fail(OP, f"smooth is on {smooth.device} but x is on {device}")
    # One reduction over K values, once per smooth tensor and version (a layer's smooth_scale is checked on its
    # first call and again only after an in-place change): per call it cost ~100 us in a MiniLM forward.  Fake
    # and meta tensors (tracing, the op's fake) have no values to check; the op's body checks the real tensors
    # when it runs (and the C++ kernel checks them again).
    if smooth.device.type == "meta" or is_fake(smooth):
        return
    v = version(smooth)  # None: an inference tensor, checked on every call (llmaccel._tensor_version)
    hit = _smooth_checked.get(id(smooth))
    if v is not None and hit is not None and hit[0]() is smooth and hit[1] == v:
        return
    if not bool((torch.isfinite(smooth) & (smooth > 0)).all()):
        fail(OP, "smooth must be finite and > 0 everywhere (found NaN, inf, zero or a negative value)")
    if v is not None:
        key = id(smooth)
        _smooth_checked[key] = (weakref.ref(smooth, lambda _, key=key: _smooth_checked.pop(key, None)), v)


# smooth tensors found valid: id -> (weak reference, version counter); an entry leaves with its tensor.
_smooth_checked: dict[int, tuple[weakref.ref, int]] = {}


def _check(x, w_int8, w_scale, bias, act, smooth=None, activation=None, residual=None):
    """Validates the call; returns the arguments object every backend trusts."""
    check_tensor(OP, "x", x)
    if x.dtype not in FLOAT_DTYPES:
        fail(OP, f"x must be float32, float16 or bfloat16, got {x.dtype}", TypeError)
    check_tensor(OP, "w_int8", w_int8, dtype=torch.int8, ndim=2)
    check_tensor(OP, "w_scale", w_scale, dtype=torch.float32, ndim=1)
    if x.dim() < 1:
        fail(OP, "x must have at least one dimension (in_features last)")
    N, K = w_int8.shape
    if x.shape[-1] != K:
        fail(OP, f"x has {x.shape[-1]} features in its last dim but w_int8 is [N, K] = [{N}, {K}]")
    if w_scale.shape[0] != N:
        fail(OP, f"w_scale has {w_scale.shape[0]} entries, expected one per output channel ({N})")
    if bias is not None:
        check_tensor(OP, "bias", bias, ndim=1)
        if not bias.is_floating_point():
            fail(OP, f"bias must be a float tensor, got {bias.dtype}", TypeError)
        if bias.shape[0] != N:
            fail(OP, f"bias has {bias.shape[0]} entries, expected {N}")
        check_same_device(OP, x=x, w_int8=w_int8, w_scale=w_scale, bias=bias)
    else:
        check_same_device(OP, x=x, w_int8=w_int8, w_scale=w_scale)
    if act not in MODES + ("auto",):
        fail(OP, f"act must be one of {MODES + ('auto',)}, got {act!r}")
    if act == "dynamic" and K > MAX_K:
        fail(OP, f"K = {K} exceeds {MAX_K}: the int32 accumulator of act='dynamic' could overflow")
    if smooth is not None:
        _check_smooth(smooth, K, x.device)
    if activation not in ACTIVATIONS:
        fail(OP, f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if residual is not None:
        check_tensor(OP, "residual", residual)
        if not residual.is_floating_point():
            fail(OP, f"residual must be a float tensor, got {residual.dtype}", TypeError)
        want = (*x.shape[:-1], N)
        if tuple(residual.shape) != want:
            fail(OP, f"residual must have the output's shape {want}, got {tuple(residual.shape)}")
        if residual.device != x.device:
            fail(OP, f"residual is on {residual.device} but x is on {x.device}")
    return _make_args((x, w_int8, w_scale, bias, act, smooth, activation, residual))


def dequantize_weight(w_int8: Tensor, w_scale: Tensor) -> Tensor:
    """fp32 [N, K] = w_int8 * w_scale[:, None]."""
    return w_int8.to(torch.float32) * w_scale.unsqueeze(1)


def apply_activation(y: Tensor, activation) -> Tensor:
    """torch's float ``activation`` (None, "gelu", "gelu_tanh", "relu") of ``y``."""
    if activation is None:
        return y
    if activation == "gelu":
        return torch.nn.functional.gelu(y)
    if activation == "gelu_tanh":
        return torch.nn.functional.gelu(y, approximate="tanh")
    return torch.relu(y)


def int8_linear_reference(x: Tensor, w_int8: Tensor, w_scale: Tensor, bias, act: str, smooth=None,
                          activation=None, residual=None) -> Tensor:
    """Plain-PyTorch int8_linear (module docstring), fp32 math with an exact integer core."""
    K = x.shape[-1]
    x2 = x.reshape(x.shape[:-1].numel(), K)
    if smooth is not None:
        x2 = x2.to(torch.float32) * torch.reciprocal(smooth)  # fp32, as the kernels' prologue
    if act == "dynamic":
        q, s = quantize_per_token_reference(x2)
        # float64 holds every int32 partial sum of the int8 product exactly.
        acc = torch.matmul(q.to(torch.float64), w_int8.to(torch.float64).t()).to(torch.float32)
        y = acc * s.unsqueeze(1) * w_scale.unsqueeze(0)
    else:
        # Dequantized in blocks of output channels (~4 MiB of fp32 each): one temporary of the whole weight
        # (46 MB at 5632 x 2048) is a fresh mmap every call, and its page faults cost 5x the product itself
        # (measured on the 2-core SPR VM, M = 32: 45 ms against 8 ms for fp32 nn.Linear).
        xf = x2.to(torch.float32)
        rows = max(1, (1 << 20) // max(K, 1))
        N = w_int8.shape[0]
        y = torch.cat([torch.matmul(xf, dequantize_weight(w_int8[n0:n0 + rows], w_scale[n0:n0 + rows]).t())
                       for n0 in range(0, N, rows)], dim=1) if N > rows else \
            torch.matmul(xf, dequantize_weight(w_int8, w_scale).t())
    if bias is not None:
        y = y + bias.to(torch.float32)
    y = apply_activation(y, activation)
    if residual is not None:
        y = y + residual.reshape(y.shape).to(torch.float32)
    return y.to(x.dtype).reshape(*x.shape[:-1], w_int8.shape[0])


def choose_mode(x: Tensor, w_int8: Tensor) -> tuple[str, str]:
    """The mode ``act="auto"`` runs, and why.

    CPU: always W8A8.  The fused C++ kernel streams the int8 weight for small
    M and runs the int8 dot-product unit (4x fp32 throughput with VNNI) for
    large M.  Weight-only has to convert every weight byte to fp32 and is
    slower at every M measured (4096 x 4096, 2-core Zen 4; dynamic vs
    weight-only): M=1 0.25 vs 0.91 ms, M=16 0.89 vs 6.3 ms, M=512 25 vs
    145 ms (dequantize + MKL sgemm; the C++ weight-only kernel is used up to
    M=64).  CUDA: weight-only for M <= 16 (decode is weight-bandwidth-bound
    and skips the activation quantization pass), W8A8 above, where int8
    tensor cores double bf16 throughput.  The GPU crossover is a design
    estimate, not yet measured on a GPU.
    """
    M = x.numel() // max(x.shape[-1], 1)
    if x.device.type == "cuda":
        if M <= 16:
            return "weight_only", f"act='auto' -> 'weight_only' (CUDA, M={M} <= 16: weight-bandwidth-bound decode)"
        return "dynamic", f"act='auto' -> 'dynamic' (CUDA, M={M} > 16: int8 tensor cores)"
    return "dynamic", f"act='auto' -> 'dynamic' ({x.device.type}: W8A8 is the fastest mode at every M measured)"


def _prepare(args):
    if args.act != "auto":
        return args, None
    mode, why = choose_mode(args.x, args.w_int8)
    return args._replace(act=mode), why


def _setup_context(ctx, args, output):
    # With an activation the backward recomputes its input, so it needs x and bias as well.
    keep = (args.x, args.bias) if args.activation is not None else (None, None)
    ctx.save_for_backward(args.w_int8, args.w_scale, args.smooth, *keep)
    ctx.act, ctx.activation = args.act, args.activation
    ctx.x_dtype = args.x.dtype
    ctx.residual_dtype = args.residual.dtype if args.residual is not None else None
    ctx.bias_dtype = args.bias.dtype if args.bias is not None else None


def _backward(ctx, grad_y):
    w_int8, w_scale, smooth, x, bias = ctx.saved_tensors
    g = grad_y.to(torch.float32)
    if ctx.activation is not None:
        with torch.no_grad():
            pre = _op.call(x, w_int8, w_scale, bias, ctx.act, smooth, None).to(torch.float32)
        with torch.enable_grad():
            pre.requires_grad_(True)
            g, = torch.autograd.grad(apply_activation(pre, ctx.activation), pre, g)
    grad_x = torch.matmul(g, dequantize_weight(w_int8, w_scale))
    if smooth is not None:
        grad_x = grad_x * torch.reciprocal(smooth)
    grad_x = grad_x.to(ctx.x_dtype)
    grads = {"x": grad_x}
    if ctx.bias_dtype is not None:
        grads["bias"] = g.reshape(g.shape[:-1].numel(), g.shape[-1]).sum(0).to(ctx.bias_dtype)
    if ctx.residual_dtype is not None:  # y = ... + residual: its gradient is grad_y itself
        grads["residual"] = grad_y.to(ctx.residual_dtype)
    return grads


_op = define(OpSpec(
    name=OP,
    schema="(Tensor x, Tensor w_int8, Tensor w_scale, Tensor? bias, str act, Tensor? smooth=None, "
           "str? activation=None, Tensor? residual=None) -> Tensor",
    check=_check,
    fake=lambda args: args.x.new_empty((*args.x.shape[:-1], args.w_int8.shape[0])),
    prepare=_prepare,
))
_make_args = _op.pack
_op.autograd(_backward, _setup_context)
_op.implement("torch")(lambda args: int8_linear_reference(*args))


def prepared_int8_linear(layer, x: Tensor) -> Tensor | None:
    """``int8_linear(x, layer.weight, layer.weight_scale, layer.bias, act=layer.act, smooth=layer.smooth_scale,
    activation=layer.activation)`` through the layer's :class:`~llmaccel.ops.prepared.PreparedCall`, or None
    where the public road must run it.  No residual: a call with one takes the public road."""
    # The module's own dicts: each nn.Module.__getattr__ (buffers and parameters) cost ~1 us, 6 per call.
    b, p = layer._buffers, layer._parameters
    try:
        fixed = (b["weight"], b["weight_scale"], p["bias"], layer.act, b["smooth_scale"], layer.activation, None)
    except KeyError:  # a tensor re-registered as the other kind: the attribute lookup finds it either way
        fixed = (layer.weight, layer.weight_scale, layer.bias, layer.act, layer.smooth_scale, layer.activation,
                 None)
    return call_prepared(layer, _op, fixed, layer.in_features, x, max_rows=CPP_WEIGHT_ONLY_MAX_M)


@_op.public
def int8_linear(x: Tensor, w_int8: Tensor, w_scale: Tensor, bias: Tensor | None = None, *,
                act: str = "dynamic", smooth: Tensor | None = None, activation: str | None = None,
                residual: Tensor | None = None) -> Tensor:
    """``y = activation((x * (1 / smooth)) @ (w_int8 * w_scale[:, None]).T + bias) + residual`` with int8
    weights (module docstring for the modes, ``smooth``, ``activation`` and ``residual``).

    ``act="auto"`` is resolved per call inside the op (so also at run time
    under ``torch.compile``); ``llmaccel.backends.explain`` reports the choice.
    """
    if residual is None:  # torch.ops then sees the schema's default (an fx graph without the argument)
        return _op.call(x, w_int8, w_scale, bias, act, smooth, activation)
    return _op.call(x, w_int8, w_scale, bias, act, smooth, activation, residual)


# Packed (panel-layout) copies of int8 weights for the C++ kernel, derived
# on first use and cached per weight tensor; never saved in a state_dict.
# Keyed by the tensor's id with a weak reference that evicts the entry when
# the weight dies (tensors compare elementwise, so they cannot be dict keys),
# and invalidated by its version counter, so an in-place update of the weight
# (load_state_dict, copy_) repacks.
_packed_cache: dict[int, tuple[weakref.ref, int, Tensor]] = {}


# Serializes packing: request threads hitting a fresh weight at once (the
# kernels release the GIL, so they really run together) would otherwise each
# pack their own copy.  Hits never take the lock.
_pack_lock = threading.Lock()


def _cached_pack(w_int8: Tensor):
    v = version(w_int8)
    hit = _packed_cache.get(id(w_int8))
    if v is not None and hit is not None and hit[0]() is w_int8 and hit[1] == v:
        return hit[2]
    return None


def packed_weight_cpp(w_int8: Tensor) -> Tensor:
    """The C++ kernel's packed layout of ``w_int8`` [N, K] (groups of NR rows, K chunks interleaved)."""
    packed = _cached_pack(w_int8)
    if packed is not None:
        return packed
    with _pack_lock:
        packed = _cached_pack(w_int8)  # another thread may have packed it while we waited
        return packed if packed is not None else _pack(w_int8)


def _pack(w_int8: Tensor) -> Tensor:
    key = id(w_int8)
    N, K = w_int8.shape
    w = w_int8 if w_int8.stride(1) == 1 or K <= 1 else w_int8.contiguous()
    # Streamed in full by every decode step: huge pages (see llmaccel/_memory.py).
    packed = streamed_buffer(ext().int8_mm_packed_size("", N, K))
    ext().int8_mm_pack_b("", view(w), view(packed), torch.get_num_threads())
    v = version(w_int8)
    if v is not None:  # an inference tensor (no version counter) is packed again on every call
        ref = weakref.ref(w_int8, lambda _, key=key: _packed_cache.pop(key, None))
        _packed_cache[key] = (ref, v, packed)
    return packed


# Above this many rows the C++ weight-only kernel (fp32 FMA, int8 converted in
# registers) loses to dequantizing once and calling MKL's sgemm, which is what
# the torch path does (measured at M=512, 4096 x 4096: 190 vs 145 ms).
CPP_WEIGHT_ONLY_MAX_M = 64


def _cpp_check(args):
    if args.act == "weight_only":
        M = args.x.numel() // max(args.x.shape[-1], 1)
        if M > CPP_WEIGHT_ONLY_MAX_M:
            return (f"act='weight_only' with M={M} > {CPP_WEIGHT_ONLY_MAX_M}: dequantize + MKL sgemm (torch) is "
                    "faster than the C++ weight-only kernel there")
    return None


@_op.implement("cpp", check=_cpp_check)
def _int8_linear_cpp(args) -> Tensor:
    """csrc/ kernels: ``dynamic`` = fused W8A8 (quantize while packing x -> VNNI int32 core -> fp32
    epilogue) reading the weight in its packed panel layout (:func:`packed_weight_cpp`, one sequential
    stream per group of output channels, column sums precomputed); ``weight_only`` = fp32 FMA with the
    int8 weight converted in registers, or at decode on AVX-512 VNNI x as a 24-bit integer against the
    weight as stored (csrc/int8_linear_wo*.cpp).

    The kernels read fp32 activations; fp16/bf16 inputs are widened first and
    the fp32 result is rounded to x's dtype (two cheap passes over M x K and
    M x N next to the M x N x K product).
    """
    return _cpp_runner(*args[1:7])(args.x, args.residual)


def _cpp_runner(w_int8: Tensor, w_scale: Tensor, bias, act: str, smooth, activation,
                residual=None) -> Callable[..., Tensor]:
    """The C++ call with the weight-side arguments bound: ``run(x, residual=None)`` for any valid x of this
    layer.  Built per call on the public road; a :class:`~llmaccel.ops.prepared.PreparedCall` builds it once per
    layer (``_int8_linear_cpp.prepare``, whose fixed arguments end with residual=None: a residual is per call).
    The closure holds every tensor whose pointer it passes."""
    if residual is not None:
        raise AssertionError("int8_linear: internal: a residual is a per-call argument of run(), not a fixed one")
    N, K = w_int8.shape
    ws = w_scale if w_scale.is_contiguous() else w_scale.contiguous()
    if bias is not None:
        bias = bias if bias.dtype == torch.float32 and bias.is_contiguous() else bias.to(torch.float32).contiguous()
    # the weight side's views (csrc/tensor_view.h) built once; only x's and y's are built per call
    s_v, b_v = view(ws), view_or_none(bias)
    w = w_int8 if w_int8.stride(1) == 1 or K <= 1 else w_int8.contiguous()  # the binding takes contiguous rows
    w_v = view(w)
    if act == "dynamic":
        packed = packed_weight_cpp(w_int8)
        sm_t = None if smooth is None else (smooth if smooth.is_contiguous() else smooth.contiguous())
        kernel, act_name = ext().int8_linear_dynamic, activation or ""
        p_v, sm_v = view(packed), view_or_none(sm_t)

        def gemm(x2: Tensor, M: int, r2=None, keep=(w, packed, ws, bias, sm_t)) -> Tensor:
            y = torch.empty((M, N), dtype=torch.float32)
            r_v = None if r2 is None else (r2.data_ptr(), "float32", r2.shape, r2.stride())
            kernel((x2.data_ptr(), "float32", x2.shape, x2.stride()), w_v, p_v, s_v, b_v,
                   (y.data_ptr(), "float32", (M, N), (N, 1)), torch.get_num_threads(), "", sm_v, act_name, r_v)
            return y
        unfused_smooth = None
    else:
        kernel = ext().int8_linear_weight_only
        # the weight-only kernel has no prologue or epilogue hook: smooth and the activation run unfused
        unfused_smooth = None if smooth is None else torch.reciprocal(smooth)

        def gemm(x2: Tensor, M: int, r2=None, keep=(w, ws, bias)) -> Tensor:
            y = torch.empty((M, N), dtype=torch.float32)
            kernel((x2.data_ptr(), "float32", x2.shape, x2.stride()), w_v, s_v, b_v,
                   (y.data_ptr(), "float32", (M, N), (N, 1)), torch.get_num_threads())
            y = apply_activation(y, activation)
            return y if r2 is None else y.add_(r2)  # no epilogue hook here: the residual runs unfused

    def run(x: Tensor, residual: Tensor | None = None) -> Tensor:
        x2 = x.reshape(x.shape[:-1].numel(), K)
        if x2.dtype != torch.float32:
            x2 = x2.to(torch.float32)
        if unfused_smooth is not None:
            x2 = x2 * unfused_smooth
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        r2 = None
        if residual is not None:
            r2 = residual.reshape(x2.shape[0], N)  # a view where the strides allow, else a copy
            if r2.dtype != torch.float32:
                r2 = r2.to(torch.float32)
            if N > 1 and r2.stride(1) != 1:
                r2 = r2.contiguous()
        y = gemm(x2, x2.shape[0], r2)
        if x.dtype != torch.float32:
            y = y.to(x.dtype)
        return y.reshape(*x.shape[:-1], N)

    return run


_int8_linear_cpp.prepare = _cpp_runner


@_op.implement("triton", check=lambda args: backends.int8_dot_problem(args.x.device))
def _int8_linear_triton(args) -> Tensor:
    """kernels/int8_linear.py: one fused W8A8 kernel (per-token quantize prologue -> int8 tl.dot -> fp32
    epilogue), or the weight-only (split-K) GEMM.

    ``smooth``, ``activation`` and ``residual`` are not fused into the Triton kernels: this launcher multiplies
    x by ``1 / smooth`` in fp32 before the kernel (as every backend), applies the activation with torch on the
    kernel's fp32 output and adds the residual in fp32, then casts to x's dtype (the reference's order).
    """
    from ..kernels.int8_linear import int8_linear as triton_int8_linear

    x, w_int8, w_scale, bias, act, smooth, activation, residual = args
    if smooth is None and activation is None and residual is None:
        return triton_int8_linear(x, w_int8, w_scale, bias, act)
    xf = x.to(torch.float32)
    if smooth is not None:
        xf = xf * torch.reciprocal(smooth)
    y = apply_activation(triton_int8_linear(xf, w_int8, w_scale, bias, act), activation)
    if residual is not None:
        y = y + residual.to(torch.float32)
    return y.to(x.dtype)
