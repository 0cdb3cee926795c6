"""llmaccel.int8_mm: every backend against the exact integer reference."""

import threading

import pytest
import torch

import llmaccel
from llmaccel._ext import ext
from llmaccel.ops._cpp_views import view
from llmaccel.ops.int8_mm import MAX_K

from cpp_calls import call_views
from helpers import INTERPRET, cpu_backends, int8_mm_exact, randint8

# (M, K, N): ones, primes, tails of every vector width (16, 64), K > 4096.
SMALL_SHAPES = [(1, 1, 1), (3, 17, 5), (17, 33, 1), (1, 64, 7), (33, 113, 17), (2, 4099, 3), (7, 65, 13)]
LARGE_SHAPES = [(1000, 113, 37), (113, 1000, 67), (67, 4099, 29), (5, 257, 1000), (129, 512, 96)]


def _layouts(M, K, N):
    """(a, b) pairs over the layouts models produce."""
    w = randint8(N, K)  # nn.Linear weight [N, K]
    a = randint8(M, K)
    yield "a row-major, b = W.t()", a, w.t()
    yield "a row-major, b row-major", a, w.t().contiguous()
    yield "a column-major, b = W.t()", a.t().contiguous().t(), w.t()
    # Non-unit strides everywhere and storage offsets.
    big_a = randint8(M + 1, 2 * K + 1)
    big_w = randint8(2 * N + 1, K + 2)
    yield "strided slices", big_a[1:, 1::2], big_w[1::2, 2:].t()


def _check_all_backends(shapes):
    for M, K, N in shapes:
        for layout, a, b in _layouts(M, K, N):
            ref = int8_mm_exact(a, b)
            for name, fn in cpu_backends():
                out = fn(a, b)
                assert out.dtype == torch.int32 and out.shape == (M, N), (name, layout)
                assert torch.equal(out, ref), f"{name} differs from the exact reference: {layout}, M,K,N={M},{K},{N}"


@pytest.mark.triton
def test_every_backend_matches_exact_reference_small():
    _check_all_backends(SMALL_SHAPES)


@pytest.mark.slow
def test_every_backend_matches_exact_reference_large():
    _check_all_backends(LARGE_SHAPES)


@pytest.mark.triton
@pytest.mark.parametrize("fill_a,fill_b", [(-128, -128), (-128, 127), (127, 127)])
def test_extreme_values(fill_a, fill_b):
    a = torch.full((3, 130), fill_a, dtype=torch.int8)
    b = torch.full((5, 130), fill_b, dtype=torch.int8).t()
    for name, fn in cpu_backends():
        assert torch.equal(fn(a, b), int8_mm_exact(a, b)), name


def _avx2_operand_pairs():
    """(label, a, b) that drive the AVX2 variant down each of its two tiles.

    The sign-trick tile (vpabsb / vpsignb + vpmaddubsw) takes any A without
    -128 (any B, -128 included); an A holding -128 goes to the exact 16-bit
    tile.  Extremes, odd shapes, K off every vector width, strided and
    transposed views.
    """
    for M, K, N in [(1, 1, 1), (3, 31, 17), (17, 33, 3), (113, 65, 1), (1, 127, 113), (5, 4099, 3)]:
        sym = torch.randint(-127, 128, (M, K), dtype=torch.int8)  # sign tile
        full = randint8(M, K)
        full.view(-1)[0] = -128  # exact tile
        w = randint8(N, K)
        for fa, fb in [(-127, -128), (127, 127), (-127, 127), (127, -128), (-128, -128), (-128, 127)]:
            yield f"fill {fa} x {fb}", torch.full((M, K), fa, dtype=torch.int8), torch.full((K, N), fb, dtype=torch.int8)
        for label, a in [("a in [-127, 127]", sym), ("a with -128", full)]:
            yield f"{label}, b = W.t()", a, w.t()
            yield f"{label}, a transposed view, b row-major", a.t().contiguous().t(), w.t().contiguous()
            big = torch.zeros((M, 2 * K + 1), dtype=torch.int8)
            big[:, 1::2] = a
            yield f"{label}, strided a", big[:, 1::2], w.t()
        mixed = sym.clone()
        mixed[:, ::3] = 127
        mixed[::2, 1::3] = -127
        yield "mixed 127 / -127 columns", mixed, torch.full((N, K), -128, dtype=torch.int8).t()


# The 256-bit units (int8_mm_ymm.h): AVX2's vpmaddubsw sequence and AVX-VNNI's vpdpbusd, each where the CPU has it.
_INT8_MM = llmaccel.cpu_info()["available_variants"].get("int8_mm", [])
YMM_VARIANTS = [v for v in ("avx2", "avxvnni") if v in _INT8_MM]
# Every unit with an outer-product tile (int8_mm_outer.h), and those of them that store A as a + 128.
OUTER_VARIANTS = YMM_VARIANTS + [v for v in ("avx512vnni",) if v in _INT8_MM]
BIASED_OUTER_VARIANTS = [v for v in ("avxvnni", "avx512vnni") if v in _INT8_MM]


@pytest.mark.skipif(not YMM_VARIANTS, reason="needs an AVX2 CPU")
@pytest.mark.parametrize("variant", YMM_VARIANTS)
def test_ymm_sign_trick_and_exact_tiles_are_exact(variant):
    from llmaccel.ops.int8_mm import int8_mm_cpp

    for label, a, b in _avx2_operand_pairs():
        ref = int8_mm_exact(a, b)
        out = int8_mm_cpp(a, b, variant)
        assert torch.equal(out, ref), f"{variant}: {label}, M,K,N={a.shape[0]},{a.shape[1]},{b.shape[1]}"


def _outer_tile_cases():
    """(label, a, b, c_strided) reaching the outer-product tiles: int8_mm with >= 64 rows (AVX2: no -128 in A,
    else its exact 16-bit tile runs; AVX-VNNI and AVX-512 VNNI: any A, stored as a + 128).

    Every ragged row count of the 4-row (AVX2), 6-row (AVX-VNNI) and 8-row (AVX-512) tiles, partial 16- and
    32-column panels, K off
    the 4-byte quad, the largest pair sums the AVX2 tile meets (-127 x -128 twice: 32512 of int16's 32767),
    A = -128 everywhere (the biased code 0), strided A, B and C.
    """
    # (301, 4099, 33): more rows than 2 threads' L2 blocks at that K, so each thread runs its own rows (AVX2;
    # from K = 1024 the AVX-512 VNNI unit reads plain columns with its dot-product tile); (1201, 1001, 19): the
    # same below that K, for up to 3 threads.
    for M, K, N in [(64, 1, 1), (65, 3, 15), (66, 5, 16), (67, 63, 17), (68, 385, 33), (69, 7, 16), (71, 9, 3),
                    (70, 11, 31), (75, 13, 32), (77, 2, 65), (129, 130, 47), (301, 4099, 33), (1201, 1001, 19)]:
        sym = torch.randint(-127, 128, (M, K), dtype=torch.int8)
        w = randint8(N, K)
        yield f"random, M,K,N={M},{K},{N}", sym, w.t(), False
        for fa, fb in [(-127, -128), (127, -128), (-127, 127), (-128, -128), (-128, 127)]:
            yield (f"fill {fa} x {fb}, M,K,N={M},{K},{N}", torch.full((M, K), fa, dtype=torch.int8),
                   torch.full((K, N), fb, dtype=torch.int8), False)
        big = torch.zeros((M, 2 * K + 1), dtype=torch.int8)
        big[:, 1::2] = sym
        yield f"strided a, row-major b, strided out, M,K,N={M},{K},{N}", big[:, 1::2], w.t().contiguous(), True


@pytest.mark.skipif(not OUTER_VARIANTS, reason="needs an AVX2 CPU")
@pytest.mark.parametrize("variant", OUTER_VARIANTS)
def test_outer_product_tiles_are_exact(variant):
    for label, a, b, strided_out in _outer_tile_cases():
        M, K, N = a.shape[0], a.shape[1], b.shape[1]
        ref = int8_mm_exact(a, b)
        if strided_out:  # C written through a transposed view: column stride M, row stride 1
            out = torch.full((N, M), 7, dtype=torch.int32).t()
        else:
            out = torch.full((M, N), 7, dtype=torch.int32)
        for threads in (1, 2, 3):
            out.fill_(7)
            ext().int8_mm(view(a), view(b), view(out), threads, variant)
            assert torch.equal(out, ref), (variant, label, threads)


@pytest.mark.skipif(not BIASED_OUTER_VARIANTS, reason="needs a CPU with AVX-VNNI or AVX-512 VNNI")
@pytest.mark.parametrize("variant", BIASED_OUTER_VARIANTS)
def test_biased_outer_tile_exact_at_the_largest_k(variant):
    """The VNNI outer tiles sum (a + 128) * b and takes 128 * colsum(b) off: at K = 131071 (the largest
    int8_mm takes) with a = 127 against b = -128 the biased sum is 255 * -128 * K, far past int32, and only
    the wrap-around of both terms modulo 2^32 leaves the exact -127 * 128 * K.  Also a = -128 x b = -128
    (biased code 0: the whole result is the correction)."""
    K = 131071
    for fa, fb in [(127, -128), (-128, -128), (-128, 127)]:
        a = torch.full((64, K), fa, dtype=torch.int8)
        a[1::2, ::7] = -fa if fa != -128 else 127
        b = torch.full((K, 17), fb, dtype=torch.int8)
        b[::5, 3] = 1
        out = torch.full((64, 17), 7, dtype=torch.int32)
        ext().int8_mm(view(a), view(b), view(out), 2, variant)
        assert torch.equal(out, int8_mm_exact(a, b)), (variant, fa, fb)


@pytest.mark.slow
def test_longest_k_is_exact_at_the_int32_edge():
    # K = 131071 with all -128: every output is 131071 * 16384 = 2**31 - 16384,
    # the largest magnitude the op allows; intermediate VNNI sums wrap.
    a = torch.full((2, MAX_K), -128, dtype=torch.int8)
    b = torch.full((3, MAX_K), -128, dtype=torch.int8).t()
    expected = torch.full((2, 3), MAX_K * 16384, dtype=torch.int32)
    a_mixed, b_mixed = randint8(2, MAX_K), randint8(3, MAX_K).t()
    for name, fn in cpu_backends():
        assert torch.equal(fn(a, b), expected), name
        assert torch.equal(fn(a_mixed, b_mixed), int8_mm_exact(a_mixed, b_mixed)), name


def test_k_beyond_int32_range_raises():
    a = torch.ones((1, MAX_K + 1), dtype=torch.int8)
    b = torch.ones((MAX_K + 1, 1), dtype=torch.int8)
    with pytest.raises(ValueError, match=r"int8_mm.*K = 131072"):
        llmaccel.int8_mm(a, b)


def test_empty_dimensions():
    for M, K, N in [(0, 5, 3), (4, 0, 3), (4, 5, 0)]:
        a, b = randint8(M, K), randint8(K, N)
        for name, fn in cpu_backends():
            out = fn(a, b)
            assert out.shape == (M, N) and torch.equal(out, int8_mm_exact(a, b)), name


@pytest.mark.parametrize(
    "a,b,exc,pattern",
    [
        (torch.zeros(2, 3), torch.zeros(3, 4, dtype=torch.int8), TypeError, r"int8_mm: a must have dtype torch.int8"),
        (torch.zeros(2, 3, dtype=torch.int8), torch.zeros(3, 4, dtype=torch.int16), TypeError, r"b must have dtype"),
        (torch.zeros(3, dtype=torch.int8), torch.zeros(3, 4, dtype=torch.int8), ValueError, r"a must be 2-D"),
        (torch.zeros(2, 3, dtype=torch.int8), torch.zeros(1, 3, 4, dtype=torch.int8), ValueError, r"b must be 2-D"),
        (torch.zeros(2, 3, dtype=torch.int8), torch.zeros(4, 4, dtype=torch.int8), ValueError, r"K differ"),
        (torch.zeros(2, 3, dtype=torch.int8), torch.zeros(3, 4, dtype=torch.int8, device="meta"), ValueError,
         r"one device"),
        ("not a tensor", torch.zeros(3, 4, dtype=torch.int8), TypeError, r"a must be a torch.Tensor"),
    ],
)
def test_bad_input_raises_clear_error(a, b, exc, pattern):
    with pytest.raises(exc, match=pattern):
        llmaccel.int8_mm(a, b)
    # The raw op validates too (users may call torch.ops.llmaccel.int8_mm directly).
    if isinstance(a, torch.Tensor):
        with pytest.raises(Exception, match=pattern):
            torch.ops.llmaccel.int8_mm(a, b)


def test_cpp_layer_validates_raw_arguments():
    from llmaccel._ext import ext

    c = ext()
    a, b = randint8(4, 8), randint8(8, 4)
    out = torch.empty(4, 4, dtype=torch.int32)
    tensors = dict(a=a, b=b, c=out)
    call_views("int8_mm", tensors, dict(nthreads=1))
    assert torch.equal(out, int8_mm_exact(a, b))
    cases = [
        ({"a.addr": 0}, ValueError, "a is a null pointer"),
        ({"c.addr": 0}, ValueError, "out is a null pointer"),
        ({"a.sizes": (-1, 8)}, ValueError, "a has a negative size"),
        ({"b.strides": (-4, 1)}, ValueError, "negative stride"),
        ({"a.strides": (2**62, 1)}, OverflowError, "overflows int64"),
        ({"a.sizes": (4, MAX_K + 1), "a.strides": (0, 0), "b.sizes": (MAX_K + 1, 4), "b.strides": (0, 0)}, ValueError,
         "exceeds 131071"),
        ({"nthreads": 0}, ValueError, "nthreads"),
        ({"c.strides": (4, 0)}, ValueError, "overlap"),
        ({"variant": "avx9000"}, ValueError, "unknown variant"),
        ({"b.sizes": (7, 4)}, ValueError, r"b must have shape \[8, 4\] \(from the other tensors\), got \[7, 4\]"),
        ({"c.sizes": (4, 5)}, ValueError, r"c must have shape \[4, 4\]"),
        ({"a.dtype": "uint8"}, ValueError, "a must be int8, got uint8"),
        ({"c.dtype": "float32"}, ValueError, "c must be int32, got float32"),
    ]
    for change, exc, pattern in cases:
        with pytest.raises(exc, match="llmaccel::int8_mm: .*" + pattern):
            call_views("int8_mm", tensors, dict(nthreads=1, variant=""), **change)


def test_opcheck():
    a, b = randint8(5, 33), randint8(7, 33).t()
    torch.library.opcheck(torch.ops.llmaccel.int8_mm.default, (a, b))
    torch.library.opcheck(torch.ops.llmaccel.int8_mm.default, (randint8(1, 1), randint8(1, 1)))


@pytest.mark.skipif(INTERPRET, reason="compile pass is covered by the default run")
def test_torch_compile_fullgraph():
    a, b = randint8(6, 40), randint8(9, 40).t()

    @torch.compile(fullgraph=True, dynamic=False)
    def f(a, b):
        return llmaccel.int8_mm(a, b) * 2

    assert torch.equal(f(a, b), int8_mm_exact(a, b) * 2)


def test_thread_count_and_concurrent_callers():
    """Results do not depend on torch's thread count; the GIL is released and calls may run concurrently."""
    a, b = randint8(37, 300), randint8(45, 300).t()
    ref = int8_mm_exact(a, b)
    old = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            assert torch.equal(llmaccel.int8_mm(a, b), ref)
    finally:
        torch.set_num_threads(old)
    results = [None] * 4

    def work(i):
        results[i] = llmaccel.int8_mm(a, b)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(r, ref) for r in results)


@pytest.mark.cuda
@pytest.mark.triton
@pytest.mark.parametrize("M,K,N", SMALL_SHAPES + LARGE_SHAPES + [(512, 4096, 4096)])
def test_cuda_triton_matches_reference(M, K, N):
    a = randint8(M, K, device="cuda")
    w = randint8(N, K, device="cuda")
    ref = int8_mm_exact(a, w.t())
    with llmaccel.backends.use("triton"):
        assert torch.equal(llmaccel.int8_mm(a, w.t()).cpu(), ref)
        assert torch.equal(llmaccel.int8_mm(a, w.t().contiguous()).cpu(), ref)
    with llmaccel.backends.use("torch"):
        assert torch.equal(llmaccel.int8_mm(a, w.t()).cpu(), ref)
