"""The C++ fused int8_linear kernel, every ISA variant, with plain and packed weights.

The op always runs the best variant; this drives each variant the CPU
supports through the raw binding, so the AVX2 and generic kernels (and their
packed panel layouts) are checked on an AVX-512 machine too.
"""

import pytest
import torch

import llmaccel
from llmaccel._ext import ext
from llmaccel.ops._cpp_views import view, view_or_none
from llmaccel.ops.int8_linear import int8_linear_reference

VARIANTS = llmaccel.cpu_info()["available_variants"].get("int8_mm", [])


def _packed(w, variant):
    N, K = w.shape
    out = torch.empty(ext().int8_mm_packed_size(variant, N, K), dtype=torch.int8)
    ext().int8_mm_pack_b(variant, view(w), view(out), 2)
    return out


def _run(x, w, s, b, variant, packed):
    y = torch.empty(x.shape[0], w.shape[0])
    p = _packed(w, variant) if packed else None
    ext().int8_linear_dynamic(view(x), view(w), view_or_none(p), view(s), view_or_none(b), view(y), 2, variant)
    return y


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (1, 67, 13), (3, 130, 7), (17, 64, 33), (40, 200, 6), (5, 4099, 11)])
def test_every_variant_matches_reference(variant, packed, M, K, N):
    x = torch.randn(M, K) * 3
    w = torch.randint(-127, 128, (N, K), dtype=torch.int8)
    s = torch.rand(N) * 0.02 + 1e-3
    b = torch.randn(N)
    ref = int8_linear_reference(x, w, s, b, "dynamic")
    out = _run(x, w, s, b, variant, packed)
    # Same quantized activations, exact int32 core; only fp32 epilogue rounding and
    # (rarely) a one-step difference in q at a rounding tie (x * 127/absmax vs x / scale).
    tol = 1e-5 * ref.abs().max() + (w.abs().sum(1).float() * s).max() * x.abs().amax(1).max() / 127
    err = (out - ref).abs()
    assert err.max() <= tol, (variant, packed)
    # Away from those ties the results agree to fp32 rounding.
    close = err <= 1e-5 * ref.abs().max() + 1e-6
    assert close.float().mean() >= 0.9, (variant, packed, close.float().mean())


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("packed", [False, True])
def test_every_row_tile_and_panel_edge(variant, packed):
    """Row counts around every tile height (decode 1-4 rows, then 4- and 5-row tiles and their ragged
    ends), N around 16-column panels, K off every alignment; output rows strided (y_sm > N).  Codes
    and int32 core are shared with the reference, so the check is tight except at rounding ties."""
    g = torch.Generator().manual_seed(11)
    cases = [(M, K, N) for M in (1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 68) for K, N in ((3, 16), (37, 17), (130, 31), (64, 48))]
    # More rows than 2 threads' L2 blocks at that K: each thread packs and runs its own row blocks.
    cases += [(301, 4099, 17), (257, 4099, 40)]
    for M, K, N in cases:
        x = torch.randn(M, K, generator=g) * 3
        w = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
        s = torch.rand(N, generator=g) * 0.02 + 1e-3
        b = torch.randn(N, generator=g)
        ref = int8_linear_reference(x, w, s, b, "dynamic")
        ybuf = torch.full((M, N + 5), float("nan"))
        y = ybuf[:, :N]
        p = _packed(w, variant) if packed else None
        ext().int8_linear_dynamic(view(x), view(w), view_or_none(p), view(s), view(b), view(y), 2, variant)
        assert ybuf[:, N:].isnan().all(), "wrote past the row's N outputs"
        tol = 1e-5 * ref.abs().max() + (w.abs().sum(1).float() * s).max() * x.abs().amax(1).max() / 127
        err = (y - ref).abs()
        assert err.max() <= tol, (variant, packed, M, K, N)
        assert (err <= 1e-5 * ref.abs().max() + 1e-6).float().mean() >= 0.9, (variant, packed, M, K, N)


def test_packed_size_and_colsums():
    for variant in VARIANTS:
        w = torch.randint(-128, 128, (13, 70), dtype=torch.int8)
        p = _packed(w, variant)
        colsum = p[-4 * 13:].view(torch.int32)
        assert torch.equal(colsum, w.long().sum(1).int()), variant


def test_bad_variant_and_arguments():
    w = torch.randint(-128, 128, (3, 5), dtype=torch.int8)
    with pytest.raises(ValueError, match="llmaccel::int8_mm_pack_b: unknown variant"):
        ext().int8_mm_packed_size("sse9", 3, 5)
    out = torch.empty(ext().int8_mm_packed_size("", 3, 5), dtype=torch.int8)
    with pytest.raises(ValueError, match="int8_mm_pack_b: out is a null pointer"):
        ext().int8_mm_pack_b("", view(w), (0, "int8", out.shape, out.stride()), 1)
    x = torch.randn(2, 5)
    with pytest.raises(ValueError, match="llmaccel::int8_linear: w_scale is a null pointer"):
        ext().int8_linear_dynamic(view(x), view(w), None, (0, "float32", (3,), (1,)), None, view(torch.empty(2, 3)), 1)


@pytest.mark.parametrize("variant", ["generic"] + [v for v in ("avx2", "avx512vnni") if v in VARIANTS])
# M >= 3 runs the register tile (8 x 3 rows x weight rows on AVX-512, 4 x 3 on AVX2): shapes that leave every
# ragged edge (rows, weight rows, K below / at / past one vector), and x rows with padding between them.  M <= 2
# runs the GEMV, whose AVX-512 walk takes 4 weight rows in lockstep: N = 101 and 66 give each thread whole
# groups and a ragged last one.
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (1, 67, 13), (2, 67, 13), (2, 4099, 11), (3, 130, 7), (17, 64, 33),
                                   (5, 4099, 11), (9, 15, 4), (13, 113, 7), (64, 200, 1), (8, 16, 3), (24, 17, 6),
                                   (37, 1000, 10), (1, 520, 101), (2, 96, 66)])
@pytest.mark.parametrize("x_pad", [0, 5])
def test_weight_only_every_variant(variant, M, K, N, x_pad):
    x = (torch.randn(M, K + x_pad) * 3)[:, :K]
    w = torch.randint(-127, 128, (N, K), dtype=torch.int8)
    s = torch.rand(N) * 0.02 + 1e-3
    b = torch.randn(N)
    y = torch.empty(M, N)
    ext().int8_linear_weight_only(view(x), view(w), view(s), view(b), view(y), 2, variant)
    ref = x.double() @ (w.double() * s.double()[:, None]).t() + b.double()
    # fp32 accumulation of K products: error grows like sqrt(K) ulps of the partial sums.
    bound = 1e-6 * (K ** 0.5 + 1) * ((x.abs().double() @ (w.abs().double() * s.double()[:, None]).t()) + b.abs().double())
    assert ((y.double() - ref).abs() <= bound + 1e-7).all(), variant


def test_packed_header_rejects_another_variant_shape_or_garbage():
    """Packed weights start with a header (variant, tile layout, N, K, format version) that the kernel
    checks: a buffer packed for another variant or shape raises instead of being misread."""
    N, K = 13, 70
    w = torch.randint(-128, 128, (N, K), dtype=torch.int8)
    x, s, y = torch.randn(2, K), torch.rand(N) + 0.01, torch.empty(2, N)

    def run(packed, variant, k=K):
        ext().int8_linear_dynamic(view(x[:, :k]), view(w[:, :k]), view(packed), view(s), None, view(y), 1, variant)

    for variant in VARIANTS:
        p = _packed(w, variant)
        assert bytes(p[:8].view(torch.uint8).tolist()) == b"LLMAPACK"
        run(p, variant)  # its own variant: fine
        with pytest.raises(ValueError, match=rf"w_packed holds variant '{variant}' .*N = 13, K = 70, but this call "
                                             rf"runs variant '{variant}' .*K = 69; repack"):
            run(p, variant, k=69)
        for other in VARIANTS:
            if other != variant:
                # the header names both variants; a buffer smaller than `other`'s layout is refused by its size
                with pytest.raises(ValueError, match=rf"holds variant '{variant}'.* runs variant '{other}'|"
                                                     r"w_packed has \d+ bytes, fewer than the \d+ of the packed layout"):
                    run(p, other)
        with pytest.raises(ValueError, match="w_packed is not a packed weight"):
            run(torch.zeros_like(p), variant)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("packed", [False, True])
def test_dynamic_core_is_exact_with_weights_at_minus_128(variant, packed):
    # x holds integers with absmax 127 per row, so it quantizes to itself with
    # scale 1; with w_scale = 1 and no bias, y is the int32 core's result,
    # which fits fp32 exactly here (|acc| <= 1000 * 127 * 128 < 2**24).  The
    # weights include -128 (not produced by our quantizer, but accepted): the
    # AVX2 sign-trick tile must stay exact for them.
    for M, K, N in [(1, 1, 1), (3, 31, 17), (17, 1000, 5), (4, 97, 113)]:
        x = torch.randint(-127, 128, (M, K)).float()
        x[:, 0] = 127.0
        for w in (torch.randint(-128, 128, (N, K), dtype=torch.int8), torch.full((N, K), -128, dtype=torch.int8)):
            x_ext = torch.full((M, K), -127.0)
            x_ext[:, 0] = 127.0
            for xx in (x, x_ext):
                ref = (xx.long() @ w.long().t()).float()
                out = _run(xx, w, torch.ones(N), None, variant, packed)
                assert torch.equal(out, ref), (variant, packed, M, K, N)


@pytest.mark.parametrize("variant", ["generic"] + [v for v in ("avx2", "avx512vnni") if v in VARIANTS])
@pytest.mark.parametrize("M,N", [(1, 5), (1, 101), (2, 67), (1, 1030)])
def test_weight_only_gemv_bit_identical_for_any_thread_count(variant, M, N):
    """The decode GEMV (M <= 2) reads its rows a segment apart in lockstep (AVX-512: 4 segments per thread) and
    the rows left over one by one; each row's arithmetic is the same either way, so 1, 2, 3 and 7 threads give
    the same bits."""
    K = 700
    x = torch.randn(M, K) * 3
    w = torch.randint(-127, 128, (N, K), dtype=torch.int8)
    s = torch.rand(N) * 0.02 + 1e-3
    b = torch.randn(N)
    runs = []
    for t in (1, 2, 3, 7):
        y = torch.empty(M, N)
        ext().int8_linear_weight_only(view(x), view(w), view(s), view(b), view(y), t, variant)
        runs.append(y)
    assert all(torch.equal(runs[0], r) for r in runs[1:]), variant
    ref = x.double() @ (w.double() * s.double()[:, None]).t() + b.double()
    assert torch.allclose(runs[0].double(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif("avx512vnni" not in VARIANTS, reason="needs a CPU with AVX-512 VNNI")
@pytest.mark.parametrize("M,K,N", [(1, 1, 3), (1, 63, 5), (2, 64, 9), (1, 65, 17), (2, 2049, 13), (1, 4099, 66),
                                   (2, 113, 1000)])
def test_weight_only_integer_gemv_error_bound(M, K, N):
    """At M <= 2 the AVX-512 VNNI unit carries each row of x as a 24-bit integer q = round(x / s), s = max|x| /
    (2^23 - 1), and sums q * W exactly in integers (int8_linear_wo_gemv_vnni.h).  So against float64 its error
    is x's rounding, |x - s q| <= s / 2 per element (plus fp32's rounding of x / s, below one more unit), times
    |W| summed, plus the final fp32 scaling: the bound below.  Rows with an outlier 10^4 x the rest, weights at
    -128 and 127, and K off every vector width."""
    x = torch.randn(M, K)
    x[:, K // 2] = 1e4
    w = torch.randint(-128, 128, (N, K), dtype=torch.int8)
    w[0] = -128
    if N > 1:
        w[1] = 127
    s = torch.rand(N) * 0.02 + 1e-3
    b = torch.randn(N)
    y = torch.empty(M, N)
    ext().int8_linear_weight_only(view(x), view(w), view(s), view(b), view(y), 2, "avx512vnni")
    xd, wd, sd = x.double(), w.double(), s.double()
    ref = xd @ (wd * sd[:, None]).t() + b.double()
    step = xd.abs().amax(dim=1, keepdim=True) / (2 ** 23 - 1)  # s per row of x
    quant = step * (wd.abs().sum(dim=1) * sd)[None, :]  # |x - s q| <= s per element, times sum |W| * scale
    rounding = 2.0 ** -23 * ((xd.abs() @ (wd.abs() * sd[:, None]).t()) + b.double().abs())
    assert ((y.double() - ref).abs() <= quant + rounding).all()


@pytest.mark.skipif("avx512vnni" not in VARIANTS, reason="needs a CPU with AVX-512 VNNI")
def test_weight_only_integer_gemv_falls_back_where_x_cannot_be_an_integer():
    """Rows the 24-bit form cannot carry (an inf or NaN, a maximum below 1e-30, a zero row, K above 65536) give
    what the fp32 GEMV gives: inf / NaN propagate, tiny values keep their relative accuracy, zero rows give the
    bias."""
    N, K = 7, 300
    w = torch.randint(-127, 128, (N, K), dtype=torch.int8)
    w[:, 3] = 5  # every output meets x[:, 3]
    s = torch.rand(N) * 0.02 + 1e-3
    b = torch.randn(N)

    def run(x):
        y = torch.empty(x.shape[0], N)
        ext().int8_linear_weight_only(view(x), view(w[:, :x.shape[1]]), view(s), view(b), view(y), 2, "avx512vnni")
        return y

    x = torch.randn(2, K)
    x[0, 3] = float("inf")
    y = run(x)
    assert torch.isinf(y[0]).all() and torch.isfinite(y[1]).all()
    x[0, 3] = float("nan")
    assert torch.isnan(run(x)[0]).all()
    tiny = torch.randn(1, K) * 1e-35  # no bias here, so the tiny outputs are compared with their own scale
    y = torch.empty(1, N)
    ext().int8_linear_weight_only(view(tiny), view(w), view(s), None, view(y), 2, "avx512vnni")
    ref = tiny.double() @ (w.double() * s.double()[:, None]).t()
    assert (y != 0).all() and torch.allclose(y.double(), ref, rtol=1e-4, atol=0)
    assert torch.equal(run(torch.zeros(1, K)), b[None, :])
    # K = 65537: past the integer form's exact range, the fp32 GEMV runs (same answer within fp32 rounding).
    Kbig = 65537
    xb, wb = torch.randn(1, Kbig), torch.randint(-127, 128, (3, Kbig), dtype=torch.int8)
    yb = torch.empty(1, 3)
    ext().int8_linear_weight_only(view(xb), view(wb), view(s[:3]), view(b[:3]), view(yb), 2, "avx512vnni")
    refb = xb.double() @ (wb.double() * s[:3].double()[:, None]).t() + b[:3].double()
    assert torch.allclose(yb.double(), refb, rtol=1e-5, atol=1e-4)
