"""The benchmark table and CLI (llmaccel.bench.cli) and the install helper (scripts/install_state.py).

No timing is judged here: the rows are made up, or timed on tiny shapes only to check their consistency.
"""

import importlib.util
import os
import subprocess

import pytest
import torch

import llmaccel
from llmaccel.bench import cases as _cases
from llmaccel.bench import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATES = {"fp32_gemm_gflops": 150.0, "read_gbps": 25.0}


def _row(op="int8_mm", case="prefill", peer="torch._int_mm", ours_ms=20.0, peer_ms=4000.0, work=None, **kw):
    work = work or _cases.Work(ops=2.0 * 512 * 4096 * 4096)
    row = dict(op=op, case=case, shape="M=512 K=4096 N=4096", device="cpu", peer=peer, backend="cpp/avx512vnni",
               status="ok", reps=10, ours_ms=ours_ms, ours_min_ms=ours_ms * 0.98, peer_ms=peer_ms,
               peer_min_ms=peer_ms * 0.98, speedup=peer_ms / ours_ms, paired_q1=peer_ms / ours_ms * 0.97,
               paired_q3=peer_ms / ours_ms * 1.02, ratio_of_medians=peer_ms / ours_ms, foreign_cpu=0.01)
    row.update(kw)
    cli.fill_rates(row, work)
    cli.flag_reference_paths(row, work, RATES)
    return row


def _registry_rows():
    """A made-up row for every registered CPU case (names, peers, units as registered), worst-case numbers."""
    rows = []
    for c in _cases.select(devices=["cpu"]):
        memory = "decode" in c.name
        work = _cases.Work(ops=1e9, bytes=1e8 if memory else None, ops_unit="GFLOP/s" if c.op == "attention"
                           else "GOP/s")
        rows.append(_row(op=c.op, case=c.name, peer=c.peer, ours_ms=1234.5678, peer_ms=4321.5, work=work))
    return rows


def test_default_table_fits_120_columns_and_wide_has_everything():
    rows = _registry_rows()
    rows.append(_row(case="a-case-name-much-longer-than-any-registered-one-x" * 2))
    text = cli.format_table(rows)
    assert max(len(line) for line in text.splitlines()) <= cli.TABLE_WIDTH
    for r in rows[:-1]:
        assert f"{r['op']}" in text.splitlines() and r["case"] in text
    wide = cli.format_table(rows, wide=True)
    assert "shape" in wide.splitlines()[0] and "F.scaled_dot_product_attention" in wide
    assert "ratio of medians" in wide and "other procs" in wide


def test_header_fits_the_table_width():
    cond = dict(date="2026-11-30T10:00:00+00:00", llmaccel="0.1.0", python="3.11.7", torch="2.13.0+cpu",
                triton="3.9.0", cpu="AMD EPYC", cpu_count=2, torch_threads=2, cpu_features=["avx2", "fma"],
                torch_cpu_capability="AVX2", extension="loaded", cpu_variants={"int8_mm": "avx2", "attention": "avx2"},
                device="cpu", LLMACCEL_BACKEND="(unset: auto)", fp32_gemm_gflops=123.4, read_gbps=21.0)
    for timing in (cli.QUICK, cli.FULL):
        text = cli.format_header(cond, timing)
        assert max(len(line) for line in text.splitlines()) <= cli.TABLE_WIDTH
        assert "fp32 GEMM 123 GFLOP/s" in text


def test_units_only_where_meaningful():
    decode = _row(case="decode", work=_cases.Work(ops=2.0 * 4096 * 4096, bytes=4096.0 * 4096), ours_ms=0.6,
                  peer_ms=0.6)
    prefill = _row(ours_ms=22.0, peer_ms=22.0)
    attn = _row(op="attention", case="prefill", work=_cases.Work(ops=1e10, ops_unit="GFLOP/s"), ours_ms=50.0,
                peer_ms=60.0)
    assert decode["ours_rate"].endswith(" GB/s") and "GOP/s" not in decode["ours_rate"]
    assert prefill["ours_rate"].endswith(" GOP/s") and "GB/s" not in prefill["ours_rate"]
    assert attn["peer_rate"].endswith(" GFLOP/s")
    text = cli.format_table([decode, prefill, attn])
    assert "GB/s" in text and "GOP/s" in text and "GFLOP/s" in text
    assert "0.1 GB/s" not in text


def test_a_peer_on_a_reference_path_is_flagged_not_reported_as_a_win():
    # int8 prefill: 17.2 GOP per call; the peer at 4.3 s -> 4 GOP/s, 2.7 % of a 150 GFLOP/s fp32 GEMM
    row = _row(ours_ms=130.0, peer_ms=4300.0)
    assert row["peer_reference_path"] and not row.get("ours_reference_path")
    # only the peer is judged: a slow llmaccel call (a busy machine) is not called a reference path
    slow_ours = _row(ours_ms=5000.0, peer_ms=22.0)
    assert not slow_ours["peer_reference_path"] and "-ref" not in cli.format_table([slow_ours])
    text = cli.format_table([row])
    body = text.splitlines()[3]
    assert "peer-ref" in body and "33.08x" not in body
    assert "ref path: int8_mm prefill: torch._int_mm ran at" in text and "33.08x" in text
    # a healthy peer is not flagged
    ok = _row(ours_ms=22.0, peer_ms=25.0)
    assert not ok["peer_reference_path"] and "peer-ref" not in cli.format_table([ok])
    # memory-bound: slow arithmetic (< 5 % of the GEMM rate) and slow streaming (< 10 % of the read rate)
    work = _cases.Work(ops=2.0 * 4096 * 4096, bytes=4096.0 * 4096)
    slow = _row(case="decode", work=work, ours_ms=0.7, peer_ms=24.6)     # 1.4 GOP/s, 0.68 GB/s
    fast = _row(case="decode", work=work, ours_ms=0.7, peer_ms=0.8)
    assert slow["peer_reference_path"] and not fast["peer_reference_path"]
    # fp32 F.linear decode: 8 layers of int8-weight bytes at 5 GB/s = 10 GOP/s, 6.7 % of 150 GFLOP/s: a GEMV
    stack = _cases.Work(ops=2.0 * 4096 * 4096 * 8, bytes=8 * 4096.0 * 4096)
    fp32 = _row(op="int8_linear", case="decode-vs-fp32", work=stack, ours_ms=5.0, peer_ms=27.0)
    assert not fp32["peer_reference_path"]
    # ... and slower arithmetic than 5 % (a faster GEMM unit) still streams at 20 % of the read rate
    fast_gemm = dict(RATES, fp32_gemm_gflops=400.0)
    cli.flag_reference_paths(fp32, stack, fast_gemm)
    assert not fp32["peer_reference_path"]
    md = cli.format_table([row, ok], markdown=True)
    assert "peer-ref" in md and "* int8_mm prefill: torch._int_mm ran at" in md


def test_backend_names_are_consistent_across_ops():
    info = llmaccel.cpu_info()
    if info.get("extension") != "loaded":
        pytest.skip("C++ extension not loaded")
    if os.environ.get("LLMACCEL_BACKEND", "auto") not in ("auto", "cpp"):
        pytest.skip("another backend requested")
    x = torch.randn(3, 64)
    wq = torch.randint(-127, 128, (16, 64), dtype=torch.int8)
    s = torch.rand(16) + 0.01

    def bench(args):
        return _cases.Bench(lambda i: None, lambda i: None, _cases.Work(ops=1.0), lambda i: args, 1)

    lin = _cases.Case(op="int8_linear", name="t", shape="t", device="cpu", peer="p", peer_description="p",
                      description="d", build=None)
    mm = _cases.Case(op="int8_mm", name="t", shape="t", device="cpu", peer="p", peer_description="p",
                     description="d", build=None)
    a = torch.randint(-128, 128, (3, 64), dtype=torch.int8)
    lin_label = cli.backend_label(lin, bench((x, wq, s, None, "dynamic")))
    mm_label = cli.backend_label(mm, bench((a, wq.t())))
    assert mm_label == f"cpp/{info['variants']['int8_mm']}"
    assert lin_label == mm_label


def test_speedup_is_the_median_of_paired_ratios_inside_its_quartiles():
    a = torch.randint(-128, 128, (8, 64), dtype=torch.int8)
    b = torch.randint(-128, 128, (32, 64), dtype=torch.int8).t()

    def build(case, device):
        return _cases.Bench(lambda i: llmaccel.int8_mm(a, b), lambda i: torch._int_mm(a, b),
                            _cases.Work(ops=2.0 * 8 * 32 * 64), lambda i: (a, b), 1)

    case = _cases.Case(op="int8_mm", name="tiny", shape="tiny", device="cpu", peer="torch._int_mm",
                       peer_description="p", description="d", build=build)
    timing = dict(min_time_s=0.02, max_reps=50, min_reps=9, warmup=1, case_budget_s=5.0)
    row = cli.run_case(case, timing, rates=RATES)
    assert row["status"] == "ok", row.get("error")
    assert row["paired_q1"] <= row["speedup"] <= row["paired_q3"]
    assert "ratio_of_medians" in row
    # a slow round cuts the rounds, not the case budget
    slow = dict(timing, case_budget_s=1e-9, min_time_s=0.0)
    row = cli.run_case(case, slow, rates=RATES)
    assert row["status"] == "ok" and row["reps"] == 1


def test_verify_budget_checks_at_least_one_set():
    calls = []
    bench = _cases.Bench(lambda i: calls.append(i) or torch.ones(1), lambda i: torch.ones(1), _cases.Work(ops=1.0),
                         lambda i: (), 3)
    assert bench.verify() == 3 and calls == [0, 1, 2]
    calls.clear()
    assert bench.verify(budget_s=0.0) == 1 and calls == [0]
    bad = _cases.Bench(lambda i: torch.ones(1), lambda i: torch.zeros(1), _cases.Work(ops=1.0), lambda i: (), 3)
    with pytest.raises(_cases.CaseMismatch):
        bad.verify(budget_s=0.0)


def test_help_is_plain_text(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out and ":mod:" not in out and ":func:" not in out and "::" not in out
    assert "--quick" in out and "--wide" in out
    assert max(len(line) for line in out.splitlines()) <= 120


# --------------------------------------------------------------------------
# scripts/
# --------------------------------------------------------------------------

def _install_state():
    spec = importlib.util.spec_from_file_location("install_state", os.path.join(ROOT, "scripts", "install_state.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_install_state_checks_versions_and_build_inputs(monkeypatch, tmp_path):
    st = _install_state()
    assert st.satisfied(["pytest>=1"]) == 0
    assert st.satisfied([f"torch=={torch.__version__.split('+')[0]}"]) == 0  # a local label (+cpu) still matches
    assert st.satisfied(["pytest==0.0.1"]) == 1
    assert st.satisfied(["surely-not-an-installed-package-xyz"]) == 1
    reqs = tmp_path / "r.txt"
    reqs.write_text("# comment\npytest>=1  # why\n\nnumpy\n")
    assert st.satisfied(["-r", str(reqs)]) == 0
    fp = st.fingerprint()
    assert fp == st.fingerprint()
    monkeypatch.setenv("LLMACCEL_NATIVE", "1")
    assert st.fingerprint() != fp


def test_scripts_parse():
    for name in ("install.sh", "test.sh", "bench.sh"):
        subprocess.run(["bash", "-n", os.path.join(ROOT, "scripts", name)], check=True)
