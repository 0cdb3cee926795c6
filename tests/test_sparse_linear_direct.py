"""The direct CPU road of ``llmaccel.sparse_linear`` (llmaccel/ops/sparse_linear.py, ``_direct_cpu``): decode-sized
fp32 calls on the N:M and bitmap layouts reach the C++ kernels without the op road's full check and backend
selection.  It must run only where the dispatcher would pick ``cpp`` and a streaming route itself, give exactly
the op road's result, and stand aside for everything the op road must see (autograd, a backend request, other
dtypes and layouts, strided x, the profiler, a subclass, bad shapes)."""

import importlib

import pytest
import torch

import llmaccel
from llmaccel import backends
from llmaccel.sparsity import BitmapWeight, BSRWeight, NMPackedWeight, prune, sparse_linear_reference

sl = importlib.import_module("llmaccel.ops.sparse_linear")

pytestmark = pytest.mark.skipif("cpp" not in backends.available_backends("cpu"), reason="needs the C++ extension")

FIELDS = llmaccel.sparse_linear_fields


def _weights():
    g = torch.Generator().manual_seed(0)
    for N, K in ((1, 3), (17, 113), (40, 1000), (33, 4099)):
        w = torch.randn(N, K, generator=g)
        for pattern in ("2:4", "4:8"):
            yield f"{pattern} fp32 {N}x{K}", NMPackedWeight.from_dense(w, prune(w, pattern), pattern), "none"
        q = NMPackedWeight.from_dense(w, prune(w, "2:4"), "2:4", quantize="int8")
        yield f"2:4 int8 {N}x{K}", q, "none"
        yield f"2:4 W8A8 {N}x{K}", q, "dynamic"
        for sp in (0.5, 0.9):  # the bitmap route, and (at 90 %, few rows) the column-index form
            yield f"bitmap {sp} {N}x{K}", BitmapWeight.from_dense(w, prune(w, "unstructured", sparsity=sp)), "none"
            yield (f"bitmap {sp} int8 {N}x{K}",
                   BitmapWeight.from_dense(w, prune(w, "unstructured", sparsity=sp), quantize="int8"), "none")


CASES = list(_weights())


@pytest.mark.parametrize("name, weight, act", CASES, ids=[c[0] for c in CASES])
def test_direct_road_equals_the_op_road_and_the_reference(name, weight, act):
    N, K = weight.shape
    g = torch.Generator().manual_seed(1)
    bias = torch.randn(N, generator=g)
    for lead in ((1,), (3,), (2, 2)):
        x = torch.randn(*lead, K, generator=g) * 3
        for b in (None, bias):
            f = FIELDS(weight)
            direct = sl._direct_cpu(x, *f[:-1], list(f[-1]), b, act)
            assert direct is not None, f"{name}: a plain fp32 CPU decode call must take the direct road"
            ex = backends.explain("sparse_linear", x, *f, b, act)
            assert ex.backend == "cpp", ex
            with backends.use("cpp"):  # the op road, same kernel (a request keeps the direct road aside)
                via_op = llmaccel.sparse_linear(x, *f, b, act)
            assert torch.equal(direct, via_op), name
            assert direct.shape == (*lead, N) and direct.dtype == torch.float32
            assert torch.equal(llmaccel.sparse_linear(x, *f, b, act), direct)  # the public call takes it
            # float64 reference of the same math (W8A8: the exact product of the codes, fp32-rounded)
            ref = sparse_linear_reference(x, weight, b, dtype=torch.float64, act=act)
            mag = x.double().abs() @ weight.to_dense().double().abs().T + (b.double().abs() if b is not None else 0)
            tol = 1e-5 if act == "none" else 2e-2
            assert bool(((direct.double() - ref).abs() <= tol * mag + 1e-30).all()), name


def _nm(quantize=None):
    w = torch.randn(24, 256, generator=torch.Generator().manual_seed(2))
    return NMPackedWeight.from_dense(w, prune(w, "2:4"), "2:4", quantize=quantize)


def test_the_road_stands_aside(monkeypatch):
    pw = _nm()
    f = FIELDS(pw)
    x = torch.randn(2, 256)
    args = (*f[:-1], list(f[-1]), None, "none")
    assert sl._direct_cpu(x, *args) is not None
    # autograd: x or the values require grad
    assert sl._direct_cpu(x.clone().requires_grad_(), *args) is None
    vg = f[0].clone().requires_grad_()
    assert sl._direct_cpu(x, vg, *args[1:]) is None
    with torch.no_grad():
        assert sl._direct_cpu(x.clone().requires_grad_(), *args) is not None
    # a backend request, even for cpp
    with backends.use("cpp"):
        assert sl._direct_cpu(x, *args) is None
    # other dtypes, a column-strided x, a subclass
    for other in (x.half(), x.double(), torch.randn(2, 512)[:, ::2]):
        assert sl._direct_cpu(other, *args) is None
    assert sl._direct_cpu(torch.nn.Parameter(x, requires_grad=False).as_subclass(_Sub), *args) is None
    # the profiler: the op road names the kernel
    with torch.profiler.profile() as prof:
        assert sl._direct_cpu(x, *args) is None
        llmaccel.sparse_linear(x, *f)
    assert any(e.name == "llmaccel::sparse_linear" for e in prof.events())
    # past the small-M kernel's crossover the op road's route (nm_large / expand) runs
    assert sl._direct_cpu(torch.randn(600, 256), *args) is None
    # a layout the road does not take
    wb = torch.randn(64, 64)
    bsr = BSRWeight.from_dense(wb, prune(wb, "block", sparsity=0.5, block_size=(32, 32)), (32, 32))
    fb = FIELDS(bsr)
    assert sl._direct_cpu(torch.randn(1, 64), *fb[:-1], list(fb[-1]), None, "none") is None


class _Sub(torch.Tensor):
    pass


@pytest.mark.parametrize("bad, match", [
    ("index rows", r"index must have shape"),
    ("values columns", r"values must have ceil\(K / m\) \* n"),
    ("bias length", r"bias has 23 entries"),
    ("act without scale", r"act='dynamic' quantizes x to int8"),
    ("scale on fp32", r"scale is given, so values must be int8"),
])
def test_bad_fields_take_the_op_road_and_raise(bad, match):
    """A shape or dtype the op rejects never reaches a kernel through the direct road: it declines, and the op
    road raises its usual error."""
    pw = _nm()
    values, index, offsets, scale, layout, meta = FIELDS(pw)
    x, bias, act = torch.randn(1, 256), None, "none"
    if bad == "index rows":
        index = index[:-1]
    elif bad == "values columns":
        values = values[:, :-4]
    elif bad == "bias length":
        bias = torch.randn(23)
    elif bad == "act without scale":
        act = "dynamic"
    elif bad == "scale on fp32":
        scale = torch.ones(24)
    assert sl._direct_cpu(x, values, index, offsets, scale, layout, list(meta), bias, act) is None
    with pytest.raises((ValueError, TypeError), match=match):
        llmaccel.sparse_linear(x, values, index, offsets, scale, layout, meta, bias, act)


@pytest.mark.parametrize("n, m, act", [(2, 4, "none"), (2, 4, "dynamic"), (4, 8, "none"), (1, 2, "none"),
                                       (3, 4, "none"), (1, 16, "none")])
def test_memoized_small_m_limit_is_nm_routes_test(n, m, act, monkeypatch):
    """The direct road's memoized limit (``nm_small_limit``) is exactly where ``nm_route`` stops taking "nm", and
    follows a replaced crossover table."""
    from llmaccel.ops import sparse_linear_routes as routes

    for _ in range(2):
        limit = routes.nm_small_limit(n, m, act)
        assert routes.nm_route(limit, n, m, act).name == "nm" or limit == 0
        assert routes.nm_route(limit + 1, n, m, act).name != "nm"
        table = {key: routes.Crossover(3, c.density, c.measured_on) for key, c in routes.CROSSOVER_M.items()}
        monkeypatch.setattr(routes, "CROSSOVER_M", table)
