"""The llmaccel command: info, bench pass-through, demo (tiny sizes, JSON), bad options."""
import json
import subprocess
import sys

import pytest
import torch

from llmaccel import cli


def test_info_json_lists_every_op_variant(capsys):
    assert cli.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["llmaccel"] and info["torch"]
    assert info["cpu"]["extension"] == "loaded" and "cpp" in info["backends"]["cpu"]
    assert {"int8_mm", "attention_forward", "sparse_nm_linear"} <= set(info["cpu"]["ops"])


def test_bench_passes_its_arguments_through(capsys):
    assert cli.main(["bench", "--list"]) == 0
    assert "sparse_linear" in capsys.readouterr().out


def test_demo_json_small_run(capsys):
    pytest.importorskip("transformers")
    assert cli.main(["demo", "--batch", "2", "--seq", "8", "--reps", "1", "--no-onnx", "--json", "--profile"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["config"]: r for r in out["rows"]}
    assert set(rows) == {"fp32 (transformers, sdpa)", "llmaccel attention", "llmaccel attention + int8",
                         "llmaccel attention + 2:4", "llmaccel attention + unpad",
                         "llmaccel attention + int8 + unpad"}
    # unpadding changes no embedding (only padded positions, which pooling never reads)
    for name in ("llmaccel attention", "llmaccel attention + int8"):
        assert abs(rows[name + " + unpad"]["cosine_mean"] - rows[name]["cosine_mean"]) < 1e-5
    assert rows["fp32 (transformers, sdpa)"]["cosine_worst"] > 0.99999  # the baseline against itself
    assert rows["llmaccel attention"]["cosine_worst"] > 0.9999
    assert rows["llmaccel attention + int8"]["cosine_mean"] > 0.99
    assert rows["llmaccel attention + int8"]["weight_mib"] < rows["fp32 (transformers, sdpa)"]["weight_mib"]
    assert all(r["ms_per_batch"] > 0 for r in rows.values())
    prof = out["profiles"]
    assert set(prof) == set(rows)  # every torch-side configuration (no ONNX here)
    assert prof["fp32 (transformers, sdpa)"]["kernels_ms"] == 0  # no llmaccel op in the original model
    assert prof["llmaccel attention + int8"]["kernels_ms"] > 0 and prof["llmaccel attention"]["kernels_ms"] > 0


def test_demo_padding_modes_build_the_batch_they_name():
    """--padding: the timed batch padded to --seq, to the longest sentence, or rows of --seq real tokens
    (the batch builder itself; the end-to-end demo run above takes the default)."""
    pytest.importorskip("transformers")
    from llmaccel import demo

    _, tok, _ = demo.load_model(None)
    sents = demo.SENTENCES[:5]
    full = demo.timed_batch(tok, sents, 12, "none")
    assert full["attention_mask"].shape == (5, 12) and bool(full["attention_mask"].all())
    padded = demo.timed_batch(tok, sents, 64, "max_length")
    longest = demo.timed_batch(tok, sents, 64, "longest")
    lengths = padded["attention_mask"].sum(1)
    assert padded["attention_mask"].shape == (5, 64) and int(lengths.max()) < 64
    assert longest["attention_mask"].shape == (5, int(lengths.max()))
    assert torch.equal(longest["attention_mask"].sum(1), lengths)
    with pytest.raises(ValueError, match="padding must be one of"):
        demo.timed_batch(tok, sents, 12, "left")
    args = cli._parser().parse_args(["demo", "--padding", "longest"])
    assert args.padding == "longest"


def test_bad_demo_option_exits_with_a_message():
    proc = subprocess.run([sys.executable, "-m", "llmaccel.cli", "demo", "--batch", "0"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "--batch must be >= 1" in proc.stderr
