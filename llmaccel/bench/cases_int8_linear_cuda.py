"""CUDA benchmark cases for ``llmaccel.int8_linear`` (Triton backend) against bf16 ``F.linear``.

Registered into :mod:`llmaccel.bench.cases` only where ``torch.cuda.is_available()``;
the builders themselves take any device, so the CPU test suite runs them at tiny
shapes under ``TRITON_INTERPRET=1`` (tests/test_gpu_bench_cases.py).

Peer: ``torch.nn.functional.linear`` on bf16 tensors with the *unquantized*
weight rounded to bf16 (what a bf16 model runs without llmaccel), same bf16
activations and bf16 bias.

* ``w8a8-m{M}``: ``act="dynamic"`` (per-token int8 activations x int8 weight,
  int8 tensor cores) at M = 2048 / 4096 tokens through one 8192 x 8192 layer;
  2 weight sets rotate.  Compute-bound: GOP/s counts 2*M*N*K (the quantization
  prologue and the epilogue are not counted).  Goal of the issue: >= 1.6x.
* ``wo-decode-m{M}``: ``act="weight_only"`` at M = 1 / 16 (decode).  One call is
  one 8192 x 8192 layer; calls rotate through 8 layers (8 x 64 MiB = 512 MiB of
  int8 weights, 1 GiB in bf16 for the peer), far beyond the ~60 MB L2 of an
  H100/H200, so no call finds its weight in L2 even without the L2 flush of
  ``bench/gpu_check.py``.  Weight-bandwidth-bound: GB/s counts the int8 weight
  bytes (N*K per call) for *both* columns, so the peer's GB/s is an
  int8-equivalent rate (it actually reads 2*N*K bytes of bf16 weight).  Goal:
  faster than bf16.

Correctness is checked on every input set before timing, against the float64
product of the bf16 activations with the *original* fp32 weights (plus bias):
the whole quantization error counts.  Ours must reach SQNR >= 25 dB overall
(about 40 dB expected for W8A8, more for weight-only), >= 15 dB on every output
row (a broken token/tile cannot hide in the global figure), and no element may
be off by more than 10 % of the largest reference value; the bf16 peer must
reach 30 dB (a sanity check of inputs and reference).  Inputs are random and
never zero: x ~ N(0, 1), weights and bias uniform in +-1/sqrt(K) (nn.Linear's
initialisation), quantized symmetrically per output channel.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F

from .case import Bench, Case, Work, seeded_generator

__all__ = ["PEER", "sqnr_db", "row_sqnr_db", "quantize_weight", "int8_check", "int8_linear_vs_bf16", "cuda_cases"]

PEER = "F.linear bf16"
PEER_DESCRIPTION = ("torch.nn.functional.linear on bf16 CUDA tensors with the unquantized weight rounded to bf16 "
                    "(cuBLAS bf16 GEMM/GEMV, fp32 accumulation): the same layer without quantization")

SQNR_MIN_DB = 25.0        # ours against the float64 product with the original weights
ROW_SQNR_MIN_DB = 15.0    # every output row (token) on its own
MAX_ERR_FRAC = 0.1        # max |ours - ref| <= 10 % of max |ref|
PEER_SQNR_MIN_DB = 30.0   # the bf16 peer (sanity: bf16 weights give ~45-50 dB)


def sqnr_db(out: torch.Tensor, ref: torch.Tensor) -> float:
    """10 log10(sum ref^2 / sum (out - ref)^2) in float64; NaN/inf in ``out`` give NaN or -inf (never a pass)."""
    r = ref.double()
    err = (out.double() - r).pow(2).sum()
    return float(10 * torch.log10(r.pow(2).sum() / err.clamp_min(1e-300)))


def row_sqnr_db(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """SQNR of each row of 2-D ``out`` against ``ref`` (float64, one value per row)."""
    r = ref.double()
    err = (out.double() - r).pow(2).sum(dim=1)
    return 10 * torch.log10(r.pow(2).sum(dim=1).clamp_min(1e-300) / err.clamp_min(1e-300))


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 of ``w [N, K]``: (int8 [N, K], fp32 scale [N]) with w ~ q * scale[:, None]."""
    scale = (w.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
    q = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)
    return q, scale.to(torch.float32)


def pair_problem(o: Any, p: Any, ref: torch.Tensor, peer: str) -> Optional[str]:
    """Why ours (``o``) and the peer (``p``) cannot be compared with ``ref`` at all, or None.

    Shared by every CUDA case's check: two tensors of one shape and dtype, the
    reference's shape, and a reference that is not all zeros.
    """
    if not isinstance(o, torch.Tensor) or not isinstance(p, torch.Tensor):
        return f"expected two tensors, got {type(o).__name__} and {type(p).__name__}"
    if o.shape != p.shape or o.dtype != p.dtype or tuple(o.shape) != tuple(ref.shape):
        return (f"ours is {o.dtype} {tuple(o.shape)}, {peer} {p.dtype} {tuple(p.shape)}, "
                f"the reference {tuple(ref.shape)}")
    if not float(ref.abs().max()) > 0:
        return "the reference output is all zeros: degenerate inputs"
    return None


def int8_check(o: Any, p: Any, ref: torch.Tensor) -> Optional[str]:
    """None when ours (``o``) and the bf16 peer (``p``) both approximate ``ref`` (fp32 [M, N]) well enough."""
    problem = pair_problem(o, p, ref, "the peer")
    if problem:
        return problem
    scale = float(ref.abs().max())
    db = sqnr_db(o, ref)
    if not db >= SQNR_MIN_DB:
        return f"llmaccel's output has SQNR {db:.1f} dB against the float64 reference (< {SQNR_MIN_DB:g} dB)"
    rows = row_sqnr_db(o, ref)
    worst = int(torch.argmin(torch.nan_to_num(rows, nan=-math.inf)))
    if not float(rows[worst]) >= ROW_SQNR_MIN_DB:
        return (f"row {worst} of llmaccel's output has SQNR {float(rows[worst]):.1f} dB against the reference "
                f"(< {ROW_SQNR_MIN_DB:g} dB; overall {db:.1f} dB)")
    err = float((o.double() - ref.double()).abs().max())
    if not err <= MAX_ERR_FRAC * scale:
        return (f"max |llmaccel - reference| = {err:.4g} exceeds {MAX_ERR_FRAC:g} x max |reference| "
                f"({scale:.4g}); overall SQNR {db:.1f} dB")
    pdb = sqnr_db(p, ref)
    if not pdb >= PEER_SQNR_MIN_DB:
        return f"the bf16 peer has SQNR {pdb:.1f} dB against the reference (< {PEER_SQNR_MIN_DB:g} dB): inputs broken?"
    return None


def require_triton(op: str, args: tuple) -> None:
    """Refuse to build a case whose llmaccel side would not run the Triton backend (the timings would lie)."""
    from .. import backends

    ex = backends.explain(op, *args)
    if ex.backend != "triton":
        raise RuntimeError(f"this case measures the Triton backend, but the call would run on {ex.backend}:\n{ex}")


def int8_linear_vs_bf16(M: int, K: int, N: int, n_sets: int, act: str, *, stream_bytes: bool = False,
                        dtype: torch.dtype = torch.bfloat16, seed: int = 20):
    """Builder: ``llmaccel.int8_linear(x, w_int8, w_scale, bias, act=act)`` vs ``F.linear(x, w_bf16, bias)``.

    ``n_sets`` independent (x, weight, bias) sets rotate, one per call.  Any
    device (CPU tensors need TRITON_INTERPRET=1 and the triton backend).
    """
    if act not in ("dynamic", "weight_only"):
        raise ValueError(f"act must be 'dynamic' or 'weight_only', got {act!r}")

    def build(case: Case, device: torch.device) -> Bench:
        import llmaccel

        g = seeded_generator(device, seed)
        bound = 1.0 / math.sqrt(K)  # nn.Linear's default init range
        xs, wqs, scales, biases, wpeer, refs = [], [], [], [], [], []
        for _ in range(n_sets):
            w = (torch.rand((N, K), generator=g, device=device) * 2 - 1) * bound
            b = ((torch.rand((N,), generator=g, device=device) * 2 - 1) * bound).to(dtype)
            x = torch.randn((M, K), generator=g, device=device).to(dtype)
            wq, s = quantize_weight(w)
            refs.append(torch.addmm(b.double(), x.double(), w.double().t()).to(torch.float32))
            wpeer.append(w.to(dtype))
            xs.append(x)
            wqs.append(wq)
            scales.append(s)
            biases.append(b)
            del w
        int8_linear = llmaccel.int8_linear
        linear = F.linear
        last = [0]  # input set of ours' latest call: verify() checks ours(j) and peer(j) right after them

        def ours(i: int):
            j = i % n_sets
            last[0] = j
            return int8_linear(xs[j], wqs[j], scales[j], biases[j], act=act)

        def peer(i: int):
            j = i % n_sets
            return linear(xs[j], wpeer[j], biases[j])

        def args(i: int):
            j = i % n_sets
            return xs[j], wqs[j], scales[j], biases[j], act

        def check(o: Any, p: Any) -> Optional[str]:
            return int8_check(o, p, refs[last[0]])

        require_triton("int8_linear", args(0))
        work = Work(ops=2.0 * M * N * K, bytes=float(N * K) if stream_bytes else None, bytes_what="int8 weight")
        bench = Bench(ours, peer, work, args, n_sets)
        bench.check = check
        return bench

    return build


# --------------------------------------------------------------------------
# The cases
# --------------------------------------------------------------------------

_LAYER = 8192
_DECODE_LAYERS = 8


def cuda_cases() -> list[Case]:
    """The CUDA cases (listed in ``CASES`` below only where a GPU exists)."""
    K = N = _LAYER
    out = []
    for M in (4096, 2048):
        out.append(Case(
            op="int8_linear", name=f"w8a8-m{M}", shape=f"M={M} K={K} N={N} bf16", device="cuda",
            peer=PEER, peer_description=PEER_DESCRIPTION,
            description=(f"W8A8 prefill: {M} bf16 tokens through one {K} x {N} layer (2 weight sets rotate), "
                         "int8 tensor cores vs bf16; GOP/s = 2*M*N*K; issue goal: speedup >= 1.6"),
            build=int8_linear_vs_bf16(M, K, N, 2, "dynamic")))
    for M in (1, 16):
        out.append(Case(
            op="int8_linear", name=f"wo-decode-m{M}",
            shape=f"M={M} K={K} N={N} bf16, {_DECODE_LAYERS} layers rotating", device="cuda",
            peer=PEER, peer_description=PEER_DESCRIPTION,
            description=(f"weight-only decode: {M} bf16 token(s), one call = one layer, {_DECODE_LAYERS} layers "
                         f"rotating ({_DECODE_LAYERS * K * N >> 20} MiB int8 / {2 * _DECODE_LAYERS * K * N >> 20} MiB "
                         "bf16, beyond L2); GB/s = int8 weight bytes N*K per call for both sides (the bf16 peer "
                         "reads twice that); issue goal: speedup > 1"),
            build=int8_linear_vs_bf16(M, K, N, _DECODE_LAYERS, "weight_only", stream_bytes=True)))
    return out


CASES: list[Case] = cuda_cases() if torch.cuda.is_available() else []  # collected by the registry (cases.py)
