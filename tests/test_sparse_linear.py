"""llmaccel.sparse_linear: every layout on every backend against the float64 pruned-dense math; autograd,
sparse fine-tuning (the mask survives optimizer steps), opcheck, bad inputs."""

import pytest
import torch

import llmaccel
from llmaccel import backends
from llmaccel.ops import sparse_linear_routes
from llmaccel.sparsity import BitmapWeight, BSRWeight, NMPackedWeight, prune

FIELDS = llmaccel.sparse_linear_fields


def _weight(kind, w, quantize=None):
    """A format object of ``w`` pruned the way ``kind`` says."""
    if kind in ("2:4", "4:8", "1:2", "2:16"):
        return NMPackedWeight.from_dense(w, prune(w, kind), kind, quantize=quantize)
    if kind == "bitmap":
        return BitmapWeight.from_dense(w, prune(w, "unstructured", sparsity=0.7), quantize=quantize)
    bs = (4, 8)
    return BSRWeight.from_dense(w, prune(w, "block", sparsity=0.5, block_size=bs), bs, quantize=quantize)


KINDS = ("2:4", "4:8", "1:2", "2:16", "bitmap", "bsr")


def _runnable(*args):
    names = [n for n in backends.BACKENDS if _explain_on(n, *args).backend == n]
    assert "torch" in names
    return names


def _explain_on(name, *args):
    with backends.use(name):
        return backends.explain("sparse_linear", *args)


def _on(name, *args):
    with backends.use(name):
        return llmaccel.sparse_linear(*args)


def _check_close(y, x, pw, bias, where):
    """fp32 kernels: within a few fp32 roundings of sum |x||W| of the float64 math."""
    W = pw.to_dense().double()
    x64 = x.double().reshape(-1, W.shape[1])
    ref = x64 @ W.t() + (bias.double() if bias is not None else 0)
    bound = 4e-6 * (x64.abs() @ W.abs().t() + (bias.double().abs() if bias is not None else 0)) + 1e-30
    err = (y.double().reshape(ref.shape) - ref).abs()
    assert y.shape == (*x.shape[:-1], W.shape[0]), where
    worst = err.argmax()
    assert bool((err <= bound).all()), f"{where}: max err {err.max():.3g}, bound there {bound.flatten()[worst]:.3g}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("quantize", [None, "int8"])
def test_every_layout_and_backend_matches_float64_pruned_dense(kind, quantize):
    for n_out, k in ((1, 1), (3, 17), (17, 113), (113, 3)):
        w = torch.randn(n_out, k)
        pw = _weight(kind, w, quantize)
        for lead in ((1,), (3,), (2, 17)):
            x = torch.randn(*lead, k)
            for bias in (torch.randn(n_out), None):
                args = (x, *FIELDS(pw), bias)
                for name in _runnable(*args):
                    _check_close(_on(name, *args), x, pw, bias, f"{name} {kind} {quantize} {n_out}x{k} {lead}")


def test_cpp_routes_follow_the_measured_crossover_and_refusals_give_reasons():
    w = torch.randn(8, 16)
    pw = _weight("2:4", w)
    limit = sparse_linear_routes.nm_route(1, 2, 4)  # a route exists for M=1 whatever the table says
    cross, _ = sparse_linear_routes.crossover("nm", "sparse_nm")
    small_m = cross.limit(0.5)
    ex = backends.explain("sparse_linear", torch.randn(max(small_m, 1), 16), *FIELDS(pw))
    assert ex.backend == "cpp" and "route 'nm'" in " ".join(ex.notes), (ex, limit)
    # Past the crossover: the large-M kernel, unless it was measured to lose to this machine's dense sgemm.
    large = f"{sparse_linear_routes._variant('sparse_nm_large')}@{sparse_linear_routes.dense_isa()}"
    want = "expand" if large in sparse_linear_routes.NM_LARGE_LOSES_TO_DENSE else "nm_large"
    big = backends.explain("sparse_linear", torch.randn(small_m + 1, 16), *FIELDS(pw))
    assert big.backend == "cpp" and f"route '{want}'" in " ".join(big.notes) and f"M={small_m + 1}" in str(big), big
    dense_nm = _weight("4:8", w)  # density 0.5: the same route
    assert f"route '{want}'" in str(backends.explain("sparse_linear", torch.randn(small_m * 2 + 1, 16),
                                                      *FIELDS(dense_nm)))
    bm = backends.explain("sparse_linear", torch.randn(1, 16), *FIELDS(_weight("bitmap", w)))
    assert bm.backend == "cpp", bm
    bsr = backends.explain("sparse_linear", torch.randn(1, 16), *FIELDS(_weight("bsr", w)))
    assert bsr.backend == "cpp" and "route 'bsr'" in " ".join(bsr.notes), bsr
    half = NMPackedWeight.from_dense(w.half(), prune(w, "2:4"), "2:4")
    hx = backends.explain("sparse_linear", torch.randn(1, 16), *FIELDS(half))
    assert hx.backend == "torch" and "float32 or int8 values" in hx.refused["cpp"], hx


@pytest.mark.parametrize("kind", ["2:4", "1:2", "bitmap"])
@pytest.mark.parametrize("quantize", [None, "int8"])
def test_both_cpp_routes_match_float64(kind, quantize, monkeypatch):
    """Every route (small-M kernel, large-M kernel, expand + sgemm) against the float64 math at the same M, by
    moving the crossover and the large kernel's density limit (so no route goes untested whatever the
    recorded table says)."""
    w = torch.randn(37, 113)
    pw = _weight(kind, w, quantize)
    x = torch.randn(5, 113)
    bias = torch.randn(37)
    seen = set()
    for max_m, large_density in ((0, 0.5), (0, 0.0), (100, 0.5)):
        table = {key: sparse_linear_routes.Crossover(max_m, c.density, c.measured_on)
                 for key, c in sparse_linear_routes.CROSSOVER_M.items()}
        monkeypatch.setattr(sparse_linear_routes, "CROSSOVER_M", table)
        monkeypatch.setattr(sparse_linear_routes, "NM_LARGE_MAX_DENSITY", large_density)
        monkeypatch.setattr(sparse_linear_routes, "NM_LARGE_LOSES_TO_DENSE", frozenset())
        with backends.use("cpp"):
            notes = " ".join(backends.explain("sparse_linear", x, *FIELDS(pw), bias).notes)
            seen.add(notes.split("route ")[1].split(":")[0])
            _check_close(llmaccel.sparse_linear(x, *FIELDS(pw), bias), x, pw, bias, f"{kind} {quantize} {notes}")
    assert seen == ({"'nm'", "'nm_large'", "'expand'"} if kind != "bitmap" else {"'bitmap'", "'expand'"}), seen


def test_expand_matches_to_dense_bit_for_bit_and_rejects_corrupt_bitmaps():
    from llmaccel.sparsity.cpu_expand import bitmap_expand_raw, nm_expand_raw
    w = torch.randn(19, 1003)
    for quantize in (None, "int8"):
        nm = NMPackedWeight.from_dense(w, prune(w, "2:4"), "2:4", quantize=quantize)
        got = nm_expand_raw(nm.values, nm.indices, nm.scale, 2, 4, 1003)
        assert torch.equal(got, nm.to_dense()), quantize
        bm = BitmapWeight.from_dense(w, prune(w, "unstructured", sparsity=0.9), quantize=quantize)
        got = bitmap_expand_raw(bm.values, bm.bitmap, bm.row_offsets, bm.scale, 1003)
        assert torch.equal(got, bm.to_dense()), quantize
    offsets = bm.row_offsets.clone()
    offsets[5] += 1  # row 4 claims one value more than its bitmap has, row 5 one fewer
    with pytest.raises(ValueError, match="sparse_bitmap_expand.*row 4"):
        bitmap_expand_raw(bm.values, bm.bitmap, offsets, bm.scale, 1003)
    offsets = bm.row_offsets.clone()
    offsets[-1] = bm.values.numel() + 1
    with pytest.raises(ValueError, match="row_offsets"):
        bitmap_expand_raw(bm.values, bm.bitmap, offsets, bm.scale, 1003)


def test_strided_inputs_and_half_precision():
    w = torch.randn(17, 113)
    for kind in ("2:4", "bitmap"):
        pw = _weight(kind, w)
        base = torch.randn(113, 6)
        x = base.t()[::2]                     # [3, 113], column stride 6
        assert not x.is_contiguous()
        for name in _runnable(x, *FIELDS(pw)):
            _check_close(_on(name, x, *FIELDS(pw)), x, pw, None, f"{name} strided {kind}")
        for dtype in (torch.float16, torch.bfloat16):
            xh = torch.randn(3, 113).to(dtype)
            ref = (xh.double() @ pw.to_dense().double().t())
            for name in _runnable(xh, *FIELDS(pw)):
                y = _on(name, xh, *FIELDS(pw))
                assert y.dtype == dtype
                tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
                assert torch.allclose(y.double(), ref, rtol=tol, atol=tol * ref.abs().max()), (name, dtype)


def test_extreme_magnitudes():
    w = torch.randn(9, 40)
    for scale in (1e-30, 1e30):
        pw = _weight("2:4", w * scale)
        x = torch.randn(2, 40) * (1e-5 if scale > 1 else 1e5)
        for name in _runnable(x, *FIELDS(pw)):
            _check_close(_on(name, x, *FIELDS(pw)), x, pw, None, f"{name} scale {scale}")


# --------------------------------------------------------------------------
# autograd
# --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_backward_matches_autograd_of_dense_pruned_math(kind):
    n_out, k = 17, 113
    w = torch.randn(n_out, k)
    pw = _weight(kind, w)
    mask = pw.mask() if hasattr(pw, "mask") else pw.to_dense() != 0
    x0, b0, g = torch.randn(2, 3, k), torch.randn(n_out), torch.randn(2, 3, n_out)
    # float64 reference: autograd through the dense pruned weight, gradient kept at the kept positions
    W64 = pw.to_dense().double().requires_grad_(True)
    x64, b64 = x0.double().requires_grad_(True), b0.double().requires_grad_(True)
    torch.nn.functional.linear(x64, W64, b64).backward(g.double())
    from llmaccel.ops.sparse_linear_layouts import values_grad
    want_values = values_grad(pw, W64.grad)
    values, index, offsets, scale, layout, meta = FIELDS(pw)
    for name in _runnable(x0, *FIELDS(pw), b0):
        x, b = x0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
        v = values.clone().requires_grad_(True)
        _on(name, x, v, index, offsets, scale, layout, meta, b).backward(g)
        assert torch.allclose(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-5), (name, kind)
        assert torch.allclose(b.grad.double(), b64.grad, rtol=1e-5, atol=1e-5), (name, kind)
        assert v.grad.shape == values.shape
        assert torch.allclose(v.grad.double(), want_values, rtol=1e-5, atol=1e-4), (name, kind)
        # the dense-pruned gradient is exactly zero nowhere it matters: pruned positions have no value slot
        assert int(mask.sum()) <= values.numel()


def test_int8_values_are_frozen_but_x_gets_its_gradient():
    w = torch.randn(5, 24)
    pw = _weight("2:4", w, "int8")
    x = torch.randn(3, 24, requires_grad=True)
    llmaccel.sparse_linear(x, *FIELDS(pw)).sum().backward()
    ref = torch.ones(3, 5, dtype=torch.float64) @ pw.to_dense().double()
    assert torch.allclose(x.grad.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ("2:4", "bitmap", "bsr"))
def test_sparse_fine_tuning_keeps_the_mask_and_lowers_the_loss(kind):
    n_out, k = 16, 64
    pw = _weight(kind, torch.randn(n_out, k))
    dense_mask = pw.to_dense() != 0
    teacher = torch.where(dense_mask, torch.randn(n_out, k), 0.0)  # reachable with this mask: loss -> 0
    values, index, offsets, scale, layout, meta = FIELDS(pw)
    values = torch.nn.Parameter(values.clone())
    opt = torch.optim.SGD([values], lr=1.0)
    losses = []
    for _ in range(20):
        x = torch.randn(32, k)
        y = llmaccel.sparse_linear(x, values, index, offsets, scale, layout, meta)
        loss = (y - x @ teacher.t()).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses
    from llmaccel.ops.sparse_linear_layouts import weight_of
    tuned = weight_of(k, values.detach(), index, offsets, scale, layout, meta).to_dense()
    assert bool((tuned[~dense_mask] == 0).all()), "a pruned weight became non-zero"
    assert bool((tuned != pw.to_dense()).any())


def test_opcheck():
    w = torch.randn(7, 19)
    for kind in ("2:4", "bitmap", "bsr"):
        for quantize in (None, "int8"):
            pw = _weight(kind, w, quantize)
            values, index, offsets, scale, layout, meta = FIELDS(pw)
            for bias in (torch.randn(7), None):
                x = torch.randn(3, 19)
                for name in _runnable(x, *FIELDS(pw), bias):
                    with backends.use(name):
                        torch.library.opcheck(torch.ops.llmaccel.sparse_linear.default,
                                              (x, values, index, offsets, scale, layout, meta, bias))
                        if quantize is None:
                            xg = x.clone().requires_grad_(True)
                            vg = values.clone().requires_grad_(True)
                            bg = bias.clone().requires_grad_(True) if bias is not None else None
                            torch.library.opcheck(torch.ops.llmaccel.sparse_linear.default,
                                                  (xg, vg, index, offsets, scale, layout, meta, bg))


def test_torch_compile_traces_the_op():
    pw = _weight("2:4", torch.randn(8, 16))
    f = torch.compile(lambda x: llmaccel.sparse_linear(x, *FIELDS(pw)), backend="eager", fullgraph=True)
    x = torch.randn(2, 16)
    assert torch.allclose(f(x), llmaccel.sparse_linear(x, *FIELDS(pw)))


# --------------------------------------------------------------------------
# bad inputs
# --------------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors():
    w = torch.randn(6, 16)
    pw = _weight("2:4", w)
    values, index, offsets, scale, layout, meta = FIELDS(pw)
    x = torch.randn(2, 16)
    cases = [
        ((x.long(), values, index, None, None, "nm", [2, 4]), TypeError, r"sparse_linear: x must be float32"),
        ((torch.randn(2, 12), values, index, None, None, "nm", [2, 4]), ValueError, r"sparse_linear: values must have"),
        ((x, values, index, None, None, "coo", [2, 4]), ValueError, r"sparse_linear: layout must be one of"),
        ((x, values, index, None, None, "nm", [4, 4]), ValueError, r"sparse_linear: meta must be \[n, m\]"),
        ((x, values, index.int(), None, None, "nm", [2, 4]), TypeError, r"sparse_linear: index must have dtype"),
        ((x, values, index[:, :1], None, None, "nm", [2, 4]), ValueError, r"sparse_linear: index must have shape"),
        ((x, values, index, None, torch.ones(6), "nm", [2, 4]), TypeError, r"scale is given, so values must be int8"),
        ((x, values.to(torch.int8), index, None, None, "nm", [2, 4]), TypeError, r"values must be float32"),
        ((x, values, index, None, None, "nm", [2, 4], torch.randn(5)), ValueError, r"bias has 5 entries"),
        ((x, values, index, None, None, "nm", [2]), ValueError, r"sparse_linear: meta must be \[n, m\]"),
        ((x, values, index, torch.zeros(3, dtype=torch.int64), None, "nm", [2, 4]), ValueError,
         r"offsets must be None"),
        (("x", values, index, None, None, "nm", [2, 4]), TypeError, r"sparse_linear: x must be a torch.Tensor"),
        ((x, values, index, None, None, "nm", 4), TypeError, r"sparse_linear: meta must be a list of ints"),
        ((x, values, index, None, None, "nm", [2.0, 4]), TypeError, r"sparse_linear: meta must be a list of ints"),
    ]
    for args, exc, match in cases:
        with pytest.raises(exc, match=match):
            llmaccel.sparse_linear(*args)
        with pytest.raises(exc, match=match):
            backends.explain("sparse_linear", *args)
    bm = _weight("bitmap", w)
    bv, bi, bo, _, _, _ = FIELDS(bm)
    with pytest.raises(ValueError, match=r"offsets \(row_offsets\) must have N_out \+ 1"):
        llmaccel.sparse_linear(x, bv, bi, bo[:-1], None, "bitmap", [])
    bs = _weight("bsr", w)
    sv, si, so, _, _, _ = FIELDS(bs)
    with pytest.raises(ValueError, match=r"offsets \(crow_indices\) must have"):
        llmaccel.sparse_linear(x, sv, si, so, None, "bsr", [60])
    # the torch reference checks the data itself (a corrupt index): the format's own error
    bad = index.clone()
    bad[0, 0] = 0b0000  # two slots on column 0 of group 0: not strictly increasing
    with backends.use("torch"), pytest.raises(ValueError, match=r"strictly increasing"):
        llmaccel.sparse_linear(x, values, bad, None, None, "nm", [2, 4])


def test_backward_op_opcheck():
    w = torch.randn(7, 19)
    for kind in ("2:4", "bitmap", "bsr"):
        pw = _weight(kind, w)
        x = torch.randn(2, 3, 19)
        args = (torch.randn(2, 3, 7), x, *FIELDS(pw), True, True)
        torch.library.opcheck(torch.ops.llmaccel.sparse_linear_backward.default, args)
        torch.library.opcheck(torch.ops.llmaccel.sparse_linear_backward.default, args[:-2] + (True, False))
    with pytest.raises(ValueError, match=r"sparse_linear_backward: grad_y must have shape"):
        torch.ops.llmaccel.sparse_linear_backward(torch.randn(2, 7), x, *FIELDS(pw), True, True)


@pytest.mark.triton
def test_triton_nm_kernel_matches_float64_pruned_dense():
    """kernels/sparse_nm.py (in the interpreter on CPU, or on a GPU): odd shapes, strides, int8, tails."""
    probe = _weight("2:4", torch.randn(3, 8))
    if _explain_on("triton", torch.randn(1, 8), *FIELDS(probe)).backend != "triton":
        pytest.skip(str(_explain_on("triton", torch.randn(1, 8), *FIELDS(probe))))
    cases = [("2:4", None, 17, 113, (3,)), ("2:4", "int8", 33, 70, (1,)), ("4:8", None, 1, 3, (2, 17)),
             ("1:2", "int8", 3, 17, (1,)), ("2:16", None, 40, 37, (5,))]
    for kind, quantize, n_out, k, lead in cases:
        pw = _weight(kind, torch.randn(n_out, k), quantize)
        bias = torch.randn(n_out)
        x = torch.randn(*lead, k)
        _check_close(_on("triton", x, *FIELDS(pw), bias), x, pw, bias, f"triton {kind} {quantize} {n_out}x{k}")
        xs = torch.randn(k, 2 * lead[-1]).t()[::2]  # strided rows and columns
        _check_close(_on("triton", xs, *FIELDS(pw), None), xs, pw, None, f"triton strided {kind}")
    from llmaccel.kernels.sparse_nm import sparse_nm_linear
    for split in (2, 3):  # the decode split-K path (a GPU picks it by heuristic), forced here
        pw = _weight("2:4", torch.randn(37, 200), "int8")
        x, bias = torch.randn(3, 200), torch.randn(37)
        values, index, _, scale, _, (n, m) = FIELDS(pw)
        _check_close(sparse_nm_linear(x, values, index, scale, bias, n, m, split_k=split), x, pw, bias,
                     f"triton split-K {split}")
    pw = _weight("2:4", torch.randn(9, 40))
    with backends.use("triton"):
        torch.library.opcheck(torch.ops.llmaccel.sparse_linear.default, (torch.randn(2, 40), *FIELDS(pw), None))
    bm = _explain_on("triton", torch.randn(1, 40), *FIELDS(_weight("bitmap", torch.randn(9, 40))))
    assert bm.backend is None and "N:M and BSR layouts" in bm.refused["triton"], bm


@pytest.mark.triton
def test_triton_bsr_kernel_matches_float64_pruned_dense():
    """kernels/sparse_bsr.py: block sizes below and above 16, edge tiles, empty tile rows, int8, strides."""
    probe = _weight("bsr", torch.randn(8, 8))
    if _explain_on("triton", torch.randn(1, 8), *FIELDS(probe)).backend != "triton":
        pytest.skip(str(_explain_on("triton", torch.randn(1, 8), *FIELDS(probe))))
    cases = [((4, 8), 0.5, None, 17, 113, (3,)), ((16, 16), 0.7, "int8", 40, 70, (1,)), ((1, 1), 0.5, None, 3, 17, (2, 5)),
             ((3, 5), 0.4, "int8", 13, 37, (33,)), ((32, 32), 0.9, None, 70, 100, (17,))]
    for bs, sparsity, quantize, n_out, k, lead in cases:
        w = torch.randn(n_out, k)
        mask = prune(w, "block", sparsity=sparsity, block_size=bs)
        mask[: bs[0]] = False  # the first tile row empty: its outputs are the bias alone
        pw = BSRWeight.from_dense(w, mask, bs, quantize=quantize)
        bias = torch.randn(n_out)
        x = torch.randn(*lead, k)
        where = f"triton bsr {bs} {quantize} {n_out}x{k}"
        _check_close(_on("triton", x, *FIELDS(pw), bias), x, pw, bias, where)
        xs = torch.randn(k, 2 * lead[-1]).t()[::2]
        _check_close(_on("triton", xs, *FIELDS(pw), None), xs, pw, None, where + " strided")
