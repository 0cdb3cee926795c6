"""The CUDA benchmark cases (llmaccel/bench/cases_*_cuda.py) and bench/gpu_check.py's goal bookkeeping.

bench/gpu_check.py runs the int8_linear and attention CUDA cases at full size on a GPU, where a mistake costs a
scarce GPU run.  Here the same builders run at tiny shapes on CPU tensors under the Triton interpreter (inputs,
ours, the peer, the accuracy check, the Work), and a deliberately corrupted output must fail the check::

    TRITON_INTERPRET=1 LLMACCEL_BACKEND=triton pytest tests/test_gpu_bench_cases.py -m "triton and not slow"

Without TRITON_INTERPRET=1 the builder tests are skipped (on a GPU, gpu_check's benchmark phase runs the
full-size cases right after the tests); the registry, reference and goal tests run everywhere.
"""

import importlib.util
import math
import os
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import llmaccel
from llmaccel.bench import cases as _cases
from llmaccel.bench import cases_attention_cuda as att
from llmaccel.bench import cases_int8_linear_cuda as lin
from llmaccel.bench import cases_sparse_linear as sparse

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.triton
needs_interpreter = pytest.mark.skipif(
    not INTERPRET, reason="the builders run on CPU tensors only under TRITON_INTERPRET=1 "
                          "(bench/gpu_check.py runs them at full size on a GPU)")


def _load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", REPO / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


gpu_check = _load_gpu_check()


def _tiny_case(op, build):
    return _cases.Case(op=op, name="tiny", shape="tiny", device="cpu", peer="peer", peer_description="peer",
                       description="tiny shapes for the CPU test", build=build)


# (id, op, builder, expected Work(ops, bytes)) at shapes that exercise tile tails under the interpreter's
# 16 x 16 (x 32) blocks.
TINY = [
    ("w8a8", "int8_linear", lambda: lin.int8_linear_vs_bf16(24, 96, 48, 2, "dynamic"),
     (2.0 * 24 * 48 * 96, None)),
    ("wo-m1", "int8_linear", lambda: lin.int8_linear_vs_bf16(1, 96, 40, 3, "weight_only", stream_bytes=True),
     (2.0 * 1 * 40 * 96, 40.0 * 96)),
    ("wo-m5", "int8_linear", lambda: lin.int8_linear_vs_bf16(5, 64, 48, 2, "weight_only", stream_bytes=True),
     (2.0 * 5 * 48 * 64, 48.0 * 64)),
    ("prefill-causal", "attention", lambda: att.attention_prefill(1, 2, 40, 16, True),
     (4.0 * 2 * 40 * 40 * 16 * 0.5, None)),
    ("prefill", "attention", lambda: att.attention_prefill(2, 2, 24, 32, False),
     (4.0 * 2 * 2 * 24 * 24 * 32, None)),
    ("decode-gqa", "attention", lambda: att.attention_decode(3, 4, 2, 80, 16),
     (4.0 * 4 * 80 * 16, 2.0 * 2 * 80 * 16 * 2)),
    ("sparse-2:4", "sparse_linear", lambda: sparse._builder(24, 2, 2, k=72, n=72, dtype=torch.bfloat16),
     (2.0 * 24 * 72 * 72 * 2, None)),
]


def _corruptions(o):
    """Outputs a correct kernel never gives: each must fail the case's check."""
    scale = o.float().abs().max()
    zeros = torch.zeros_like(o)
    # contiguous copies (an op's output may be strided: attention's is stored heads-inner), flat-indexable
    bump = o.clone(memory_format=torch.contiguous_format)
    bump.view(-1)[o.numel() // 2] += (0.25 * scale).to(o.dtype)
    nan = o.clone(memory_format=torch.contiguous_format)
    nan.view(-1)[-1] = float("nan")
    flipped = o.clone(memory_format=torch.contiguous_format)
    flipped.view(-1)[: o.numel() // 2] *= -1
    return {"zeros": zeros, "one element off": bump, "one NaN": nan, "half negated": flipped}


@needs_interpreter
@pytest.mark.parametrize("name,op,factory,work", TINY, ids=[t[0] for t in TINY])
def test_builder_checks_and_catches_corruption(name, op, factory, work):
    case = _tiny_case(op, factory())
    with llmaccel.backends.use("triton"):
        bench = case.setup("cpu")
        assert case.backend(bench) == "triton"
        assert (bench.work.ops, bench.work.bytes) == work
        bench.verify()  # raises CaseMismatch on any input set
        outs = []
        for j in range(bench.n_sets):
            o, p = bench.ours(j), bench.peer(j)
            assert o.dtype == p.dtype == torch.bfloat16 and o.shape == p.shape
            assert float(o.float().abs().max()) > 0, "never time on zeros"
            assert bench.check(o, p) is None
            outs.append(o)
        # every corruption of a correct output is caught
        o, p = bench.ours(0), bench.peer(0)
        for what, bad in _corruptions(o).items():
            assert bench.check(bad, p) is not None, f"the check accepted an output with {what}"
        # the check compares with the reference of the input set ours ran last
        bench.ours(0)
        assert bench.check(outs[1], p) is not None
        # wrong dtype / shape
        assert bench.check(o.float(), p) is not None
        assert bench.check(o[..., :-1], p[..., :-1]) is not None


@needs_interpreter
def test_gpu_check_bench_case_runs_a_tiny_case():
    """gpu_check.bench_case end to end (set-up, verify, interleaved timing, rates) with a host timer."""

    def timer(fn):
        t0 = time.perf_counter()
        fn()
        ms = (time.perf_counter() - t0) * 1e3
        return ms, ms, ms

    case = _tiny_case("attention", att.attention_decode(2, 4, 1, 40, 16))
    with llmaccel.backends.use("triton"):
        row = gpu_check.bench_case(case, timer=timer, rounds=2)
    assert row["status"] == "ok", row.get("error")
    assert row["backend"] == "triton"
    # decode is memory-bound: GB/s on both sides, no GOP/s
    assert row["speedup"] > 0 and row["ours_rate"].endswith(" GB/s") and row["peer_rate"].endswith(" GB/s")


def test_builders_refuse_a_non_triton_backend():
    case = _tiny_case("int8_linear", lin.int8_linear_vs_bf16(4, 32, 16, 1, "dynamic"))
    with llmaccel.backends.use("torch"):
        with pytest.raises(RuntimeError, match="Triton backend"):
            case.setup("cpu")


@pytest.mark.parametrize("Hq,Hkv,Lq,Lk,causal", [(4, 2, 9, 9, False), (4, 2, 9, 9, True), (4, 1, 1, 33, False),
                                                 (2, 2, 17, 17, True)])
def test_reference_attention_matches_sdpa_in_float64(monkeypatch, Hq, Hkv, Lq, Lk, causal):
    monkeypatch.setattr(att, "REF_CHUNK_BYTES", 8 * Lq * Lk)  # one head per step: the chunking is exercised
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, Hq, Lq, 16, generator=g, dtype=torch.float64)
    k = torch.randn(2, Hkv, Lk, 16, generator=g, dtype=torch.float64)
    v = torch.randn(2, Hkv, Lk, 24, generator=g, dtype=torch.float64)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=Hq != Hkv)
    got = att.reference_attention(q, k, v, causal)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)


def test_int8_check_helpers():
    g = torch.Generator().manual_seed(6)
    w = torch.rand(64, 128, generator=g) * 2 - 1
    q, s = lin.quantize_weight(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    assert lin.sqnr_db(q.float() * s[:, None], w) > 35
    ref = torch.randn(1000, 64, generator=g)
    noisy = ref + 1e-3 * torch.randn(1000, 64, generator=g)
    assert lin.int8_check(noisy.bfloat16(), ref.bfloat16(), ref) is None
    assert lin.int8_check(noisy.bfloat16(), ref.bfloat16(), torch.zeros_like(ref)) is not None
    bad_row = noisy.clone()
    bad_row[3] = torch.randn(64, generator=g) * 0.2  # one token wrong, the global SQNR still fine
    assert lin.sqnr_db(bad_row, ref) > lin.SQNR_MIN_DB
    assert "row 3" in lin.int8_check(bad_row.bfloat16(), ref.bfloat16(), ref)


# --------------------------------------------------------------------------
# registry and gpu_check bookkeeping (no Triton needed)
# --------------------------------------------------------------------------

def _cuda_cases():
    return lin.cuda_cases() + att.cuda_cases()


def test_every_goal_has_a_cuda_case_and_every_new_case_a_goal():
    keys = [c.key for c in _cuda_cases()]
    assert len(set(keys)) == len(keys)
    assert sorted(g.key for g in gpu_check.GOALS) == sorted(keys)
    assert all(c.device == "cuda" for c in _cuda_cases())


def test_cuda_cases_are_registered_only_with_a_gpu():
    registered = {c.key for c in _cases.select(devices=["cuda"])}
    keys = {c.key for c in _cuda_cases()}
    if torch.cuda.is_available():
        assert keys <= registered
    else:
        assert not registered & keys


def test_case_shapes_match_the_goals():
    by_name = {c.name: c for c in _cuda_cases()}
    assert {"w8a8-m4096", "w8a8-m2048", "wo-decode-m1", "wo-decode-m16"} <= set(by_name)
    assert "K=8192 N=8192" in by_name["w8a8-m4096"].shape
    assert "Lk=8192" in by_name["decode-gqa-lk8192"].shape and "Hkv=8" in by_name["decode-gqa-lk8192"].shape
    assert {"prefill-1x32x2048x128-causal", "prefill-1x32x2048x128", "prefill-1x16x4096x64-causal"} <= set(by_name)


class _Fake:
    def __init__(self, key):
        self.key = key


def test_order_cases_runs_goals_first_in_goal_order():
    goal_keys = [g.key for g in gpu_check.GOALS]
    others = [_Fake("int8_mm/decode-m32/cuda"), _Fake("int8_mm/prefill/cuda"), _Fake("int8_mm/square-8192/cuda")]
    mixed = [others[0], _Fake(goal_keys[3]), others[1], _Fake(goal_keys[0]), others[2], _Fake(goal_keys[1])]
    ordered = [c.key for c in gpu_check.order_cases(mixed)]
    assert ordered == [goal_keys[0], goal_keys[1], goal_keys[3]] + [c.key for c in others]


def test_goal_report_and_markdown():
    g_w8a8, g_prefill, g_decode = gpu_check.GOALS[0], gpu_check.GOALS[1], gpu_check.GOALS[2]

    def row(key, speedup, status="ok"):
        op, name, device = key.split("/")
        return dict(op=op, case=name, device=device, shape="s", peer="p", backend="triton", status=status,
                    ours_ms=1.0, peer_ms=speedup, speedup=speedup, paired_q1=speedup, paired_q3=speedup,
                    error="boom")

    rows = [row(g_w8a8.key, 1.59), row(g_prefill.key, 0.9), row(g_decode.key, 1.0)]
    selected = {g_w8a8.key, g_prefill.key, g_decode.key, gpu_check.GOALS[3].key}
    report = {g.key: (m, verdict) for g, m, verdict in gpu_check.goal_report(rows, selected)}
    assert report[g_w8a8.key] == ("1.59x", "NOT met")           # >= 1.6
    assert report[g_prefill.key] == ("0.90x", "met")            # >= 0.9
    assert report[g_decode.key] == ("1.00x", "NOT met")         # ahead: strictly > 1
    assert report[gpu_check.GOALS[3].key][1].startswith("not run")
    assert len(report) == 4
    errored = gpu_check.goal_report([row(g_w8a8.key, math.nan, status="MISMATCH")], {g_w8a8.key})
    assert errored[0][2] == "not measured (MISMATCH)"
    versions = dict(date="d", llmaccel="0", python="3", torch="t", triton="tr", cuda="c")
    tests = dict(status="passed", summary="ok", seconds=1.0)
    md = gpu_check.markdown(versions, tests, rows, [], gpu_check.goal_report(rows, selected))
    assert "| W8A8 int8_linear vs bf16 F.linear, M=4096 K=N=8192 |" in md and "NOT met" in md
