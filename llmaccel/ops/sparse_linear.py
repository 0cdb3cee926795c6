"""``llmaccel.sparse_linear``: a Linear layer whose weight is pruned and stored compressed.

Math (``W`` = the pruned dense weight ``[N_out, K]`` the compressed fields stand for, i.e. the format's
``to_dense()``; int8 formats: ``q * scale[:, None]``)::

    y = x @ W.T + bias                  x [..., K] -> y [..., N_out], in x's dtype

The weight travels as plain tensors (``sparse_linear_layouts``): ``values``, ``index``, ``offsets``,
``scale``, ``layout`` (``"nm"``, ``"bitmap"``, ``"bsr"``) and ``meta``; from a format object::

    y = llmaccel.sparse_linear(x, *llmaccel.sparse_linear_fields(packed), bias)

``act`` (int8 values only) says what happens to the activations:

* ``"none"`` (default): x stays float; the int8 values are dequantized (weight-only int8).
* ``"dynamic"`` (W8A8, ``Int8Linear``'s default mode): each row of x is quantized per token like
  ``llmaccel.quantize_per_token`` (``sx = absmax / 127``, codes in [-127, 127]) and::

      y = float(xq @ q.T) * sx[:, None] * scale[None, :] + bias      (the int sum exact)

  so the C++ N:M kernel multiplies int8 by int8 (``vpmaddubsw``) and streams 0.63 bytes per weight for 2:4.
  The gradient with respect to x is straight-through (``G @ W``), as ``Int8Linear``'s.

Backends:

* ``torch``: the reference, the documented truth: rebuild the format object (its constructor checks every
  field), expand it to dense and ``F.linear`` (``llmaccel.sparsity.sparse_linear_reference``).  Every layout.
* ``cpp``: fp32 or int8 values, x fp32 (fp16 / bf16 widened in, the result rounded back); ``layout="nm"`` and
  ``"bitmap"``.  Per call it takes a route (``sparse_linear_routes``, from measured crossovers against dense
  sgemm; ``explain`` names it): for N:M, the small-M kernel (csrc/sparse_nm*.cpp: streams the compressed
  values and index bits, expands in registers) up to its crossover, then the large-M kernel
  (csrc/sparse_nm_large*.cpp: x packed into transposed panels, the weight decoded once per call, n/m of a
  dense GEMM's FMAs); for bitmap, the bitmap kernel (csrc/sparse_bitmap*.cpp: streams the bitmap and the
  values, expands each bitmap byte in registers; raises ``ValueError`` where a row's bitmap popcount
  disagrees with the offsets) up to its crossover, or at high sparsity and few rows the same weight's
  column-index form (``sparsity.cpu_bitmap_index``: a uint16 column per kept value, derived once and cached;
  work per kept value instead of per bitmap byte); past them the weight expanded to dense fp32 once in C++
  (csrc/sparse_expand.cpp) and ``F.linear``.
  ``layout="bsr"``: the block-sparse kernel at any M (csrc/sparse_bsr*.cpp, ``llmaccel.sparsity.bsr_linear_cpp``:
  kept tiles only, a dense fp32 micro-kernel on each; fp32 or int8 tiles).
  ``act="dynamic"``: the N:M route runs ``sparse_nm_i8_linear`` up to its own crossover (x quantized inside,
  int8 x int8, exact int32 sums; csrc/sparse_nm_avx2.cpp); the other routes run on the dequantized codes
  ``xq * sx`` (same math, fp32 rounding).
* ``triton``: ``kernels/sparse_nm.py`` for ``layout="nm"`` (float or int8 values): loads the compressed
  values and index bits of a tile, expands them in registers, ``tl.dot`` with fp32 accumulation;
  ``kernels/sparse_bsr.py`` for ``layout="bsr"``: walks only a tile row's stored tiles.

The op checks shapes, dtypes and devices on every call, but not the data (per-call cost): the torch path
checks every field when it rebuilds the format; the kernels trust them (``SparseLinear`` checks them when it is
built and when a state_dict is loaded).  A corrupt index there gives a wrong result, never a read outside the
tensors (the kernels only compare indices).  Non-finite x: the kernels never read x at a pruned column, the
torch path multiplies it by the stored 0, so an inf there gives NaN on torch only.

Autograd (the derivative of the math above, run by the backward op ``sparse_linear_backward``, dispatched
like every op: torch (the reference) and cpp (the weight expanded in C++, then sgemm); the bias gradient in the autograd formula; ``G = dy`` flattened to
``[M, N_out]``, ``X = x`` to ``[M, K]``)::

    grad_x      = G @ W                                    (in x's dtype, fp32 accumulation)
    grad_bias   = G summed over the rows
    grad_values = (G.T @ X) read at the stored positions   (float values only: sparse fine-tuning)

``grad_values`` has no entry for a pruned position, so an optimizer step on ``values`` keeps every pruned
weight exactly zero (``sparse_linear_layouts.values_grad``).  int8 values are frozen (no gradient).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import backends
from .._ext import ext
from ..sparsity._bits import bits_for, packed_bytes
from ..sparsity.cpu_bitmap import bitmap_linear_bound, bitmap_linear_raw
from ..sparsity.cpu_bitmap_index import bitmap_index_linear_bound, bitmap_index_linear_raw, cached_column_indices
from ..sparsity.cpu_expand import bitmap_expand_raw, nm_expand_raw
from ..sparsity import cpu_bsr
from ..sparsity.cpu_kernel import nm_i8_linear_bound, nm_i8_linear_raw, nm_linear_bound, nm_linear_raw
from ..sparsity.cpu_nm_large import nm_large_linear_raw
from ..sparsity.reference import sparse_linear_reference
from ._checks import check_same_device, check_tensor, fail
from ._cpp_views import view
from .quantize import FLOAT_DTYPES, quantize_per_token
from .sparse_linear_routes import Route, bitmap_route, bitmap_route_name, nm_route, nm_small_limit
from .sparse_linear_layouts import LAYOUTS, fields_of, out_features, values_grad, weight_of
from .spec import OpSpec, define

__all__ = ["sparse_linear", "sparse_linear_fields", "ACT_MODES"]

OP = "sparse_linear"
ACT_MODES = ("none", "dynamic")

sparse_linear_fields = fields_of


def _check_index_fields(layout, values, index, offsets, meta, k):
    if layout == "nm":
        if len(meta) != 2 or not 1 <= meta[0] < meta[1] <= 256:
            fail(OP, f"meta must be [n, m] with 1 <= n < m <= 256 for layout='nm', got {list(meta)}")
        n, m = meta
        slots = -(-k // m) * n
        check_tensor(OP, "values", values, ndim=2)
        if values.shape[1] != slots:
            fail(OP, f"values must have ceil(K / m) * n = {slots} columns for K = {k} (x's last dim) and "
                     f"pattern {n}:{m}, got shape {tuple(values.shape)}")
        check_tensor(OP, "index", index, dtype=torch.uint8, ndim=2)
        want = (values.shape[0], packed_bytes(slots, bits_for(m)))
        if tuple(index.shape) != want:
            fail(OP, f"index must have shape {list(want)} (packed {bits_for(m)}-bit slot indices), "
                     f"got {tuple(index.shape)}")
        if offsets is not None:
            fail(OP, "offsets must be None for layout='nm'")
        return
    if layout == "bitmap":
        if len(meta) != 0:
            fail(OP, f"meta must be [] for layout='bitmap', got {list(meta)}")
        check_tensor(OP, "values", values, ndim=1)
        check_tensor(OP, "index", index, dtype=torch.uint8, ndim=2)
        if index.shape[1] != -(-k // 8):
            fail(OP, f"index (the bitmap) must have ceil(K / 8) = {-(-k // 8)} bytes per row for K = {k}, "
                     f"got shape {tuple(index.shape)}")
        check_tensor(OP, "offsets", offsets, dtype=torch.int64, ndim=1)
        if offsets.shape[0] != index.shape[0] + 1:
            fail(OP, f"offsets (row_offsets) must have N_out + 1 = {index.shape[0] + 1} entries, "
                     f"got {offsets.shape[0]}")
        return
    if len(meta) != 1 or meta[0] < 1:
        fail(OP, f"meta must be [N_out] with N_out >= 1 for layout='bsr', got {list(meta)}")
    check_tensor(OP, "values", values, ndim=3)
    bh, bw = values.shape[1], values.shape[2]
    if bh < 1 or bw < 1:
        fail(OP, f"values (the tiles) must be [nnzb, bh, bw] with bh, bw >= 1, got {tuple(values.shape)}")
    check_tensor(OP, "index", index, dtype=torch.int32, ndim=1)
    if index.shape[0] != values.shape[0]:
        fail(OP, f"index (col_indices) must have one entry per tile ({values.shape[0]}), got {index.shape[0]}")
    check_tensor(OP, "offsets", offsets, dtype=torch.int64, ndim=1)
    if offsets.shape[0] != -(-meta[0] // bh) + 1:
        fail(OP, f"offsets (crow_indices) must have ceil(N_out / bh) + 1 = {-(-meta[0] // bh) + 1} entries, "
                 f"got {offsets.shape[0]}")


def _check(x, values, index, offsets, scale, layout, meta, bias=None, act="none"):
    """Validates shapes, dtypes and devices (cheap: no pass over the data); returns the arguments object."""
    check_tensor(OP, "x", x)
    if x.dtype not in FLOAT_DTYPES:
        fail(OP, f"x must be float32, float16 or bfloat16, got {x.dtype}", TypeError)
    if x.dim() < 1 or x.shape[-1] < 1:
        fail(OP, f"x must be [..., K] with K >= 1, got shape {tuple(x.shape)}")
    if not isinstance(layout, str) or layout not in LAYOUTS:
        fail(OP, f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not isinstance(meta, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in meta):
        fail(OP, f"meta must be a list of ints ([n, m] for 'nm', [] for 'bitmap', [N_out] for 'bsr'), got {meta!r}",
             TypeError)
    meta = list(meta)
    _check_index_fields(layout, values, index, offsets, meta, x.shape[-1])
    n_out = out_features(values, index, layout, meta)
    if scale is None:
        if values.dtype not in FLOAT_DTYPES:
            fail(OP, f"values must be float32, float16 or bfloat16 (or int8 with scale), got {values.dtype}", TypeError)
    else:
        if values.dtype != torch.int8:
            fail(OP, f"scale is given, so values must be int8, got {values.dtype}", TypeError)
        check_tensor(OP, "scale", scale, dtype=torch.float32, ndim=1)
        if scale.shape[0] != n_out:
            fail(OP, f"scale has {scale.shape[0]} entries, expected one per output channel ({n_out})")
    if bias is not None:
        check_tensor(OP, "bias", bias, ndim=1)
        if not bias.is_floating_point():
            fail(OP, f"bias must be a float tensor, got {bias.dtype}", TypeError)
        if bias.shape[0] != n_out:
            fail(OP, f"bias has {bias.shape[0]} entries, expected {n_out}")
    if act not in ACT_MODES:
        fail(OP, f"act must be one of {ACT_MODES}, got {act!r}")
    if act == "dynamic" and scale is None:
        fail(OP, "act='dynamic' quantizes x to int8 for int8 values: it needs int8 values with scale (a weight "
                 "packed with quantize='int8')")
    tensors = {"x": x, "values": values, "index": index, "offsets": offsets, "scale": scale, "bias": bias}
    check_same_device(OP, **{k: t for k, t in tensors.items() if t is not None})
    return _make_args((x, values, index, offsets, scale, layout, meta, bias, act))


def _fake(a):
    return a.x.new_empty((*a.x.shape[:-1], out_features(a.values, a.index, a.layout, a.meta)))


_op = define(OpSpec(
    name=OP,
    schema="(Tensor x, Tensor values, Tensor index, Tensor? offsets, Tensor? scale, str layout, int[] meta, "
           "Tensor? bias=None, str act=\"none\") -> Tensor",
    check=_check,
    fake=_fake,
))
_make_args = _op.pack


def _weight(a):
    return weight_of(a.x.shape[-1], a.values, a.index, a.offsets, a.scale, a.layout, a.meta)


@_op.implement("torch")
def _sparse_linear_torch(a) -> Tensor:
    """The reference: ``sparse_linear_reference(x, weight, bias)`` (dense expansion, ``F.linear`` in x's dtype)."""
    return sparse_linear_reference(a.x, _weight(a), a.bias, act=a.act)


def _rows(a) -> int:
    return a.x.numel() // a.x.shape[-1]


def _cpp_check(a) -> Optional[str]:
    if a.layout == "bsr":  # the BSR kernel (sparsity/cpu_bsr.py), any M
        return cpu_bsr.op_refusal(a)
    if a.scale is None and a.values.dtype != torch.float32:
        return f"the C++ sparse routes take float32 or int8 values, got {a.values.dtype}"
    needed = {"nm": ("sparse_nm_linear", "sparse_nm_expand"),
              "bitmap": ("sparse_bitmap_linear", "sparse_bitmap_expand")}[a.layout]
    missing = [name for name in needed if not hasattr(ext(), name)]
    if missing:
        return f"this build of llmaccel._C has no {', '.join(missing)} (rebuild the extension)"
    return None


def _cpp_route(a):
    """The route (``sparse_linear_routes``): a sparse kernel below its measured crossover, else expand + sgemm."""
    if a.layout == "bsr":
        return Route("bsr", "the C++ BSR kernel: only the kept tiles, a dense micro-kernel on each, any M")
    if a.layout == "nm":
        return nm_route(_rows(a), a.meta[0], a.meta[1], a.act)
    return bitmap_route(_rows(a), a.values.numel() / max(1, a.index.shape[0] * a.x.shape[-1]), a.x.shape[-1])


def _describe_cpp(a) -> str:
    route = _cpp_route(a)
    if a.act == "dynamic":
        how = ("sparse_nm_i8_linear: x quantized per token inside, int8 x int8 (exact int32 sums)"
               if route.name == "nm" else "on the dequantized per-token codes of x (xq * sx)")
        return f"route {route.name!r}, act='dynamic' {how}: {route.why}"
    return f"route {route.name!r}: {route.why}"


def _dequantized_codes(x2: Tensor) -> Tensor:
    """``xq * sx`` (fp32, x2 ``[..., K]``): what act='dynamic' multiplies, for the routes and backends without an
    int8-activation kernel.
    The C++ quantizer (the codes int8_linear and the N:M int8 kernel use) where the extension has it."""
    q, sx = quantize_per_token(x2)
    return q.to(torch.float32) * sx.unsqueeze(-1)


def _expanded_weight(a) -> Tensor:
    """fp32 [N_out, K]: the pruned dense weight, expanded in C++ (``sparsity.cpu_expand``)."""
    K = a.x.shape[-1]
    if a.layout == "nm":
        return nm_expand_raw(a.values, a.index, a.scale, a.meta[0], a.meta[1], K)
    return bitmap_expand_raw(a.values, a.index, a.offsets, a.scale, K)


@_op.implement("cpp", check=_cpp_check, describe=_describe_cpp)
def _sparse_linear_cpp(a) -> Tensor:
    """``y = x @ W.T + bias`` in fp32 on the route :func:`_cpp_route` picks; the result in x's dtype."""
    x, bias = a.x, a.bias
    K = x.shape[-1]
    dynamic = a.act == "dynamic"
    if a.layout == "bsr":
        if not dynamic:
            return cpu_bsr.op_run(a)
        xd = _dequantized_codes(x.reshape(-1, K).to(torch.float32))  # the BSR kernel on the dequantized codes
        return cpu_bsr.op_run(a._replace(x=xd)).to(x.dtype).reshape(*x.shape[:-1], a.meta[0])
    if bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous()):
        bias = bias.to(torch.float32).contiguous()
    x2 = x.reshape(-1, K).to(torch.float32)
    route = _cpp_route(a).name
    if dynamic and route != "nm":
        x2 = _dequantized_codes(x2)
    if route == "nm" and dynamic:
        y = nm_i8_linear_raw(x2, a.values, a.index, a.scale, bias, a.meta[0], a.meta[1])
    elif route == "nm":
        y = nm_linear_raw(x2, a.values, a.index, a.scale, bias, a.meta[0], a.meta[1])
    elif route == "nm_large":
        y = nm_large_linear_raw(x2, a.values, a.index, a.scale, bias, a.meta[0], a.meta[1])
    elif route == "bitmap":
        y = bitmap_linear_raw(x2, a.index, a.values, a.offsets, a.scale, bias)
    elif route == "bitmap_index":
        cols = cached_column_indices(a.index, a.offsets, K, a.values.numel())
        y = bitmap_index_linear_raw(x2, cols, a.values, a.offsets, a.scale, bias)
    else:
        y = torch.nn.functional.linear(x2, _expanded_weight(a), bias)
    if x.dtype != torch.float32:
        y = y.to(x.dtype)
    return y.reshape(*x.shape[:-1], y.shape[-1])


def _sparse_cpp_prepare(values, index, offsets, scale, layout, meta, bias, act):
    """``_sparse_linear_cpp`` with the weight side bound once, for a layer's prepared decode call
    (``ops/prepared.py``): on the small-M streaming routes (N:M ``nm``; bitmap ``bitmap`` and
    ``bitmap_index``, whose column indices are derived here once) the bound kernel is called directly, and a
    2-D x needs no reshape either way; other routes, and the BSR layout, run ``_sparse_linear_cpp`` itself.
    Why so lean: each torch call here costs tens of microseconds cold, right after a decode kernel has
    streamed its weight (``_direct_cpu``'s docstring)."""
    if layout not in ("nm", "bitmap"):
        return None
    fixed = (values, index, offsets, scale, layout, meta, bias, act)
    if bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous()):
        bias = bias.to(torch.float32).contiguous()
    N = values.shape[0] if layout == "nm" else index.shape[0]
    kept = values.numel()  # bitmap layout: the density of the weight, with K, picks the route
    bound = {}  # (K, route) -> kernel call (one K per layer in practice)

    def bind(K: int, route: str):
        if route == "nm":
            n, m = meta
            return (nm_i8_linear_bound(values, index, scale, bias, n, m, K) if act == "dynamic" else
                    nm_linear_bound(values, index, scale, bias, n, m, K))
        if route == "bitmap_index":
            cols = cached_column_indices(index, offsets, K, kept)
            return bitmap_index_linear_bound(cols, values, offsets, scale, bias)
        return bitmap_linear_bound(index, values, offsets, scale, bias)

    def run(x: Tensor) -> Tensor:
        K = x.shape[-1]
        two_d = x.dim() == 2
        x2 = x if two_d else x.reshape(-1, K)
        rows = x2.shape[0]
        if layout == "nm":
            route = "nm" if rows <= nm_small_limit(meta[0], meta[1], act) else ""
        else:
            route = bitmap_route_name(rows, kept / max(1, N * K), K)
            route = route if route in ("bitmap", "bitmap_index") else ""
        if not route:
            return _sparse_linear_cpp(_op.pack((x, *fixed)))
        kernel = bound.get((K, route))
        if kernel is None:
            kernel = bound[(K, route)] = bind(K, route)
        y = kernel(x2)
        return y if two_d else y.reshape(*x.shape[:-1], N)

    return run


_sparse_linear_cpp.prepare = _sparse_cpp_prepare


def _triton_check(a) -> Optional[str]:
    if a.layout == "bitmap":
        return "the Triton sparse kernels run the N:M and BSR layouts (layout='bitmap' runs on torch)"
    return None


@_op.implement("triton", check=_triton_check)
def _sparse_linear_triton(a) -> Tensor:
    """kernels/sparse_nm.py (N:M: compressed tiles expanded in registers) or kernels/sparse_bsr.py (BSR: only
    the stored tiles), ``tl.dot`` with fp32 accumulation."""
    # act="dynamic": the same kernels on the dequantized per-token codes (fp32 products of integers)
    x = _dequantized_codes(a.x) if a.act == "dynamic" else a.x
    if a.layout == "bsr":
        from ..kernels.sparse_bsr import sparse_bsr_linear

        y = sparse_bsr_linear(x, a.values, a.index, a.offsets, a.scale, a.bias, a.meta[0])
    else:
        from ..kernels.sparse_nm import sparse_nm_linear

        y = sparse_nm_linear(x, a.values, a.index, a.scale, a.bias, a.meta[0], a.meta[1])
    return y.to(a.x.dtype)


# --------------------------------------------------------------------------
# autograd (module docstring)
# --------------------------------------------------------------------------

def _check_backward(grad_y, x, values, index, offsets, scale, layout, meta, need_x, need_values):
    _check(x, values, index, offsets, scale, layout, meta)
    check_tensor("sparse_linear_backward", "grad_y", grad_y)
    want = (*x.shape[:-1], out_features(values, index, layout, meta))
    if tuple(grad_y.shape) != want:
        fail("sparse_linear_backward", f"grad_y must have shape {list(want)}, got {list(grad_y.shape)}")
    if need_values and scale is not None:
        fail("sparse_linear_backward", "need_values=True needs float values (int8 values are frozen)")
    return _pack_backward((grad_y, x, values, index, offsets, scale, layout, [int(v) for v in meta], need_x,
                           need_values))


def _fake_backward(a):
    return (a.x.new_empty(a.x.shape) if a.need_x else a.x.new_empty((0,)),
            a.values.new_empty(a.values.shape) if a.need_values else a.x.new_empty((0,)))


_backward_op = define(OpSpec(
    name="sparse_linear_backward",
    schema="(Tensor grad_y, Tensor x, Tensor values, Tensor index, Tensor? offsets, Tensor? scale, str layout, "
           "int[] meta, bool need_x, bool need_values) -> (Tensor, Tensor)",
    check=_check_backward,
    fake=_fake_backward,
    follows_forward=True,
))
_pack_backward = _backward_op.pack


def _backward_on(a, dense: Tensor, weight):
    """``(grad_x, grad_values)`` of the module docstring from the fp32 pruned dense weight ``dense`` and the
    format object ``weight`` (for the stored positions); an empty tensor for each one not asked for."""
    K = a.x.shape[-1]
    g = a.grad_y.reshape(-1, a.grad_y.shape[-1]).to(torch.float32)
    grad_x = a.x.new_empty((0,))
    grad_values = a.x.new_empty((0,))
    if a.need_x:
        grad_x = torch.matmul(g, dense).to(a.x.dtype).reshape(a.x.shape)
    if a.need_values:
        grad_dense = torch.matmul(g.t(), a.x.detach().reshape(-1, K).to(torch.float32))
        grad_values = values_grad(weight, grad_dense).to(a.values.dtype).contiguous()
    return grad_x, grad_values


@_backward_op.implement("torch")
def _sparse_linear_backward_torch(a):
    """The reference: the format object rebuilt (every field checked) and expanded with torch ops."""
    weight = weight_of(a.x.shape[-1], a.values.detach(), a.index, a.offsets, a.scale, a.layout, a.meta)
    return _backward_on(a, weight.to_dense().to(torch.float32), weight)


def _cpp_backward_check(a) -> Optional[str]:
    if a.layout == "bsr":
        return "the C++ backward expands N:M and bitmap weights only (layout='bsr' runs on torch)"
    return _cpp_check(a)


@_backward_op.implement("cpp", check=_cpp_backward_check)
def _sparse_linear_backward_cpp(a):
    """The weight expanded in C++ (no per-call pass of field checks: the forward's fields), then two sgemms."""
    weight = weight_of(a.x.shape[-1], a.values.detach(), a.index, a.offsets, a.scale, a.layout, a.meta,
                       trusted=True)
    return _backward_on(a, _expanded_weight(a), weight)


def _setup_context(ctx, a, output):
    ctx.save_for_backward(a.x, a.values, a.index, a.offsets, a.scale)
    ctx.layout, ctx.meta = a.layout, list(a.meta)
    ctx.bias_dtype = a.bias.dtype if a.bias is not None else None


def _backward(ctx, grad_y):
    """Through ``torch.ops.llmaccel.sparse_linear_backward`` (dispatched, opaque to tracing); bias here."""
    x, values, index, offsets, scale = ctx.saved_tensors
    need_x, need_values = ctx.needs_input_grad[0], ctx.needs_input_grad[1] and scale is None
    grads = {}
    if need_x or need_values:
        gx, gv = _backward_op.call(grad_y, x, values, index, offsets, scale, ctx.layout, ctx.meta, need_x,
                                   need_values)
        grads.update({"x": gx if need_x else None, "values": gv if need_values else None})
    if ctx.bias_dtype is not None:
        grads["bias"] = grad_y.reshape(-1, grad_y.shape[-1]).to(torch.float32).sum(0).to(ctx.bias_dtype)
    return grads


_op.autograd(_backward, _setup_context)


def _direct_cpu(x, values, index, offsets, scale, layout, meta, bias, act):
    """The C++ kernel's result without the op road's full check and backend selection, or None when the call
    must take the op road.

    Why: a decode call streams megabytes of weight, which evicts the Python the op road runs on; its full
    check, the custom-op boundary test and the dispatcher's walk then cost ~150-250 us per call cold (~45 us
    warm) on the 2-core Sapphire Rapids class VM, against a 0.5-2 ms kernel: 2:4 W8A8 decode through 8 layers
    ran 6.2 ms through the op and 4.0 ms as bare kernel calls.  What runs is unchanged: exactly where the
    dispatcher would pick ``cpp`` (backend request "auto", CPU tensors, the extension loaded) and the route is a
    small-M streaming kernel (``nm``, ``bitmap``, ``bitmap_index``), for fp32 x with contiguous rows and
    fields whose dtypes and shapes pass the checks below, which imply everything ``_check`` checks for them
    (tests/test_sparse_linear_direct.py checks ``explain()`` and the results agree).  Anything else (another
    dtype or layout, a strided x, a shape the op would reject, autograd, tracing, the profiler, a subclass)
    returns None and the op road runs (and raises its usual error)."""
    if torch.compiler.is_compiling():
        return None
    T = Tensor
    f32 = torch.float32
    if type(x) is not T or x.dtype is not f32 or not x.is_cpu or x.layout is not torch.strided or x.dim() < 1:
        return None
    K = x.shape[-1]
    if K < 1 or x.stride(-1) != 1 or act not in ACT_MODES:
        return None
    if type(values) is not T or type(index) is not T or not values.is_cpu or not index.is_cpu:
        return None
    if scale is None:
        if values.dtype is not f32 or act != "none":
            return None
    elif type(scale) is not T or values.dtype is not torch.int8 or scale.dtype is not f32 or not scale.is_cpu \
            or scale.dim() != 1 or not scale.is_contiguous():
        return None
    N = values.shape[0] if layout == "nm" else index.shape[0]
    if bias is not None and (type(bias) is not T or bias.dtype is not f32 or not bias.is_cpu or bias.dim() != 1
                             or bias.shape[0] != N or not bias.is_contiguous()):
        return None
    if scale is not None and scale.shape[0] != N:
        return None
    if index.dtype is not torch.uint8 or index.dim() != 2 or index.stride(-1) != 1 or index.layout is not torch.strided:
        return None
    rows = x.numel() // K
    if layout == "nm":
        if offsets is not None or len(meta) != 2 or values.dim() != 2 or values.stride(-1) != 1:
            return None
        n, m = meta
        if type(n) is not int or type(m) is not int or not 1 <= n < m <= 256:
            return None
        slots = -(-K // m) * n
        if values.shape[1] != slots or index.shape[0] != N or index.shape[1] != packed_bytes(slots, bits_for(m)):
            return None
        if rows > nm_small_limit(n, m, act):  # nm_route's "nm" test, memoized
            return None
        route = "nm"
    elif layout == "bitmap":
        if act != "none" or len(meta) != 0 or values.dim() != 1 or not values.is_contiguous():
            return None
        if type(offsets) is not T or offsets.dtype is not torch.int64 or offsets.dim() != 1 or not offsets.is_cpu \
                or offsets.shape[0] != N + 1 or not offsets.is_contiguous() or index.shape[1] != -(-K // 8):
            return None
        route = bitmap_route_name(rows, values.numel() / max(1, N * K), K)
        if route not in ("bitmap", "bitmap_index"):
            return None
    else:
        return None
    if backends.current() != "auto" or backends._cpp_import_error() is not None:  # x.is_cpu: checked above
        return None
    if backends._op_boundary_needed((x, values, index, offsets, scale, bias)):
        return None
    e = ext()
    nthreads = torch.get_num_threads()
    # A 2-D x (a decode step's [batch, K]) is used as it is: a reshape, like every torch call, costs tens of
    # microseconds here, where the kernel before has evicted torch's code (the docstring's why).
    two_d = x.dim() == 2
    x2 = x if two_d else x.reshape(rows, K)
    y = torch.empty((rows, N), dtype=f32)
    # the views (csrc/tensor_view.h) spelled out: every dtype is known here, and this road is the decode hot path
    x_v, y_v = (x2.data_ptr(), "float32", x2.shape, x2.stride()), (y.data_ptr(), "float32", (rows, N), (N, 1))
    v_v = (values.data_ptr(), "float32" if scale is None else "int8", values.shape, values.stride())
    s_v = None if scale is None else (scale.data_ptr(), "float32", (N,), (1,))  # both checked contiguous [N]
    b_v = None if bias is None else (bias.data_ptr(), "float32", (N,), (1,))
    if layout == "nm":
        kernel = e.sparse_nm_i8_linear if act == "dynamic" else e.sparse_nm_linear
        kernel(x_v, v_v, (index.data_ptr(), "uint8", index.shape, index.stride()), s_v, b_v, y_v, n, m, nthreads, "")
    elif route == "bitmap_index":
        cols = cached_column_indices(index, offsets, K, values.numel())
        e.sparse_bitmap_index_linear(x_v, v_v, view(cols), view(offsets), s_v, b_v, y_v, nthreads, "")
    else:
        e.sparse_bitmap_linear(x_v, v_v, view(index), view(offsets), s_v, b_v, y_v, nthreads, "")
    return y if two_d else y.view(*x.shape[:-1], N)


@_op.public
def sparse_linear(x: Tensor, values: Tensor, index: Tensor, offsets: Optional[Tensor], scale: Optional[Tensor],
                  layout: str, meta, bias: Optional[Tensor] = None, act: str = "none") -> Tensor:
    """``y = x @ W.T + bias`` with ``W`` the pruned weight the compressed fields stand for (module docstring).

    ``values, index, offsets, scale, layout, meta`` are ``sparse_linear_fields(weight)`` of an
    ``llmaccel.sparsity`` format object.  ``act="dynamic"`` (int8 values): x quantized per token, int8 x int8
    (module docstring).  Gradients flow to ``x``, ``bias`` and float ``values``.
    """
    meta = list(meta) if isinstance(meta, tuple) else meta
    if type(meta) is list:
        direct = _direct_cpu(x, values, index, offsets, scale, layout, meta, bias, act)
        if direct is not None:
            return direct
    return _op.call(x, values, index, offsets, scale, layout, meta, bias, act)
