"""The int8 and sparse entry points of ``llmaccel._C`` take each tensor as a view (csrc/tensor_view.h): for every
one, a view of the wrong rank or dtype, and every size that must agree with the call's other tensors made to
disagree, raises ValueError naming the op and the argument before any kernel runs; one valid call per binding
matches its reference.  (Pointers, strides and the index data are the kernels' own checks: the kernel tests.)"""

import pytest
import torch

from llmaccel._ext import ext
from llmaccel.ops.int8_linear import int8_linear_reference
from llmaccel.ops.quantize import quantize_per_token_reference
from llmaccel.sparsity import BitmapWeight, BSRWeight, NMPackedWeight, prune, sparse_linear_reference
from llmaccel.sparsity.cpu_bitmap_index import column_indices

from cpp_calls import call_views

pytestmark = pytest.mark.skipif(not hasattr(ext(), "sparse_bsr_linear"), reason="needs the C++ extension")

M, N, K = 2, 6, 12


def _w(seed=0):
    return torch.randn(N, K, generator=torch.Generator().manual_seed(seed))


def _x():
    return torch.randn(M, K, generator=torch.Generator().manual_seed(1))


def _i8():
    g = torch.Generator().manual_seed(2)
    return torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g), torch.rand(N, generator=g) * 0.02 + 1e-3


def _bias():
    return torch.randn(N, generator=torch.Generator().manual_seed(3))


def _packed_buffer(w):
    return torch.empty(ext().int8_mm_packed_size("", *w.shape), dtype=torch.int8)


# Each problem: (tensors, scalars, check(tensors) for the valid call, the (argument, dim) sizes that are derived
# from the other tensors; the rest of the sizes (M, K from x, N from y ...) are what they are derived from).
def _int8_mm():
    a = torch.randint(-128, 128, (M, K), dtype=torch.int8)
    b = torch.randint(-128, 128, (K, N), dtype=torch.int8)
    t = dict(a=a, b=b, c=torch.zeros(M, N, dtype=torch.int32))
    return t, dict(nthreads=1, variant=""), lambda t: torch.equal(t["c"], (a.long() @ b.long()).int()), \
        [("b", 0), ("c", 0), ("c", 1)]


def _int8_linear_dynamic():
    w, s = _i8()
    packed = _packed_buffer(w)
    call_views("int8_mm_pack_b", dict(w=w, out=packed), dict(variant="", nthreads=1))
    t = dict(x=_x(), w=w, w_packed=packed, w_scale=s, bias=_bias(), y=torch.empty(M, N), smooth=torch.ones(K))

    def check(t):
        ref = int8_linear_reference(t["x"], w, s, t["bias"], "dynamic")
        return torch.allclose(t["y"], ref, rtol=1e-4, atol=1e-4)
    return t, dict(nthreads=1, variant="", activation=""), check, \
        [("y", 0), ("w", 0), ("w", 1), ("w_packed", 0), ("w_scale", 0), ("bias", 0), ("smooth", 0)]


def _int8_linear_weight_only():
    w, s = _i8()
    t = dict(x=_x(), w=w, w_scale=s, bias=_bias(), y=torch.empty(M, N))

    def check(t):
        return torch.allclose(t["y"], int8_linear_reference(t["x"], w, s, t["bias"], "weight_only"), rtol=1e-5,
                              atol=1e-5)
    return t, dict(nthreads=1, variant=""), check, [("y", 0), ("w", 0), ("w", 1), ("w_scale", 0), ("bias", 0)]


def _int8_mm_pack_b():
    w, s = _i8()
    t = dict(w=w, out=_packed_buffer(w))

    def check(t):  # the packed weight gives the unpacked weight's result
        x, y, y2 = _x(), torch.empty(M, N), torch.empty(M, N)
        call_views("int8_linear_dynamic", dict(x=x, w=w, w_packed=t["out"], w_scale=s, bias=None, y=y),
                   dict(nthreads=1))
        call_views("int8_linear_dynamic", dict(x=x, w=w, w_packed=None, w_scale=s, bias=None, y=y2), dict(nthreads=1))
        return torch.equal(y, y2)
    return t, dict(variant="", nthreads=1), check, [("out", 0)]


def _quantize_per_token():
    x = _x() * 3
    t = dict(x=x, q=torch.empty(M, K, dtype=torch.int8), scale=torch.empty(M))

    def check(t):
        q, s = quantize_per_token_reference(x)
        return (t["q"].int() - q.int()).abs().max() <= 1 and torch.allclose(t["scale"], s)
    return t, dict(nthreads=1, variant=""), check, [("q", 0), ("q", 1), ("scale", 0)]


def _linear_check(weight, bias, act="none"):
    def check(t):
        ref = sparse_linear_reference(t["x"], weight, bias, act=act)
        return torch.allclose(t["y"], ref, rtol=1e-4, atol=1e-3 if act == "dynamic" else 1e-5)
    return check


def _nm(quantize=None, binding_act="none"):
    w = _w()
    pw = NMPackedWeight.from_dense(w, prune(w, "2:4"), "2:4", quantize=quantize)
    b = _bias()
    t = dict(x=_x(), values=pw.values, indices=pw.indices, scale=pw.scale, bias=b, y=torch.empty(M, N))
    derived = [("y", 0), ("values", 0), ("values", 1), ("indices", 0), ("indices", 1), ("bias", 0)]
    if quantize:
        derived.append(("scale", 0))
    return t, dict(n=2, m=4, nthreads=1, variant=""), _linear_check(pw, b, binding_act), derived


def _nm_expand(quantize):
    w = _w()
    pw = NMPackedWeight.from_dense(w, prune(w, "2:4"), "2:4", quantize=quantize)
    t = dict(values=pw.values, indices=pw.indices, scale=pw.scale, out=torch.empty(N, K))
    derived = [("values", 0), ("values", 1), ("indices", 0), ("indices", 1)] + ([("scale", 0)] if quantize else [])
    return t, dict(n=2, m=4, nthreads=1), lambda t: torch.equal(t["out"], pw.to_dense()), derived


def _bitmap(quantize=None):
    w = _w()
    return BitmapWeight.from_dense(w, prune(w, "unstructured", sparsity=0.5), quantize=quantize)


def _bitmap_expand():
    bm = _bitmap()
    t = dict(bitmap=bm.bitmap, values=bm.values, row_offsets=bm.row_offsets, scale=None, out=torch.empty(N, K))
    return t, dict(nthreads=1), lambda t: torch.equal(t["out"], bm.to_dense()), \
        [("bitmap", 0), ("bitmap", 1), ("row_offsets", 0)]


def _bitmap_linear():
    bm, b = _bitmap("int8"), _bias()
    t = dict(x=_x(), values=bm.values, bitmap=bm.bitmap, row_offsets=bm.row_offsets, scale=bm.scale, bias=b,
             y=torch.empty(M, N))
    return t, dict(nthreads=1, variant=""), _linear_check(bm, b), \
        [("y", 0), ("bitmap", 0), ("bitmap", 1), ("row_offsets", 0), ("scale", 0), ("bias", 0)]


def _bitmap_index_linear():
    bm, b = _bitmap(), _bias()
    cols = column_indices(bm.bitmap, bm.row_offsets, K, bm.values.numel())
    t = dict(x=_x(), values=bm.values, cols=cols, row_offsets=bm.row_offsets, scale=None, bias=b, y=torch.empty(M, N))
    return t, dict(nthreads=1, variant=""), _linear_check(bm, b), \
        [("y", 0), ("cols", 0), ("row_offsets", 0), ("bias", 0)]


def _bsr():
    w = _w()
    bsr = BSRWeight.from_dense(w, prune(w, "block", sparsity=0.5, block_size=(2, 4)), (2, 4), quantize="int8")
    b = _bias()
    t = dict(x=_x(), values=bsr.values, crow_indices=bsr.crow_indices, col_indices=bsr.col_indices, scale=bsr.scale,
             bias=b, y=torch.empty(M, N))
    return t, dict(nthreads=1, variant=""), _linear_check(bsr, b), \
        [("y", 0), ("crow_indices", 0), ("col_indices", 0), ("scale", 0), ("bias", 0)]


PROBLEMS = {
    "int8_mm": _int8_mm,
    "int8_linear_dynamic": _int8_linear_dynamic,
    "int8_mm_pack_b": _int8_mm_pack_b,
    "quantize_per_token": _quantize_per_token,
    "int8_linear_weight_only": _int8_linear_weight_only,
    "sparse_nm_linear": lambda: _nm(),
    "sparse_nm_large_linear": lambda: _nm("int8"),
    "sparse_nm_i8_linear": lambda: _nm("int8", "dynamic"),
    "sparse_nm_expand": lambda: _nm_expand("int8"),
    "sparse_bitmap_expand": _bitmap_expand,
    "sparse_bitmap_linear": _bitmap_linear,
    "sparse_bitmap_index_linear": _bitmap_index_linear,
    "sparse_bsr_linear": _bsr,
}


def _cases():
    for binding, make in PROBLEMS.items():
        tensors, _, _, derived = make()
        for name, t in tensors.items():
            if t is None:
                continue
            yield pytest.param(binding, name, "rank", None, id=f"{binding}-{name}-rank")
            yield pytest.param(binding, name, "dtype", None, id=f"{binding}-{name}-dtype")
        for name, dim in derived:
            yield pytest.param(binding, name, "size", dim, id=f"{binding}-{name}-size{dim}")


@pytest.mark.parametrize("binding,name,kind,dim", list(_cases()))
def test_bad_view_raises_naming_op_and_argument(binding, name, kind, dim):
    tensors, scalars, _, _ = PROBLEMS[binding]()
    t = tensors[name]
    outputs = [tensors[k].fill_(7) for k in ("c", "y", "out", "q") if k in tensors]
    if kind == "rank":
        over, msg = {f"{name}.sizes": (*t.shape, 1), f"{name}.strides": (*t.stride(), 1)}, f"{name} must be {t.dim()}-D"
    elif kind == "dtype":
        over, msg = {f"{name}.dtype": "float64"}, f"{name} must be .*, got float64"
    else:
        sizes = list(t.shape)
        # a packed buffer may be larger than its layout: too small is the disagreement
        sizes[dim] += -1 if binding.startswith("int8") and name in ("w_packed", "out") else 1
        over = {f"{name}.sizes": tuple(sizes)}
        msg = f"{name} (must have shape|has \\d+ bytes, fewer than)"
    with pytest.raises(ValueError, match=rf"^llmaccel::{binding}: {msg}"):
        call_views(binding, tensors, scalars, **over)
    assert all((out == 7).all() for out in outputs)  # nothing written


@pytest.mark.parametrize("binding", list(PROBLEMS))
def test_valid_call_matches_reference(binding):
    tensors, scalars, check, _ = PROBLEMS[binding]()
    call_views(binding, tensors, scalars)
    assert check(tensors)


@pytest.mark.parametrize("binding", ["sparse_nm_linear", "sparse_bitmap_linear", "sparse_bsr_linear"])
def test_scale_must_match_the_values_dtype(binding):
    tensors, scalars, _, _ = PROBLEMS[binding]()
    if tensors["scale"] is None:  # fp32 values: a scale is refused
        with pytest.raises(ValueError, match=rf"^llmaccel::{binding}: scale must be None for float32 values"):
            call_views(binding, tensors, scalars, scale=(tensors["bias"].data_ptr(), "float32", (N,), (1,)))
    else:  # int8 values: a scale is required
        with pytest.raises(ValueError, match=rf"^llmaccel::{binding}: scale is None, but int8 values need"):
            call_views(binding, tensors, scalars, scale=None)


@pytest.mark.parametrize("binding,name", [("int8_linear_weight_only", "x"), ("int8_linear_dynamic", "w"),
                                          ("quantize_per_token", "q"), ("sparse_nm_linear", "values"),
                                          ("sparse_bitmap_linear", "bitmap"), ("sparse_nm_expand", "out")])
def test_rows_must_be_contiguous(binding, name):
    tensors, scalars, _, _ = PROBLEMS[binding]()
    t = tensors[name]
    with pytest.raises(ValueError, match=rf"^llmaccel::{binding}: {name} must have contiguous rows"):
        call_views(binding, tensors, scalars, **{f"{name}.strides": (t.stride(0), 2)})


def test_vectors_must_be_contiguous():
    tensors, scalars, _, _ = PROBLEMS["int8_linear_weight_only"]()
    with pytest.raises(ValueError, match=r"^llmaccel::int8_linear_weight_only: w_scale must be contiguous, got "
                                         r"stride 2"):
        call_views("int8_linear_weight_only", tensors, scalars, **{"w_scale.strides": (2,)})
