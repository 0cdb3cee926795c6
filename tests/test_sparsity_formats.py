"""Compressed sparse formats: exact round trips, int8 bounds, checkpoints, corrupt states, reference matmul."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors.torch import load_file, save_file

from llmaccel.sparsity import (BitmapWeight, BSRWeight, NMPackedWeight, prune, quantize_int8_per_row,
                               sparse_linear_reference)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(1, 1), (1, 3), (3, 17), (17, 113), (2, 4099)]
BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def weight(shape, dtype=torch.float32):
    """Random non-zero weights of every magnitude the dtype holds, with -0.0, subnormals and near-max values."""
    info = torch.finfo(dtype)
    w = torch.randn(shape) * torch.exp(torch.randn(shape) * 2)
    w = torch.where(w == 0, torch.ones_like(w), w).to(dtype)
    flat = w.view(-1)
    specials = [-0.0, info.tiny / 4, -info.tiny / 8, info.max / 2, -info.max / 3, info.tiny, 1e30]
    for i, v in enumerate(specials[: flat.numel()]):
        flat[(i * 7919) % flat.numel()] = min(v, info.max / 2) if v > 0 else v
    return w


def pruned(w, mask):
    return torch.where(mask, w, torch.zeros((), dtype=w.dtype))


def assert_bitwise(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.view(BITS[a.dtype]), b.view(BITS[b.dtype]))


def masks_for(fmt, w):
    """A mask the format is meant for, and for bitmap / BSR also an arbitrary one."""
    if fmt == "nm":
        return [("2:4", prune(w, "2:4")), ("1:4", prune(w, "1:4")), ("4:8", prune(w, "4:8")),
                ("3:5", prune(w, "3:5"))]
    if fmt == "bitmap":
        return [(None, prune(w, "unstructured", sparsity=0.7)), (None, torch.rand(w.shape) < 0.5)]
    return [((4, 8), prune(w, "block", sparsity=0.5, block_size=(4, 8))), ((32, 32), torch.rand(w.shape) < 0.01)]


def build(fmt, w, mask, arg, quantize=None):
    if fmt == "nm":
        return NMPackedWeight.from_dense(w, mask, arg, quantize=quantize)
    if fmt == "bitmap":
        return BitmapWeight.from_dense(w, mask, quantize=quantize)
    return BSRWeight.from_dense(w, mask, arg, quantize=quantize)


FMTS = ["nm", "bitmap", "bsr"]
CLASSES = {"nm": NMPackedWeight, "bitmap": BitmapWeight, "bsr": BSRWeight}


# ---------------------------------------------------------------- exact round trips

@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip_is_exact(fmt, dtype, shape):
    w = weight(shape, dtype)
    for arg, mask in masks_for(fmt, w):
        packed = build(fmt, w, mask, arg)
        dense = packed.to_dense()
        assert_bitwise(dense, pruned(w, mask))
        assert torch.equal(dense, w * mask)
        if fmt != "bsr":
            assert torch.equal(packed.mask(), mask)   # prune's N:M masks fill every slot, tails included


def test_round_trip_from_views():
    base = weight((113, 34))
    w = base.t()[:, ::2]                   # transposed and strided
    for fmt in FMTS:
        for arg, mask in masks_for(fmt, w):
            assert torch.equal(build(fmt, w, mask, arg).to_dense(), pruned(w.contiguous(), mask))


def test_from_dense_of_a_trainable_parameter_holds_no_autograd_history():
    w = torch.nn.Linear(113, 17).weight                      # requires_grad
    for fmt in FMTS:
        arg, mask = masks_for(fmt, w.detach())[0]
        packed = build(fmt, w, mask, arg)
        assert not any(t.requires_grad for t in packed.state_dict().values())
        assert isinstance(packed.shape, tuple) and packed.shape == (17, 113)


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_everything_pruned(quantize):
    w = weight((5, 11))
    none = torch.zeros(5, 11, dtype=torch.bool)
    for packed in (NMPackedWeight.from_dense(w, none, "2:4", quantize=quantize),
                   BitmapWeight.from_dense(w, none, quantize=quantize),
                   BSRWeight.from_dense(w, none, (2, 4), quantize=quantize)):
        rebuilt = type(packed).from_state_dict(packed.state_dict())
        assert torch.equal(rebuilt.to_dense(), torch.zeros(5, 11))
        assert quantize is None or torch.equal(packed.scale, torch.ones(5))


def test_nm_mask_with_fewer_than_n_kept():
    w = weight((3, 10))
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[0, 1] = mask[1, 2] = mask[1, 3] = mask[2, 9] = True   # some groups keep 0 or 1 of 2
    packed = NMPackedWeight.from_dense(w, mask, "2:4")
    assert_bitwise(packed.to_dense(), pruned(w, mask))
    assert (packed.mask() | ~mask).all()                        # a superset: spare slots point at dropped columns
    assert packed.mask()[2, 8:].tolist() == [False, True]       # the tail's spare slot points at padding


def test_2_4_index_layout_and_bytes():
    w = torch.arange(1.0, 17.0).view(1, 16)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, torch.tensor([1, 3, 0, 2, 2, 3, 0, 1]) + torch.tensor([0, 0, 4, 4, 8, 8, 12, 12])] = True
    packed = NMPackedWeight.from_dense(w, mask, "2:4")
    # groups (1,3) (0,2) (2,3) (0,1): byte = i0 | i1<<2 | i2<<4 | i3<<6, one byte per two groups
    assert packed.indices.tolist() == [[1 | 3 << 2 | 0 << 4 | 2 << 6, 2 | 3 << 2 | 0 << 4 | 1 << 6]]
    assert packed.values.tolist() == [[2.0, 4.0, 5.0, 7.0, 11.0, 12.0, 13.0, 14.0]]
    big = weight((64, 4096))
    ratio = NMPackedWeight.from_dense(big, prune(big, "2:4"), "2:4").nbytes() / (big.numel() * 4)
    assert ratio == (2 * 4 + 0.5) / 16 and ratio <= 0.54


def test_bitmap_bit_order_and_bytes():
    w = weight((2, 11))
    mask = torch.zeros(2, 11, dtype=torch.bool)
    mask[0, [0, 3, 8]] = True
    mask[1, [7, 10]] = True
    packed = BitmapWeight.from_dense(w, mask)
    assert packed.bitmap.tolist() == [[0b1001, 0b1], [0b10000000, 0b100]]
    assert packed.row_offsets.tolist() == [0, 3, 5]
    assert packed.nbytes() == 2 * 2 + 5 * 4 + 3 * 8


def test_bsr_layout_and_bytes():
    w = weight((5, 11))
    mask = torch.zeros(5, 11, dtype=torch.bool)
    mask[4, 10] = mask[0, 0] = mask[1, 9] = True                # tiles (0,0) (0,2) (2,2) of a 3x3 grid of 2x4
    packed = BSRWeight.from_dense(w, mask, (2, 4))
    assert packed.col_indices.tolist() == [0, 2, 2] and packed.crow_indices.tolist() == [0, 2, 2, 3]
    assert packed.values.shape == (3, 2, 4)
    assert packed.values[2, 1].abs().sum() == 0 and packed.values[1, :, 3].abs().sum() == 0  # zero padding
    assert packed.nbytes() == 3 * 8 * 4 + 3 * 4 + 4 * 8


# ---------------------------------------------------------------- int8

@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 3), (17, 113), (2, 4099)])
def test_int8_dequantizes_to_q_times_scale_within_half_a_step(fmt, dtype, shape):
    w = weight(shape, dtype)
    w[0] = w[0] * 1e-37 if dtype != torch.float16 else w[0]   # a row whose scale is subnormal in fp32
    w = torch.where(torch.isfinite(w), w, torch.ones_like(w))
    for arg, mask in masks_for(fmt, w):
        packed = build(fmt, w, mask, arg, quantize="int8")
        q, scale = packed.int8_dense()
        assert q.dtype == torch.int8 and scale.dtype == torch.float32 and packed.quantized
        assert int(q.abs().max()) <= 127 and not q[~mask].any()
        q_ref, scale_ref = quantize_int8_per_row(pruned(w, mask))
        assert torch.equal(q, q_ref) and torch.equal(scale, scale_ref)
        deq = packed.to_dense()
        assert deq.dtype == torch.float32
        assert torch.equal(deq, q.float() * scale[:, None])
        err = (deq.double() - pruned(w, mask).double()).abs()
        bound = scale.double()[:, None] / 2 + torch.clamp(deq.double().abs() * 2.0**-24, min=2.0**-150)
        assert torch.all(err <= bound)


def test_int8_scale_is_absmax_over_kept_values():
    w = torch.tensor([[100.0, -254.0, 3.0, 1.0], [0.5, 0.25, 0.0, 0.0], [7.0, 8.0, 9.0, 10.0]])
    mask = torch.tensor([[True, False, True, False], [True, False, False, False], [False] * 4])
    packed = BitmapWeight.from_dense(w, mask, quantize="int8")
    assert packed.scale.tolist() == [torch.tensor(100.0 / 127).item(), torch.tensor(0.5 / 127).item(), 1.0]
    assert packed.values.tolist() == [127, 4, 127]


def test_int8_subnormal_scale_is_rounded_up():
    step = 2.0**-149                                        # fp32's smallest subnormal
    w = torch.tensor([[165 * step, -7 * step]])             # 165 / 127 = 1.3 steps: to nearest would give 1 step
    q, scale = quantize_int8_per_row(w)                     # and 165 / 1 = 165 -> clamped to 127, off by 38 steps
    assert scale.item() == 2 * step
    assert q.tolist() == [[82, -4]]                         # 82.5 and -3.5 round half to even
    assert torch.all((q.double() * scale.double() - w.double()).abs() <= scale.double() / 2)


# ---------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("quantize", [None, "int8"])
def test_state_dict_round_trips_through_torch_load(fmt, quantize, tmp_path):
    w = weight((17, 113), torch.bfloat16)
    for i, (arg, mask) in enumerate(masks_for(fmt, w)):
        packed = build(fmt, w, mask, arg, quantize)
        state = packed.state_dict()
        assert all(type(v) is torch.Tensor for v in state.values())
        path = tmp_path / f"{fmt}{i}.pt"
        torch.save(state, path)
        loaded = CLASSES[fmt].from_state_dict(torch.load(path, weights_only=True))
        assert_bitwise(loaded.to_dense(), packed.to_dense())
        assert loaded.nbytes() == packed.nbytes()
        save_file(state, tmp_path / f"{fmt}{i}.safetensors")     # contiguous, unshared: safetensors takes it too
        loaded = CLASSES[fmt].from_state_dict(load_file(tmp_path / f"{fmt}{i}.safetensors"))
        assert_bitwise(loaded.to_dense(), packed.to_dense())


# ---------------------------------------------------------------- corrupt states

def _nm(pattern="2:4", shape=(3, 10), quantize=None):
    w = weight(shape)
    return NMPackedWeight.from_dense(w, prune(w, pattern), pattern, quantize=quantize).state_dict()


def _bitmap(quantize=None):
    w = weight((3, 11))
    return BitmapWeight.from_dense(w, prune(w, "unstructured", sparsity=0.5), quantize=quantize).state_dict()


def _bsr(quantize=None):
    w = weight((5, 11))
    mask = torch.zeros(5, 11, dtype=torch.bool)
    mask[4, 10] = mask[0, 0] = mask[1, 9] = mask[0, 5] = True
    return BSRWeight.from_dense(w, mask, (2, 4), quantize=quantize).state_dict()


def _set(state, key, value):
    state = dict(state)
    state[key] = value
    return state


def _byte(state, key, row, col, value):
    t = state[key].clone()
    t[row, col] = value
    return _set(state, key, t)


CORRUPT = [
    # N:M
    ("nm", lambda: _set(_nm(), "values", _nm()["values"][:, :-1]), "'values'"),
    ("nm", lambda: _set(_nm(), "values", _nm()["values"].double()), "'values'"),
    ("nm", lambda: _set(_nm(), "values", _nm()["values"].to(torch.int8)), "'values'"),   # int8 without scale
    ("nm", lambda: _set(_nm(), "indices", _nm()["indices"].to(torch.int32)), "'indices'"),
    ("nm", lambda: _set(_nm(), "indices", _nm()["indices"][:, :1]), "'indices'"),
    ("nm", lambda: _byte(_nm(), "indices", 0, 0, 0b0101), "strictly increasing"),         # group 0: columns 1, 1
    ("nm", lambda: _byte(_nm(), "indices", 0, 0, 0b0111), "strictly increasing"),         # columns 3, 1
    ("nm", lambda: _byte(_nm("2:3", (2, 9)), "indices", 0, 0, 0b1101), "column >= M"),   # columns 1, 3 of 2:3
    ("nm", lambda: _byte(_nm(shape=(3, 10)), "indices", 0, 1, 0xFF), "'indices'"),        # padding bits set
    ("nm", lambda: _byte(_nm(shape=(2, 9)), "values", 0, 5, 1.0), "points past K"),   # tail's spare slot: col 9
    ("nm", lambda: _set(_nm(), "pattern", torch.tensor([1, 4])), "'values'"),              # mismatched N:M
    ("nm", lambda: _set(_nm(), "pattern", torch.tensor([4, 2])), "'pattern'"),
    ("nm", lambda: _set(_nm(), "pattern", torch.tensor([2.0, 4.0])), "'pattern'"),
    ("nm", lambda: _set(_nm(), "shape", torch.tensor([3, 10, 1])), "'shape'"),
    ("nm", lambda: _set(_nm(), "shape", torch.tensor([3, 99])), "'values'"),
    ("nm", lambda: _set(_nm(), "values", torch.full_like(_nm()["values"], torch.nan)), "NaN"),
    ("nm", lambda: {k: v for k, v in _nm().items() if k != "indices"}, "missing fields \\['indices'\\]"),
    ("nm", lambda: _set(_nm(), "extra", torch.zeros(1)), "unexpected fields \\['extra'\\]"),
    ("nm", lambda: _set(_nm(quantize="int8"), "scale", torch.ones(2)), "'scale'"),
    ("nm", lambda: _set(_nm(quantize="int8"), "scale", -torch.ones(3)), "'scale'"),
    ("nm", lambda: _set(_nm(quantize="int8"), "scale", torch.ones(3, dtype=torch.float64)), "'scale'"),
    ("nm", lambda: _set(_nm(quantize="int8"), "values", torch.full((3, 6), -128, dtype=torch.int8)), "-128"),
    ("nm", lambda: [1, 2], "mapping"),
    # bitmap
    ("bitmap", lambda: _set(_bitmap(), "bitmap", _bitmap()["bitmap"].to(torch.int8)), "'bitmap'"),
    ("bitmap", lambda: _set(_bitmap(), "bitmap", _bitmap()["bitmap"][:, :1]), "'bitmap'"),
    ("bitmap", lambda: _byte(_bitmap(), "bitmap", 0, 1, 0b11111000), "past column K"),
    ("bitmap", lambda: _byte(_bitmap(), "bitmap", 0, 0, 0), "'row_offsets'"),
    ("bitmap", lambda: _set(_bitmap(), "row_offsets", _bitmap()["row_offsets"] + 1), "'row_offsets'"),
    ("bitmap", lambda: _set(_bitmap(), "row_offsets", _bitmap()["row_offsets"].int()), "'row_offsets'"),
    ("bitmap", lambda: _set(_bitmap(), "values", _bitmap()["values"][:-1]), "'values'"),
    ("bitmap", lambda: _set(_bitmap(), "values", _bitmap()["values"].view(1, -1)), "'values'"),
    ("bitmap", lambda: _set(_bitmap(), "shape", torch.tensor([3, 0])), "'shape'"),
    ("bitmap", lambda: _set(_bitmap(quantize="int8"), "values", _bitmap()["values"]), "'values'"),  # float + scale
    # BSR
    ("bsr", lambda: _set(_bsr(), "col_indices", torch.tensor([0, 1, 3, 2], dtype=torch.int32)), "'col_indices'"),
    ("bsr", lambda: _set(_bsr(), "col_indices", torch.tensor([1, 0, 2, 2], dtype=torch.int32)), "increasing"),
    ("bsr", lambda: _set(_bsr(), "col_indices", torch.tensor([0, 1, 2, 2])), "'col_indices'"),
    ("bsr", lambda: _set(_bsr(), "crow_indices", torch.tensor([0, 3, 2, 4])), "'crow_indices'"),
    ("bsr", lambda: _set(_bsr(), "crow_indices", torch.tensor([0, 3, 3, 5])), "'crow_indices'"),
    ("bsr", lambda: _set(_bsr(), "crow_indices", torch.tensor([0, 3, 4])), "'crow_indices'"),
    ("bsr", lambda: _set(_bsr(), "values", torch.ones(4, 2, 4)), "padding"),
    ("bsr", lambda: _set(_bsr(), "values", _bsr()["values"][:, :, :3]), "'values'"),
    ("bsr", lambda: _set(_bsr(), "block_size", torch.tensor([4, 2])), "'values'"),
    ("bsr", lambda: _set(_bsr(), "block_size", torch.tensor([0, 4])), "'block_size'"),
    ("bsr", lambda: _set(_bsr(quantize="int8"), "scale", torch.ones(6)), "'scale'"),
]


@pytest.mark.parametrize("fmt, make, match", CORRUPT, ids=[f"{c[0]}-{i}" for i, c in enumerate(CORRUPT)])
def test_corrupt_state_raises_naming_format_and_field(fmt, make, match):
    with pytest.raises(ValueError, match=match) as info:
        CLASSES[fmt].from_state_dict(make())
    assert CLASSES[fmt].__name__ in str(info.value)


def test_bsr_padding_of_a_right_edge_tile_is_checked():
    state = _bsr()
    values = state["values"].clone()
    values[2, 0, 3] = 1.0                    # tile (0, 2) covers columns 8..11 of K = 11: column 11 is padding
    with pytest.raises(ValueError, match="BSRWeight: .*padding columns"):
        BSRWeight.from_state_dict(_set(state, "values", values))


@pytest.mark.parametrize("fmt", FMTS)
def test_from_dense_bad_input(fmt):
    cls, w = CLASSES[fmt], weight((4, 8))
    extra = ("2:4",) if fmt == "nm" else ((2, 4),) if fmt == "bsr" else ()
    good = torch.ones(4, 8, dtype=torch.bool) if fmt != "nm" else prune(w, "2:4")
    cases = [((w, good.int()), "mask must be a bool"), ((w, good[:, :4]), "mask must have the weight's shape"),
             ((w.double(), good), "float32, float16 or bfloat16"), ((w.half().int(), good), "floating-point"),
             ((torch.full((4, 8), torch.nan), good), "NaN or inf")]
    for args, match in cases:
        with pytest.raises(ValueError, match=match) as info:
            cls.from_dense(*args, *extra)
        assert f"{cls.__name__}.from_dense" in str(info.value)
    with pytest.raises(ValueError, match="quantize must be None or 'int8'"):
        cls.from_dense(w, good, *extra, quantize="int4")
    with pytest.raises(ValueError, match="is not quantized"):
        cls.from_dense(w, good, *extra).int8_dense()


def test_nm_from_dense_rejects_a_mask_keeping_too_many():
    w = weight((3, 10))
    mask = prune(w, "2:4")
    mask[1, 4:8] = True
    with pytest.raises(ValueError, match=r"keeps 4 of the columns 4..7 of row 1; pattern 2:4 keeps at most 2"):
        NMPackedWeight.from_dense(w, mask, "2:4")
    with pytest.raises(ValueError, match="pattern must be"):
        NMPackedWeight.from_dense(w, prune(w, "2:4"), "unstructured")


# ---------------------------------------------------------------- reference matmul

@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("quantize", [None, "int8"])
def test_reference_matmul(fmt, quantize):
    w = torch.randn(17, 113)
    bias = torch.randn(17)
    x = torch.randn(3, 5, 113)
    arg, mask = masks_for(fmt, w)[0]
    packed = build(fmt, w, mask, arg, quantize)
    dense = packed.to_dense().double()
    y64 = sparse_linear_reference(x, packed, bias, dtype=torch.float64)
    assert y64.dtype == torch.float64 and y64.shape == (3, 5, 17)
    expect = torch.einsum("bsk,nk->bsn", x.double(), dense) + bias.double()
    torch.testing.assert_close(y64, expect, rtol=1e-12, atol=1e-12)
    y = sparse_linear_reference(x.transpose(0, 1).contiguous().transpose(0, 1), packed, bias)   # strided x
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), expect, rtol=1e-5, atol=1e-5)
    assert sparse_linear_reference(x[0, 0], packed).shape == (17,)


def test_reference_matmul_bad_input():
    packed = BitmapWeight.from_dense(torch.randn(4, 8), torch.rand(4, 8) < 0.5)
    with pytest.raises(ValueError, match="last dimension must be in_features = 8"):
        sparse_linear_reference(torch.randn(2, 7), packed)
    with pytest.raises(ValueError, match=r"bias must be a tensor of shape \[out_features\] = \[4\]"):
        sparse_linear_reference(torch.randn(2, 8), packed, torch.randn(5))
    with pytest.raises(ValueError, match="dtype must be None"):
        sparse_linear_reference(torch.randn(2, 8), packed, dtype=torch.float32)
    with pytest.raises(TypeError, match="weight must be one of"):
        sparse_linear_reference(torch.randn(2, 8), torch.randn(4, 8))
    with pytest.raises(TypeError, match="x must be a floating-point"):
        sparse_linear_reference(torch.ones(2, 8, dtype=torch.int32), packed)


# ---------------------------------------------------------------- properties

@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(1, 7), k=st.integers(1, 40), dtype=st.sampled_from(DTYPES),
       quantize=st.sampled_from([None, "int8"]), m=st.integers(2, 9), bh=st.integers(1, 5), bw=st.integers(1, 9),
       density=st.floats(0.0, 1.0), data=st.data())
def test_round_trip_property(rows, k, dtype, quantize, m, bh, bw, density, data):
    n = data.draw(st.integers(1, m - 1))
    w = weight((rows, k), dtype)
    w = torch.where(torch.isfinite(w), w, torch.ones_like(w))
    rand_mask = torch.rand(rows, k) < density
    nm_mask = prune(w, f"{n}:{m}") & rand_mask.logical_or(torch.rand(rows, k) < 0.5)   # <= N kept per group
    cases = [(NMPackedWeight.from_dense(w, nm_mask, f"{n}:{m}", quantize=quantize), nm_mask),
             (BitmapWeight.from_dense(w, rand_mask, quantize=quantize), rand_mask),
             (BSRWeight.from_dense(w, rand_mask, (bh, bw), quantize=quantize), rand_mask)]
    for packed, mask in cases:
        rebuilt = type(packed).from_state_dict(packed.state_dict())
        if quantize is None:
            assert_bitwise(rebuilt.to_dense(), pruned(w, mask))
        else:
            q, scale = rebuilt.int8_dense()
            assert torch.equal(rebuilt.to_dense(), q.float() * scale[:, None])
            assert not q[~mask].any()


# ---------------------------------------------------------------- CUDA (where a GPU exists)

@pytest.mark.cuda
@pytest.mark.parametrize("quantize", [None, "int8"])
def test_cuda_matches_cpu(quantize):
    w = weight((17, 4099))
    for pattern, kw in (("2:4", {}), ("3:5", {}), ("unstructured", {"sparsity": 0.7}),
                        ("block", {"sparsity": 0.5, "block_size": (4, 8)})):
        assert torch.equal(prune(w.cuda(), pattern, **kw).cpu(), prune(w, pattern, **kw)), pattern
    for fmt in FMTS:
        for arg, mask in masks_for(fmt, w):
            on_gpu = build(fmt, w.cuda(), mask.cuda(), arg, quantize)
            assert all(t.is_cuda for k, t in on_gpu.state_dict().items() if k not in ("shape", "pattern", "block_size"))
            assert torch.equal(on_gpu.to_dense().cpu(), build(fmt, w, mask, arg, quantize).to_dense())
            rebuilt = CLASSES[fmt].from_state_dict(on_gpu.state_dict())
            assert torch.equal(rebuilt.to_dense(), on_gpu.to_dense())
