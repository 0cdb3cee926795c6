"""``quantize_`` on torch's transformer modules: correct in train, eval, no_grad and inference_mode.

Torch's inference fast paths (``torch._transformer_encoder_layer_fwd``, the
encoder's nested-tensor conversion, MultiheadAttention's fused path) read a
layer's weights directly; after ``quantize_`` those are int8 buffers, so
llmaccel keeps the fast paths off for swapped layers (``llmaccel/_swap.py``).
Every output is compared with a float64 copy of the un-quantized model (an
error bound that fits int8) and with the same quantized model run with grad
enabled (must match to float32 rounding), on the positions a padding mask
leaves valid.
"""

import contextlib
import copy
import io
import warnings

import pytest
import torch
from torch import nn

import llmaccel
from llmaccel._swap import after_swap, keep_off_fastpath

MODES = ("train", "eval", "no_grad", "inference_mode")
E, H, FF, N, S = 64, 4, 128, 3, 7
INT8_REL = 0.03  # ||y_int8 - y_fp64|| / ||y_fp64|| (W8A8 per-token/per-channel on Gaussian data: ~0.5-1%)
SAME_REL = 1e-5  # the quantized model in one mode vs the same model with grad enabled


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*nested tensors is in prototype.*")
        warnings.filterwarnings("ignore", message=".*enable_nested_tensor is True.*")
        yield


def run(model, mode, *args, **kwargs):
    model.train(mode == "train")
    ctx = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}.get(mode, contextlib.nullcontext)
    with ctx():
        out = model(*args, **kwargs)
    out = out[0] if isinstance(out, tuple) else out
    return out.clone() if not out.is_nested else out


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def padding_mask():
    m = torch.zeros(N, S, dtype=torch.bool)  # True = padding, left-aligned (what the nested path wants)
    m[1, 4:] = True
    m[2, 6:] = True
    return m


def valid(y, mask, batch_first):
    """Rows of y at the non-padded positions, as [tokens, E]."""
    y = y if batch_first else y.transpose(0, 1)
    return y[~mask]


def seq(batch_first, L=S, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, L, E, generator=g)
    return x if batch_first else x.transpose(0, 1).contiguous()


def reference(model):
    """A float64 copy of the un-quantized model (run in eval with grad: torch's module-by-module path)."""
    ref = copy.deepcopy(model).double().eval()
    return lambda *a, **k: run(ref, "eval", *(t.double() if t.is_floating_point() else t for t in a), **k)


def check_all_modes(model, ref, call, mask, batch_first):
    """call(model, mode) -> output; mask: padding [N, S] or None."""
    base = call(model, "eval")
    expect = ref()
    pick = (lambda y: valid(y, mask, batch_first)) if mask is not None else (lambda y: y)
    assert rel(pick(base), pick(expect)) < INT8_REL
    for mode in MODES:
        y = call(model, mode)
        assert y.shape == expect.shape and y.dtype == torch.float32, mode
        assert rel(pick(y), pick(expect)) < INT8_REL, mode
        assert rel(pick(y), pick(base)) < SAME_REL, mode


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("use_mask", [True, False])
def test_transformer_encoder_all_modes(batch_first, norm_first, use_mask):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, H, FF, dropout=0.0, batch_first=batch_first, norm_first=norm_first)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)
    ref = reference(model)
    summary = llmaccel.quantize_(model)
    assert len(summary.swapped) == 4  # linear1, linear2 of both layers
    assert all(keep_off_fastpath in lyr._forward_pre_hooks.values() for lyr in model.layers)
    assert model.use_nested_tensor is False
    x = seq(batch_first)
    mask = padding_mask() if use_mask else None
    check_all_modes(model, lambda: ref(x, src_key_padding_mask=mask),
                    lambda m, mode: run(m, mode, x, src_key_padding_mask=mask), mask, batch_first)


@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_decoder_all_modes(batch_first):
    torch.manual_seed(1)
    layer = nn.TransformerDecoderLayer(E, H, FF, dropout=0.0, batch_first=batch_first)
    model = nn.TransformerDecoder(layer, 2)
    ref = reference(model)
    assert len(llmaccel.quantize_(model).swapped) == 4
    tgt, memory = seq(batch_first, seed=1), seq(batch_first, L=5, seed=2)
    causal = torch.ones(S, S, dtype=torch.bool).triu(1)  # bool like the padding masks (True = blocked)
    mem_mask = torch.zeros(N, 5, dtype=torch.bool)
    mem_mask[0, 3:] = True
    kw = dict(tgt_mask=causal, tgt_key_padding_mask=padding_mask(), memory_key_padding_mask=mem_mask)
    check_all_modes(model, lambda: ref(tgt, memory, **kw), lambda m, mode: run(m, mode, tgt, memory, **kw),
                    padding_mask(), batch_first)


@pytest.mark.parametrize("batch_first", [True, False])
def test_nn_transformer_all_modes(batch_first):
    torch.manual_seed(2)
    model = nn.Transformer(E, H, 2, 2, FF, dropout=0.0, batch_first=batch_first)
    ref = reference(model)
    assert len(llmaccel.quantize_(model).swapped) == 8
    src, tgt = seq(batch_first, seed=3), seq(batch_first, seed=4)
    kw = dict(src_key_padding_mask=padding_mask(), memory_key_padding_mask=padding_mask(),
              tgt_mask=torch.ones(S, S, dtype=torch.bool).triu(1))
    check_all_modes(model, lambda: ref(src, tgt, **kw), lambda m, mode: run(m, mode, src, tgt, **kw), None,
                    batch_first)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("wrap", ["layer", "encoder"])
def test_nested_tensor_input(mode, wrap):
    """A nested batch straight into a quantized encoder (layer): every sequence matches the float64 model
    run on that sequence alone."""
    torch.manual_seed(3)
    layer = nn.TransformerEncoderLayer(E, H, FF, dropout=0.0, batch_first=True)
    model = layer if wrap == "layer" else nn.TransformerEncoder(layer, 2)
    ref = reference(model)
    llmaccel.quantize_(model)
    seqs = [torch.randn(L, E) for L in (3, 7, 5)]
    out = run(model, mode, torch.nested.nested_tensor(seqs))
    assert out.is_nested
    pieces = out.unbind()
    for x, y in zip(seqs, pieces):
        expect = ref(x.unsqueeze(0))[0]
        assert y.shape == expect.shape
        assert rel(y, expect) < INT8_REL
        assert rel(y, run(model, "eval", x.unsqueeze(0))[0]) < SAME_REL


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_with_swapped_out_proj(batch_first):
    """The shared helper on the case quantize_ itself leaves alone: an MHA whose out_proj was replaced
    (torch's MHA reads out_proj.weight on both of its paths) becomes llmaccel.nn.MultiheadAttention."""
    torch.manual_seed(4)
    mha = nn.MultiheadAttention(E, H, batch_first=batch_first)
    ref = reference(mha)
    params = {n: p for n, p in mha.named_parameters() if not n.startswith("out_proj")}
    q = llmaccel.Int8Linear.from_linear(mha.out_proj)
    mha.out_proj = q
    notes = after_swap(mha, [q])
    assert type(mha) is llmaccel.nn.MultiheadAttention and len(notes) == 1
    assert after_swap(mha, [q]) == []  # idempotent
    assert all(dict(mha.named_parameters())[n] is p for n, p in params.items())  # same Parameters
    x = seq(batch_first)
    mask = padding_mask()
    check_all_modes(mha, lambda: ref(x, x, x, key_padding_mask=mask, need_weights=False),
                    lambda m, mode: run(m, mode, x, x, x, key_padding_mask=mask, need_weights=False), mask,
                    batch_first)


def test_encoder_layer_with_swapped_out_proj():
    torch.manual_seed(5)
    layer = nn.TransformerEncoderLayer(E, H, FF, dropout=0.0, batch_first=True)
    ref = reference(layer)
    q = llmaccel.Int8Linear.from_linear(layer.self_attn.out_proj)
    layer.self_attn.out_proj = q
    after_swap(layer, [q])
    assert isinstance(layer.self_attn, llmaccel.nn.MultiheadAttention)
    x, mask = seq(True), padding_mask()
    check_all_modes(layer, lambda: ref(x, src_key_padding_mask=mask),
                    lambda m, mode: run(m, mode, x, src_key_padding_mask=mask), mask, True)


def test_guards_survive_copy_and_pickle_and_requantize():
    torch.manual_seed(6)
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, H, FF, dropout=0.0, batch_first=True), 2)
    llmaccel.quantize_(model)
    again = llmaccel.quantize_(model)  # nothing left to swap: no second hook
    assert again.swapped == [] and again.fastpath == []
    assert all(len(lyr._forward_pre_hooks) == 1 for lyr in model.layers)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    x, mask = seq(True), padding_mask()
    expect = run(model, "eval", x, src_key_padding_mask=mask)
    for clone in (copy.deepcopy(model), torch.load(buf, weights_only=False)):
        for mode in ("no_grad", "inference_mode"):
            y = run(clone, mode, x, src_key_padding_mask=mask)
            assert rel(valid(y, mask, True), valid(expect, mask, True)) < SAME_REL


def test_untouched_layers_keep_the_fast_path():
    """A filter_fn that keeps one layer in float leaves that layer (and its fused path) alone."""
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, H, FF, dropout=0.0, batch_first=True), 2)
    summary = llmaccel.quantize_(model, filter_fn=lambda mod, fqn: fqn.startswith("layers.1."))
    assert summary.swapped == ["layers.1.linear1", "layers.1.linear2"]
    assert len(model.layers[0]._forward_pre_hooks) == 0
    assert keep_off_fastpath in model.layers[1]._forward_pre_hooks.values()
    assert "layers.1: torch's fused encoder-layer inference path kept off" in str(summary)
