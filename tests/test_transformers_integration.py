"""attn_implementation="llmaccel" in Hugging Face transformers (llmaccel.integrations.transformers).

Tiny BERT-, GPT-2- and Llama-style models (GQA for Llama) are built from
configs with random init (nothing is downloaded), once with "eager" and once
with "llmaccel" from the same seed.  Outputs must match with padding in the
batch, and greedy generation with a KV cache must give the same tokens.
Each model gets its own copy of the config: ``_from_config`` writes the
attention implementation into the config object, and the model reads it
from there at run time.
"""

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

import llmaccel.integrations.transformers as llmaccel_hf  # noqa: E402
from llmaccel.integrations.transformers import attention_forward  # noqa: E402

VOCAB = 97


def _configs():
    from transformers import BertConfig, GPT2Config, LlamaConfig

    return {
        "bert": ("BertModel", BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=48, max_position_embeddings=64)),
        "gpt2": ("GPT2LMHeadModel", GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                               bos_token_id=1, eos_token_id=2, pad_token_id=0)),
        "llama": ("LlamaForCausalLM", LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                                  num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
                                                  max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
                                                  pad_token_id=0)),
    }


@pytest.fixture(scope="module", autouse=True)
def _registered():
    assert llmaccel_hf.register() == "llmaccel"


def _pair(kind):
    cls_name, cfg = _configs()[kind]
    cls = getattr(transformers, cls_name)
    if not getattr(cls, "_supports_attention_backend", False):
        pytest.skip(f"{cls_name} in transformers {transformers.__version__} does not support custom attention "
                    f"implementations (_supports_attention_backend is False)")
    models = []
    for impl in ("eager", "llmaccel"):
        torch.manual_seed(0)
        m = cls._from_config(copy.deepcopy(cfg), attn_implementation=impl).eval()
        assert m.config._attn_implementation == impl
        models.append(m)
    return models


def _out(o):
    return o.logits if getattr(o, "logits", None) is not None else o.last_hidden_state


def test_register_adds_attention_and_mask_functions():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    assert AttentionInterface._global_mapping["llmaccel"] is attention_forward
    assert AttentionMaskInterface._global_mapping["llmaccel"] is sdpa_mask


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_forward_matches_eager_with_padding(kind):
    eager, ours = _pair(kind)
    torch.manual_seed(1)
    ids = torch.randint(3, VOCAB, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0  # right padding: no query row is fully masked in either model
    mask[2, 4:] = 0
    with torch.no_grad():
        for am in (mask, None):
            a = _out(eager(input_ids=ids, attention_mask=am))
            b = _out(ours(input_ids=ids, attention_mask=am))
            valid = mask.bool() if am is not None else torch.ones_like(mask, dtype=torch.bool)
            torch.testing.assert_close(b[valid], a[valid], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_greedy_generation_matches_eager(kind):
    eager, ours = _pair(kind)
    torch.manual_seed(2)
    ids = torch.randint(3, VOCAB, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :2] = 0  # left padding, as for batched generation
    ids[1, :2] = 0
    kw = dict(attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0, use_cache=True)
    with torch.no_grad():
        ge = eager.generate(input_ids=ids, **kw)
        go = ours.generate(input_ids=ids, **kw)
    assert ge.shape == (2, 11)
    assert torch.equal(go, ge), f"eager {ge[:, 6:].tolist()} vs llmaccel {go[:, 6:].tolist()}"


class _Module(torch.nn.Module):
    def __init__(self, groups, is_causal=True):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = is_causal


def test_attention_forward_gqa_no_repeat_and_causal(monkeypatch):
    """GQA goes to the op with enable_gqa=True (K/V not repeated); is_causal only without mask and for Lq > 1."""
    import llmaccel.integrations.transformers as mod

    seen = []
    real = mod.attention

    def spy(q, k, v, mask, dropout, is_causal, scale, enable_gqa):
        seen.append((k.shape[1], mask, is_causal, enable_gqa))
        return real(q, k, v, mask, dropout, is_causal, scale, enable_gqa)

    monkeypatch.setattr(mod, "attention", spy)
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    out, w = attention_forward(_Module(2), q, k, v, None, scaling=0.3)
    assert w is None and out.shape == (2, 5, 4, 8) and out.is_contiguous()
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3, enable_gqa=True)
    torch.testing.assert_close(out, ref.transpose(1, 2), atol=1e-6, rtol=1e-5)
    assert seen[-1] == (2, None, True, True)
    attention_forward(_Module(2), q[:, :, :1], k, v, None)  # one query token: no causal mask
    assert seen[-1][2] is False
    attention_forward(_Module(2, is_causal=False), q, k, v, None)  # encoder
    assert seen[-1][2] is False
    # A 4-D mask longer than the keys (static cache) is sliced; a float additive mask works too.
    big = torch.zeros(2, 1, 5, 9)
    big[:, :, :, 1] = float("-inf")
    out, _ = attention_forward(_Module(2), q, k, v, big)
    assert seen[-1][1].shape == (2, 1, 5, 5) and seen[-1][2] is False
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=big[..., :5], enable_gqa=True)
    torch.testing.assert_close(out, ref.transpose(1, 2), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="softcap"):
        attention_forward(_Module(2), q, k, v, None, softcap=30.0)
