"""One-core MAC rate of Int8Linear (act="dynamic") and torch.ao dynamic int8, interleaved.

Pairs with bench/avx2_int8_ceiling.cpp: both print MACs per nanosecond of
thread CPU time, so the GEMM's rate reads directly as a fraction of its
instruction sequence's bare-loop ceiling.  Run pinned to one core:
    taskset -c 1 python bench/int8_per_core.py [M ...]      (default: 512 64)
Weights 4096 x 4096, inputs randn; median of 7 interleaved rounds.
"""

import statistics
import sys
import time
import warnings

import torch

import llmaccel.nn as lnn


def main() -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    from torch.ao.quantization import quantize_dynamic

    N = K = 4096
    torch.manual_seed(0)
    lin = torch.nn.Linear(K, N)
    ours = lnn.Int8Linear.from_linear(lin)
    ao = quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8)
    for M in [int(m) for m in sys.argv[1:]] or [512, 64]:
        x = torch.randn(M, K)
        reps = max(2, 1024 // M)
        rates = {"llmaccel": [], "torch.ao": []}
        with torch.inference_mode():
            for f in (ours, ao):
                f(x)
            for _ in range(7):
                for name, f in (("llmaccel", ours), ("torch.ao", ao)):
                    t = time.thread_time()
                    for _ in range(reps):
                        f(x)
                    rates[name].append(M * N * K * reps / (time.thread_time() - t) * 1e-9)
        med = {k: statistics.median(v) for k, v in rates.items()}
        print(f"M={M:4d}  llmaccel {med['llmaccel']:5.1f} MAC/ns   torch.ao {med['torch.ao']:5.1f} MAC/ns   "
              f"ratio {med['llmaccel'] / med['torch.ao']:.2f}")


if __name__ == "__main__":
    main()
