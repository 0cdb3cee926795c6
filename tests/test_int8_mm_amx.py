"""The AMX int8 variant (csrc/int8_mm_amx.cpp) at its own edges.

The variant-parametrized tests (test_int8_mm.py, test_int8_linear_cpp_variants.py,
test_determinism.py) already run it where the CPU has AMX; these add the
shapes that cross its blocking: 16-row tiles, 32-row blocks, 16-column tiles,
32-column groups, 64-byte k chunks, and the row blocks that split M between
threads.  Exact integer references; the fp32 epilogue (with every activation)
must equal the generic variant's scalar epilogue bit for bit.
"""
import pytest
import torch

import llmaccel
from llmaccel._ext import ext
from llmaccel.ops._cpp_views import view, view_or_none
from llmaccel.ops.int8_mm import int8_mm_cpp

pytestmark = pytest.mark.skipif("amx" not in llmaccel.cpu_info()["available_variants"].get("int8_mm", []),
                                reason="needs a CPU with AMX-INT8 (and an OS that grants tile state)")

EDGE_M = [1, 15, 16, 17, 31, 32, 33, 48, 63, 65, 113]
EDGE_N = [1, 15, 16, 17, 31, 32, 33, 100]
EDGE_K = [1, 3, 63, 64, 65, 200, 4099]


def _ref(a, b):
    return (a.double() @ b.double()).long()


@pytest.mark.parametrize("K", EDGE_K)
def test_exact_across_tile_and_block_edges(K):
    torch.manual_seed(K)
    for M in EDGE_M:
        for N in EDGE_N:
            a = torch.randint(-128, 128, (M, K), dtype=torch.int8)
            b = torch.randint(-128, 128, (K, N), dtype=torch.int8)
            assert torch.equal(int8_mm_cpp(a, b, "amx").long(), _ref(a, b)), (M, K, N)
    for M in (256, 257, 289):  # the per-call tile repack of a plain B
        a = torch.randint(-128, 128, (M, K), dtype=torch.int8)
        b = torch.randint(-128, 128, (K, 33), dtype=torch.int8)
        assert torch.equal(int8_mm_cpp(a, b, "amx").long(), _ref(a, b)), (M, K)


def test_exact_at_the_extremes_and_for_strided_views():
    # -128 * -128 summed over K = 4099 is 67 M: wraps nothing in int32, and every product pair is extreme.
    # M >= 256: a plain B is repacked into tiles per call (below that the VNNI kernel reads it directly).
    M, K, N = 300, 4099, 45
    for fill_a, fill_b in [(-128, -128), (127, -128), (-128, 127), (127, 127)]:
        a = torch.full((M, K), fill_a, dtype=torch.int8)
        b = torch.full((K, N), fill_b, dtype=torch.int8)
        assert torch.equal(int8_mm_cpp(a, b, "amx").long(), _ref(a, b))
    # A as a transposed view (k-stride != 1), B as the transpose of an nn.Linear weight, and the reverse.
    at = torch.randint(-128, 128, (K, M), dtype=torch.int8)
    w = torch.randint(-128, 128, (N, K), dtype=torch.int8)
    assert torch.equal(int8_mm_cpp(at.t(), w.t(), "amx").long(), _ref(at.t(), w.t()))
    b = torch.randint(-128, 128, (K, N), dtype=torch.int8)
    assert torch.equal(int8_mm_cpp(at.t(), b, "amx").long(), _ref(at.t(), b))


def _linear(x, w, s, b, variant, activation, nthreads=2, smooth=None):
    M, K = x.shape
    N = w.shape[0]
    y = torch.empty(M, N)
    packed = torch.empty(ext().int8_mm_packed_size(variant, N, K), dtype=torch.int8)
    ext().int8_mm_pack_b(variant, view(w), view(packed), 2)
    ext().int8_linear_dynamic(view(x), view(w), view(packed), view(s), view_or_none(b), view(y), nthreads, variant,
                              view_or_none(smooth), activation)
    return y


@pytest.mark.parametrize("activation", ["", "gelu", "gelu_tanh", "relu"])
def test_fused_linear_equals_the_scalar_epilogue_bit_for_bit(activation):
    torch.manual_seed(1)
    for M, K, N in [(1, 64, 16), (17, 65, 33), (33, 384, 100), (113, 1000, 31), (64, 4099, 40)]:
        x = torch.randn(M, K) * 3
        x[0, :3] = torch.tensor([1e-30, -1e30, 0.0])  # one row dominated by a huge value
        w = torch.randint(-127, 128, (N, K), dtype=torch.int8)
        s = torch.rand(N) * 0.01 + 1e-4
        b = torch.randn(N)
        smooth = torch.rand(K) + 0.5
        for bias in (b, None):
            for sm in (None, smooth):
                got = _linear(x, w, s, bias, "amx", activation, smooth=sm)
                want = _linear(x, w, s, bias, "generic", activation, smooth=sm)
                assert torch.equal(got.view(torch.int32), want.view(torch.int32)), (M, K, N, activation)


def test_non_finite_rows_and_thread_counts():
    M, K, N = 40, 130, 70
    x = torch.randn(M, K)
    x[3, 5] = float("nan")
    x[20, 0] = float("inf")
    w = torch.randint(-127, 128, (N, K), dtype=torch.int8)
    s, b = torch.rand(N) + 0.01, torch.randn(N)
    want = _linear(x, w, s, b, "generic", "")
    for n in (1, 2, 3):
        got = _linear(x, w, s, b, "amx", "", nthreads=n)
        assert torch.equal(got.isnan(), want.isnan())
        assert torch.equal(got.nan_to_num(), want.nan_to_num())
    assert got[3].isnan().all() and got[20].isnan().all()


def test_packed_header_names_the_amx_layout():
    w = torch.randint(-128, 128, (33, 70), dtype=torch.int8)
    packed = torch.empty(ext().int8_mm_packed_size("amx", 33, 70), dtype=torch.int8)
    ext().int8_mm_pack_b("amx", view(w), view(packed), 1)
    x, s, y = torch.randn(2, 70), torch.rand(33) + 0.01, torch.empty(2, 33)
    with pytest.raises(ValueError, match=r"holds variant 'amx' \(layout 32 x 64, AMX tiles.*runs variant 'avx512vnni'"):
        ext().int8_linear_dynamic(view(x), view(w), view(packed), view(s), None, view(y), 1, "avx512vnni", None, "")


@pytest.mark.parametrize("activation", ["", "gelu"])
def test_both_loop_orders_equal_the_scalar_epilogue(activation):
    """M >= 128 * threads with a packed B under 1 MiB runs rows outside (a thread walks every column group
    of one 32-row block before the next); a larger B keeps the row-block order.  Both, with ragged last
    row blocks (a 12-row block takes the one-A-tile path) and ragged column groups, for 1-3 threads, must
    equal the generic variant bit for bit."""
    torch.manual_seed(2)
    for M, K, N in [(300, 200, 70), (256, 384, 1536), (289, 4099, 300)]:  # the last: B ~1.3 MiB
        x = torch.randn(M, K) * 2
        w = torch.randint(-127, 128, (N, K), dtype=torch.int8)
        s = torch.rand(N) * 0.01 + 1e-4
        b = torch.randn(N)
        want = _linear(x, w, s, b, "generic", activation)
        for n in (1, 2, 3):
            got = _linear(x, w, s, b, "amx", activation, nthreads=n)
            assert torch.equal(got.view(torch.int32), want.view(torch.int32)), (M, K, N, n)
