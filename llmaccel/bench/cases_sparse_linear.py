"""Benchmark cases for ``llmaccel.sparse_linear`` (``CASES``, registered by :mod:`llmaccel.bench.cases`).

Like the int8_linear cases, the unit timed is a pass of the activations through chained 4096 x 4096 layers.
Ours: 2:4 fp32 weights in the N:M packed format (values + 2-bit indices: 0.53x the dense bytes).  Peer:
``torch.nn.functional.linear`` with the same pruned weights stored dense in fp32 (what a user has after
``torch.nn.utils.prune``).  Both compute the same math, so the check is fp32 rounding (relative error
<= 1e-4 of the output norm).

* ``decode``: M=1 through 8 layers (256 MB of packed fp32 values, 512 MB dense: far beyond the last-level
  cache, so every pass streams the weights from DRAM): GB/s of compressed weight.
* ``prefill``: M=512 (and M=128) through one layer, 2 (3) weight sets rotating: GFLOP/s of the
  dense-equivalent work.  At these M the op's cpp backend runs the large-M kernel (csrc/sparse_nm_large*.cpp);
  its rate on the kept weights is half the reported dense-equivalent GFLOP/s.
* ``prefill-bsr90`` / ``prefill-bsr50``: M=512 through one 4096 x 4096 layer with 90 % / 50 % of its 32 x 32
  tiles pruned, stored as BSR (the C++ BSR kernel), 3 weight sets rotating; peer dense ``F.linear``.
* ``decode-unstructured50/90``: as ``decode`` with unstructured (magnitude) pruning at 50 % / 90 % in the bitmap
  format (the C++ bitmap kernel), against dense ``F.linear`` and, as a second peer, torch.sparse CSR.

CUDA (the Triton N:M kernel, ``bench/gpu_check.py``): the same cases in bf16 (values and x), against
``F.linear`` on the dense pruned bf16 weight (cuBLAS); checked to 2e-2 relative error (bf16 rounding of two
different summation orders).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Optional

import torch

from .case import Bench, Case, Work, seeded_generator, smoke_layers

CASES: list[Case] = []  # collected by the registry (cases.py)

K = N = 4096


@functools.lru_cache(maxsize=3)
def _stack(n_layers: int, seed: int, k: int = K, n: int = N, fmt: str = "2:4"):
    """(compressed weight, pruned dense fp32 weight, bias) per layer (cached, read-only).  ``fmt`` "2:4": the
    N:M packed format ("2:4-int8": with int8 values and per-row scales); "unstructured:<s>": magnitude-pruned to sparsity s in the bitmap format; "bsr:<s>":
    that share of the 32 x 32 tiles pruned by magnitude, in the BSR format."""
    from ..sparsity import BitmapWeight, BSRWeight, NMPackedWeight, prune

    g = seeded_generator(torch.device("cpu"), seed)
    bound = 1.0 / k ** 0.5
    layers = []
    for _ in range(n_layers):
        w = (torch.rand((n, k), generator=g) * 2 - 1) * bound
        b = (torch.rand((n,), generator=g) * 2 - 1) * bound
        if fmt.startswith("bsr:"):
            mask = prune(w, "block", sparsity=float(fmt.split(":")[1]), block_size=(32, 32))
            packed = BSRWeight.from_dense(w, mask, (32, 32))
        elif fmt.startswith("unstructured:"):
            packed = BitmapWeight.from_dense(w, prune(w, "unstructured", sparsity=float(fmt.split(":")[1])))
        elif fmt.endswith("-int8"):
            pattern = fmt[:-len("-int8")]
            packed = NMPackedWeight.from_dense(w, prune(w, pattern), pattern, quantize="int8")
        else:
            packed = NMPackedWeight.from_dense(w, prune(w, fmt), fmt)
        layers.append((packed, packed.to_dense(), b))
    return tuple(layers)


def _builder(M: int, n_layers: int, n_stacks: int, *, k: int = K, n: int = N, dtype: Optional[torch.dtype] = None,
             fmt: str = "2:4", peer_csr: bool = False, peer_int8: bool = False, act: str = "none"):
    """Builder: M tokens through ``n_layers`` chained k x n layers pruned as ``fmt`` says (``_stack``;
    ``n_stacks`` weight sets rotating), fp32 on the CPU and bf16 on a GPU unless ``dtype`` says otherwise.
    Peer: ``F.linear`` on the dense pruned weights, or with ``peer_csr`` the same weights as torch.sparse CSR
    (``to_sparse_csr()``, ``W @ y.T``: MKL sparse on the CPU), or with ``peer_int8`` our dense int8 weight-only
    linear (``llmaccel.int8_linear(act="weight_only")``, what ``Int8Linear`` runs) on the same int8 weights.
    ``act="dynamic"``: ours quantizes x per token (W8A8, the int8 x int8 kernel), and the int8 peer is
    ``int8_linear(act="dynamic")`` (``Int8Linear``'s default) on the same codes."""

    def build(case: Case, device: torch.device) -> Bench:
        import llmaccel

        dt = dtype or (torch.float32 if device.type == "cpu" else torch.bfloat16)
        g = seeded_generator(device, 1)
        layers_built = smoke_layers(n_layers)
        stacks = [_stack(layers_built, 20 + s, k, n, fmt) for s in range(n_stacks)]

        def on_device(t):
            """A field on the case's device; float values (the stacks hold no int8 scales) in the case's dtype."""
            if not isinstance(t, torch.Tensor):
                return t
            return t.to(device, dt) if t.is_floating_point() else t.to(device)

        fields = [[tuple(on_device(t) for t in llmaccel.sparse_linear_fields(p)) for p, _, _ in layers]
                  for layers in stacks]
        biases = [[b.to(device, dt) for _, _, b in layers] for layers in stacks]
        dense = [[w.to(device, dt) for _, w, _ in layers] for layers in stacks]
        xs = [torch.randn((M, k), generator=g, device=device).to(dt) for _ in range(n_stacks)]
        tol = 1e-4 if dt == torch.float32 else 2e-2
        if act == "dynamic" and not peer_int8:
            # W8A8 against the fp32 stack: per-token int8 rounding of x, 2.4 % relative through the 8 layers
            # on these random weights (measured); the int8 peer computes the same codes and stays at 1e-4.
            tol = 5e-2

        def ours(i: int):
            j = i % n_stacks
            y = xs[j]
            for f, b in zip(fields[j], biases[j]):
                y = llmaccel.sparse_linear(y, *f, b, act)
            return y

        if peer_csr:  # the CSR copies only: the dense ones are dropped
            with warnings.catch_warnings():  # torch's "sparse CSR support is in beta" note, once per build
                warnings.simplefilter("ignore", UserWarning)
                weights = [[w.to_sparse_csr() for w in layers] for layers in dense]
            dense = None

            def layer(y, w, b):
                return (w @ y.t()).t() + b
        elif peer_int8:  # the dense pruned weights as int8 + per-row scales (exactly the sparse values)
            from ..nn.int8_linear import quantize_weight_per_channel

            weights = [[quantize_weight_per_channel(w) for w in layers] for layers in dense]
            dense = None

            def layer(y, w, b):
                return llmaccel.int8_linear(y, w[0], w[1], b, act="weight_only" if act == "none" else act)
        else:
            weights, layer = dense, torch.nn.functional.linear

        def peer(i: int):
            j = i % n_stacks
            y = xs[j]
            for w, b in zip(weights[j], biases[j]):
                y = layer(y, w, b)
            return y

        def check(o: Any, p: Any) -> Optional[str]:
            """Ours against the dense pruned stack: the expected shape and dtype, finite, and within ``tol``
            in relative norm and ``4 tol`` of the largest output element-wise."""
            if not isinstance(o, torch.Tensor) or tuple(o.shape) != (M, n) or o.dtype != dt or p.shape != o.shape:
                return f"ours is {getattr(o, 'dtype', type(o))} {tuple(getattr(o, 'shape', ()))}, expected {dt} {(M, n)}"
            if not bool(torch.isfinite(o).all()):
                return "ours holds NaN or inf"
            scale = float(p.double().abs().max())
            if not scale > 0:
                return "the dense peer's output is all zeros: degenerate inputs"
            rel = float((o.double() - p.double()).norm() / p.double().norm())
            worst = float((o.double() - p.double()).abs().max())
            if not (rel <= tol and worst <= 4 * tol * scale):
                return (f"relative error {rel:.3g} (bound {tol:g}), worst element {worst:.3g} (bound "
                        f"{4 * tol * scale:.3g}) against the dense pruned stack")
            return None

        def args(i: int):
            j = i % n_stacks
            return (xs[j], *fields[j][0], biases[j][0])

        packed_bytes = float(sum(p.nbytes() for p, _, _ in stacks[0]))
        if dt != torch.float32:  # the values (all but the index bytes) are stored in dt
            packed_bytes = float(sum(p.nbytes() + p.values.numel() * (torch.empty((), dtype=dt).element_size()
                                                                      - p.values.element_size())
                                     for p, _, _ in stacks[0]))
        what = "bitmap weight" if fmt.startswith("unstructured") else f"{fmt} packed weight"
        if fmt.startswith("unstructured") and device.type == "cpu":
            from ..ops.sparse_linear_routes import bitmap_route

            p0 = stacks[0][0][0]
            if bitmap_route(M, p0.values.numel() / (n * k), k).name == "bitmap_index":
                # That route streams a uint16 column per kept value instead of the bitmap: count what it reads.
                packed_bytes = float(sum(p.nbytes() - p.bitmap.numel() + 2 * p.values.numel()
                                         for p, _, _ in stacks[0]))
                what = "column-index weight (values + uint16 columns)"
        work = Work(ops=2.0 * M * n * k * layers_built, bytes=packed_bytes if M <= 2 else None,
                    bytes_what=what, ops_unit="GFLOP/s")
        bench = Bench(ours, peer, work, args, n_stacks)
        bench.check = check
        return bench

    return build


_PEER = ("F.linear fp32 (pruned, dense)", "torch.nn.functional.linear with the same 2:4-pruned weights stored dense "
                                          "in fp32 (MKL sgemv/sgemm)")

CASES.append(Case(op="sparse_linear", name="decode-2:4-vs-fp32", shape=f"M=1 K={K} N={N} x8 layers 2:4",
                  device="cpu", peer=_PEER[0], peer_description=_PEER[1],
                  description="one token through 8 chained 4096 x 4096 2:4 layers (256 MB packed, 512 MB dense "
                              "per pass, beyond L3)", build=_builder(1, 8, 1)))
CASES.append(Case(op="sparse_linear", name="prefill-2:4-vs-fp32", shape=f"M=512 K={K} N={N} 2:4",
                  device="cpu", peer=_PEER[0], peer_description=_PEER[1],
                  description="512 tokens through one 4096 x 4096 2:4 layer (2 weight sets rotate)",
                  build=_builder(512, 1, 2)))
CASES.append(Case(op="sparse_linear", name="prefill128-2:4-vs-fp32", shape=f"M=128 K={K} N={N} 2:4",
                  device="cpu", peer=_PEER[0], peer_description=_PEER[1],
                  description="128 tokens through one 4096 x 4096 2:4 layer (3 weight sets rotate)",
                  build=_builder(128, 1, 3)))

# 2:4 with int8 values (weight-only int8: the kernel converts them in registers), decode through 8 layers:
# against dense fp32 F.linear, and against our dense int8 weight-only linear on the same int8 weights.
_DESC_INT8 = ("one token through 8 chained 4096 x 4096 2:4 layers with int8 values + per-row scales (0.63 of a "
              "byte per weight: 0.16x dense fp32, 0.63x dense int8; beyond L3)")
CASES.append(Case(op="sparse_linear", name="decode-2:4-int8-vs-fp32", shape=f"M=1 K={K} N={N} x8 layers 2:4 int8",
                  device="cpu", peer=_PEER[0], peer_description=_PEER[1], description=_DESC_INT8,
                  build=_builder(1, 8, 1, fmt="2:4-int8")))
CASES.append(Case(op="sparse_linear", name="decode-2:4-int8-vs-int8", shape=f"M=1 K={K} N={N} x8 layers 2:4 int8",
                  device="cpu", peer="llmaccel int8 weight-only (dense)",
                  peer_description="llmaccel.int8_linear(act='weight_only') (what Int8Linear runs) on the same "
                                   "pruned weights stored dense as int8 + per-row scales",
                  description=_DESC_INT8, build=_builder(1, 8, 1, fmt="2:4-int8", peer_int8=True)))

# The same weights with int8 activations (act="dynamic", W8A8: x quantized per token, the AVX2 kernel gathers
# x codes with vpshufb and multiplies with vpmaddubsw): against dense fp32, and against our dense W8A8 Int8Linear
# (int8_linear act="dynamic", what Int8Linear runs by default) on the same int8 weights.
_DESC_W8A8 = _DESC_INT8.replace("int8 values + per-row scales", "int8 values + per-row scales, x quantized per "
                                "token (W8A8)")
CASES.append(Case(op="sparse_linear", name="decode-2:4-w8a8-vs-fp32",
                  shape=f"M=1 K={K} N={N} x8 layers 2:4 int8 act=dynamic", device="cpu", peer=_PEER[0],
                  peer_description=_PEER[1], description=_DESC_W8A8,
                  build=_builder(1, 8, 1, fmt="2:4-int8", act="dynamic")))
CASES.append(Case(op="sparse_linear", name="decode-2:4-w8a8-vs-int8",
                  shape=f"M=1 K={K} N={N} x8 layers 2:4 int8 act=dynamic", device="cpu",
                  peer="llmaccel int8 W8A8 (dense)",
                  peer_description="llmaccel.int8_linear(act='dynamic') (Int8Linear's default) on the same pruned "
                                   "weights stored dense as int8 + per-row scales",
                  description=_DESC_W8A8, build=_builder(1, 8, 1, fmt="2:4-int8", peer_int8=True, act="dynamic")))

# Unstructured sparsity in the bitmap format (csrc/sparse_bitmap*.cpp), decode through 8 layers, at 50 % and
# 90 %: against dense F.linear on the same pruned weights, and against torch.sparse CSR of them.
_CSR_PEER = ("torch.sparse CSR fp32", "the same pruned weights as torch.sparse CSR (w.to_sparse_csr(), int64 "
                                      "indices), y = (W @ y.T).T + b: MKL sparse on the CPU")
for _s in (50, 90):
    _fmt = f"unstructured:{_s / 100}"
    _desc = (f"one token through 8 chained 4096 x 4096 layers, {_s} % unstructured sparsity in the bitmap format "
             f"(~{(1 - _s / 100) * 4 + 0.125:.2f} of 4 bytes per weight; dense 512 MB per pass, beyond L3)")
    CASES.append(Case(op="sparse_linear", name=f"decode-unstructured{_s}-vs-fp32",
                      shape=f"M=1 K={K} N={N} x8 layers {_s}% bitmap", device="cpu",
                      peer=_PEER[0], peer_description=_PEER[1].replace("2:4-pruned", f"{_s} %-pruned"),
                      description=_desc, build=_builder(1, 8, 1, fmt=_fmt)))
    CASES.append(Case(op="sparse_linear", name=f"decode-unstructured{_s}-vs-csr",
                      shape=f"M=1 K={K} N={N} x8 layers {_s}% bitmap", device="cpu",
                      peer=_CSR_PEER[0], peer_description=_CSR_PEER[1],
                      description=_desc, build=_builder(1, 8, 1, fmt=_fmt, peer_csr=True)))

# Block-sparse prefill (the C++ BSR kernel, csrc/sparse_bsr*.cpp): 32 x 32 tiles, 3 weight sets rotating so the
# dense peer's 64 MB weights do not sit in L3 between calls.  GFLOP/s of the dense-equivalent work, so ours /
# peer is the speedup (issue goal >= 6x at 90 %, bound 10x).
for _pct in (90, 50):
    CASES.append(Case(op="sparse_linear", name=f"prefill-bsr{_pct}-vs-fp32",
                      shape=f"M=512 K={K} N={N} 32x32 {_pct}%", device="cpu", peer=_PEER[0],
                      peer_description=_PEER[1].replace("2:4-pruned", "block-pruned"),
                      description=f"512 tokens through one 4096 x 4096 layer with {_pct} % of its 32 x 32 tiles "
                                  "pruned (BSR, 3 weight sets rotate)",
                      build=_builder(512, 1, 3, fmt=f"bsr:{_pct / 100}")))


def cuda_cases() -> list[Case]:
    """The CUDA cases (listed in ``CASES`` only where a GPU exists): the Triton N:M kernel in bf16."""
    peer = ("F.linear bf16 (pruned, dense)",
            "torch.nn.functional.linear with the same 2:4-pruned weights stored dense in bf16 (cuBLAS)")
    return [
        Case(op="sparse_linear", name="decode-2:4-vs-bf16", shape=f"M=1 K={K} N={N} x8 layers 2:4 bf16",
             device="cuda", peer=peer[0], peer_description=peer[1],
             description="one token through 8 chained 4096 x 4096 2:4 layers (Triton N:M kernel)",
             build=_builder(1, 8, 1)),
        Case(op="sparse_linear", name="prefill-2:4-vs-bf16", shape=f"M=512 K={K} N={N} 2:4 bf16",
             device="cuda", peer=peer[0], peer_description=peer[1],
             description="512 tokens through one 4096 x 4096 2:4 layer (Triton N:M kernel)",
             build=_builder(512, 1, 2)),
    ]


if torch.cuda.is_available():
    CASES += cuda_cases()
