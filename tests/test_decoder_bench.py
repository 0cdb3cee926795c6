"""bench/decoder_generate.py runs end to end (``--quick``: a tiny random Llama, a few tokens), so CI exercises the
script; the figures it prints at full size are in the README ("Decoder generation")."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "decoder_generate.py"


def _load():
    spec = importlib.util.spec_from_file_location("decoder_generate", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_run_reports_every_configuration(tmp_path, capsys):
    pytest.importorskip("transformers")
    path = tmp_path / "out.json"
    out = _load().main(["--quick", "--json", str(path)])
    assert json.loads(path.read_text())["results"].keys() == out["results"].keys()
    res = out["results"]
    assert list(res) == ["fp32", "wo-head-fp32", "wo", "w8a8", "torch.ao"]
    fp32 = res["fp32"]
    assert fp32["greedy_agreement"] == 1.0 and fp32["tf_top1_agreement"] == 1.0
    assert fp32["first_step_max_abs_rel"] == 0.0 and fp32["deterministic"]
    for name, r in res.items():
        assert r["decode_ms"] > 0 and r["tok_per_s"] > 0 and r["vs_fp32"] > 0 and r["vs_torch_ao"] > 0, name
        assert 0.0 <= r["greedy_agreement"] <= 1.0 and 0.0 <= r["tf_top1_agreement"] <= 1.0, name
    # int8 weights: fewer bytes read per token; quantizing the head too reads fewer still
    assert res["wo"]["read_bytes_per_token"] < res["wo-head-fp32"]["read_bytes_per_token"] < \
        0.5 * fp32["read_bytes_per_token"]
    assert res["torch.ao"]["read_bytes_per_token"] < 0.5 * fp32["read_bytes_per_token"]
    assert "lm_head int8" in out["reports"]["wo"] and "lm_head float" in out["reports"]["wo-head-fp32"]
    # quantized models stay close to fp32 on the first step's logits
    for name in ("wo-head-fp32", "wo"):
        assert res[name]["first_step_mean_abs_rel"] < 0.1, (name, res[name])
    assert "decode ms/tok" in capsys.readouterr().out


def test_unknown_configuration_is_rejected():
    with pytest.raises(SystemExit):
        _load().main(["--quick", "--configs", "fp32,bf16"])
