"""The residual fusion's worth on the real all-MiniLM-L6-v2: the same optimized int8 model with and without it.

``optimize(quantize="int8")`` swaps BERT's ``BertSelfOutput`` / ``BertOutput`` for ``DenseAddNorm``, which adds
the skip connection in the int8 kernel's epilogue (``int8_linear(..., residual=h_in)``).  The twin here is a deep
copy whose ``DenseAddNorm`` modules add outside the kernel (``LayerNorm(dense(h) + h_in)``): same int8 weights,
same codes, outputs bit-identical (checked).  The fp32 model, the fused and the unfused twin run round-robin in
one process; the ratio is the median of the per-round ratios (the host is shared: absolute times drift).

    python bench/minilm_residual_ab.py [--rounds 9]
    LLMACCEL_CPU_ISA=avx512 python bench/minilm_residual_ab.py      # a smaller CPU class on a bigger one
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import llmaccel
from llmaccel import demo
from llmaccel._fuse_residual import DenseAddNorm


def unfused_twin(model: torch.nn.Module) -> torch.nn.Module:
    twin = copy.deepcopy(model)
    for mod in twin.modules():
        if isinstance(mod, DenseAddNorm):
            mod.forward = (lambda m: (lambda h, i: m.LayerNorm(m.dense(h) + i)))(mod)
    return twin


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    model, tok, _ = demo.load_model(None)
    batch = demo.timed_batch(tok, (demo.SENTENCES * 40)[:32], 128, "none")
    fused = llmaccel.optimize(copy.deepcopy(model), quantize="int8", calibration=[demo.encode(tok, demo.CALIBRATION)])
    n = sum(isinstance(m, DenseAddNorm) for m in fused.modules())
    unfused = unfused_twin(fused)
    runs = {"fp32": lambda: model(**batch), "fused": lambda: fused(**batch), "unfused": lambda: unfused(**batch)}
    with torch.inference_mode():
        a, b = fused(**batch).last_hidden_state, unfused(**batch).last_hidden_state
        assert torch.equal(a, b), f"fused and unfused differ: max |diff| {(a - b).abs().max()}"
        for fn in runs.values():
            fn()
        times = {k: [] for k in runs}
        for _ in range(args.rounds):
            for k, fn in runs.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
    ratios = sorted(u / f for u, f in zip(times["unfused"], times["fused"]))
    med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    print(f"all-MiniLM-L6-v2, 32 x 128 tokens, {torch.get_num_threads()} threads, {n} DenseAddNorm, "
          f"variants {llmaccel.cpu_info()['variants']}; outputs bit-identical")
    print(f"median ms: fp32 {med['fp32']:.1f}, fused {med['fused']:.1f}, unfused {med['unfused']:.1f}")
    print(f"fused / unfused speedup: median {statistics.median(ratios):.3f}, per round "
          f"{', '.join(f'{r:.3f}' for r in ratios)}; fused vs fp32 {med['fp32'] / med['fused']:.2f}x")


if __name__ == "__main__":
    main()
