"""sparse_linear (C++ N:M kernel) against dense F.linear on the same 2:4-pruned weights, M = 1..256 (bench/RESULTS.md)."""
import torch, time, statistics, llmaccel
from llmaccel.sparsity import NMPackedWeight, prune


def main() -> None:
    torch.manual_seed(0)
    K=N=4096
    ws=[torch.randn(N,K)/64 for _ in range(4)]   # 4 weights rotating: 4 x 64 MB dense fp32, beyond the 32 MB L3
    packs=[NMPackedWeight.from_dense(w, prune(w,"2:4"), "2:4") for w in ws]
    fields=[llmaccel.sparse_linear_fields(p) for p in packs]
    dense=[p.to_dense() for p in packs]
    for M in (1,2,4,8,16,32,64,128,256):
        x=torch.randn(M,K)
        r=[]
        with torch.inference_mode(), llmaccel.backends.use("cpp"):
            for rep in range(7):
                t=time.perf_counter()
                for f in fields: llmaccel.sparse_linear(x,*f)
                a=time.perf_counter()-t
                t=time.perf_counter()
                for d in dense: torch.nn.functional.linear(x,d)
                b=time.perf_counter()-t
                r.append(b/a)
        print(f"M={M:4d}  sparse cpp / dense F.linear speed ratio {statistics.median(r):.2f}  (last: sparse {a*1e3/4:.2f} ms, dense {b*1e3/4:.2f} ms per layer)", flush=True)


if __name__ == "__main__":
    main()
