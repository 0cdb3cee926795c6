"""The dispatcher: automatic choice, overrides, explanations, fallbacks."""

import logging

import pytest
import torch

import llmaccel
from llmaccel import backends

from helpers import INTERPRET, int8_mm_exact, randint8


def _ab():
    return randint8(3, 20), randint8(4, 20).t()


@pytest.mark.skipif(INTERPRET, reason="the interpreter pass forces LLMACCEL_BACKEND=triton")
def test_auto_picks_cpp_on_cpu(monkeypatch):
    monkeypatch.delenv("LLMACCEL_BACKEND", raising=False)
    a, b = _ab()
    ex = backends.explain("int8_mm", a, b)
    assert ex.requested == "auto" and ex.backend == "cpp"
    assert set(ex.refused) == {"triton", "torch"}
    assert "int8_mm" in str(ex) and "-> cpp" in str(ex)


def test_context_manager_wins_over_environment(monkeypatch):
    monkeypatch.setenv("LLMACCEL_BACKEND", "cpp")
    a, b = _ab()
    assert backends.explain("int8_mm", a, b).backend == "cpp"
    with backends.use("torch"):
        assert backends.current() == "torch"
        ex = backends.explain("int8_mm", a, b)
        assert ex.backend == "torch"
        assert "not requested" in ex.refused["cpp"]
        assert torch.equal(llmaccel.int8_mm(a, b), int8_mm_exact(a, b))
    assert backends.current() == "cpp"


def test_environment_variable_is_validated(monkeypatch):
    monkeypatch.setenv("LLMACCEL_BACKEND", "cuda-magic")
    with pytest.raises(ValueError, match="LLMACCEL_BACKEND must be one of"):
        llmaccel.int8_mm(*_ab())
    with pytest.raises(ValueError, match="backend must be one of"):
        with backends.use("fast"):
            pass


@pytest.mark.skipif(INTERPRET, reason="Triton is usable on CPU under the interpreter")
def test_explicit_request_that_cannot_run_says_why():
    a, b = _ab()
    with backends.use("triton"):
        with pytest.raises(backends.BackendUnavailable, match=r"int8_mm: backend 'triton'.*TRITON_INTERPRET"):
            llmaccel.int8_mm(a, b)
        assert backends.explain("int8_mm", a, b).backend is None


def test_cpp_refuses_non_cpu_tensors_with_reason():
    a = torch.empty(3, 4, dtype=torch.int8, device="meta")
    b = torch.empty(4, 2, dtype=torch.int8, device="meta")
    ex = backends.explain("int8_mm", a, b)
    assert "CPU tensors" in ex.refused["cpp"]


@pytest.mark.skipif(INTERPRET, reason="the interpreter pass forces LLMACCEL_BACKEND=triton")
def test_auto_fallback_logs_once(monkeypatch, caplog):
    monkeypatch.delenv("LLMACCEL_BACKEND", raising=False)
    monkeypatch.setitem(backends._DEVICE_PROBLEM, "cpp", lambda device: "pretend the extension is missing")
    monkeypatch.setattr(backends, "_logged", set())
    a, b = _ab()
    with caplog.at_level(logging.WARNING, logger="llmaccel"):
        for _ in range(3):
            assert torch.equal(llmaccel.int8_mm(a, b), int8_mm_exact(a, b))
    msgs = [r.getMessage() for r in caplog.records if r.name == "llmaccel"]
    assert len(msgs) == 1 and "falling back from cpp to torch" in msgs[0] and "pretend" in msgs[0]
    assert backends.explain("int8_mm", a, b).backend == "torch"


def test_explain_unknown_op():
    with pytest.raises(ValueError, match="unknown op 'nope'"):
        backends.explain("nope")


def test_cpu_info_reports_features_and_variants():
    info = llmaccel.cpu_info()
    assert info["extension"] == "loaded"
    variants = info["available_variants"]["int8_mm"]
    assert variants[-1] == "generic"
    assert info["variants"]["int8_mm"] == variants[0]
    if "avx512vnni" in info["features"] and "avx512bw" in info["features"]:
        assert variants[0] == "avx512vnni"
    assert info["num_threads"] == torch.get_num_threads()
