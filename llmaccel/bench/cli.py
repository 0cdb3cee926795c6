"""``llmaccel-bench`` / ``python -m llmaccel.bench``: llmaccel against its PyTorch peers.

For every selected case (see :mod:`llmaccel.bench.cases`) it

1. builds the inputs (several rotating input sets where the cache matters),
2. checks once that llmaccel and the peer give the same result on every input
   set (``torch.equal`` for exact ops) and aborts the case loudly otherwise,
3. times the two interleaved (:func:`llmaccel.bench.timing.compare`),

then prints the conditions header, and last a table whose ``speedup`` is
``peer median / ours median``: above 1 means llmaccel is faster.

Examples::

    python -m llmaccel.bench                      # every CPU case, ~2 s of timing each
    python -m llmaccel.bench --quick              # smoke run (CI), well under a minute
    python -m llmaccel.bench --op int8_mm --case decode --min-time 10
    python -m llmaccel.bench --device cuda --json out.json --csv out.csv
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gc
import json
import os
import platform
import sys
import time
from typing import Any, Optional, Sequence

import torch

from . import cases as _cases
from .timing import ForeignCpu, compare

__all__ = ["main", "conditions", "run_case", "format_table", "fill_rates", "backend_label"]

FOREIGN_CPU_WARN = 0.05  # warn when other processes used more than 5 % of the CPUs during a case
QUICK = dict(min_time_s=0.25, max_reps=40, min_reps=3, warmup=1)
FULL = dict(min_time_s=2.0, max_reps=2000, min_reps=10, warmup=3)


# --------------------------------------------------------------------------
# Conditions
# --------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except Exception as exc:  # not installed, or broken
        return f"not importable ({exc.__class__.__name__})"


def conditions(device: str) -> dict[str, Any]:
    """Everything that shapes the numbers: date, versions, CPU features, threads, GPU."""
    import llmaccel

    info = llmaccel.cpu_info()
    cond: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "llmaccel": llmaccel.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_features": info.get("features", []),
        "cpu_variants": info.get("variants", {}),
        "LLMACCEL_CPU_ISA": info.get("cpu_isa") or "(unset: best the CPU supports)",
        "torch_cpu_capability": info.get("torch_cpu_capability"),
        "extension": info.get("extension"),
        "device": device,
        "LLMACCEL_BACKEND": os.environ.get("LLMACCEL_BACKEND", "(unset: auto)"),
    }
    if device == "cuda" and torch.cuda.is_available():
        cap = torch.cuda.get_device_capability()
        cond.update(gpu=torch.cuda.get_device_name(), gpu_capability=f"{cap[0]}.{cap[1]}", cuda=torch.version.cuda)
    return cond


def format_header(cond: dict[str, Any], timing: dict[str, Any]) -> str:
    lines = [
        f"llmaccel-bench  {cond['date']}  (llmaccel {cond['llmaccel']})",
        f"  python {cond['python']}, torch {cond['torch']}, triton {cond['triton']}",
        f"  cpu: {cond['cpu']}, {cond['cpu_count']} logical cpus, torch threads {cond['torch_threads']}",
        f"  cpu features: {' '.join(cond['cpu_features']) or '(none detected)'}; "
        f"torch cpu capability {cond['torch_cpu_capability']}; llmaccel._C {cond['extension']}",
        f"  llmaccel cpu variants: {', '.join(f'{k}={v}' for k, v in cond['cpu_variants'].items()) or '-'} "
        f"(LLMACCEL_CPU_ISA={cond.get('LLMACCEL_CPU_ISA', '-')})",
        f"  device: {cond['device']}" + (f" ({cond['gpu']}, sm {cond['gpu_capability']}, CUDA {cond['cuda']})"
                                         if "gpu" in cond else ""),
        f"  backend request: LLMACCEL_BACKEND={cond['LLMACCEL_BACKEND']}",
        f"  timing: ours and peer interleaved call by call, rotating input sets, median of >= "
        f"{timing['min_reps']} calls each, >= {timing['min_time_s']:g} s per case (max {timing['max_reps']} calls), "
        f"{timing['warmup']} warm-up round(s)",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------

def backend_label(case: _cases.Case, bench: _cases.Bench) -> str:
    import llmaccel

    backend = case.backend(bench)
    if backend == "cpp":
        variant = llmaccel.cpu_info().get("variants", {}).get(case.op)
        if variant:
            return f"cpp/{variant}"
    return backend


def run_case(case: _cases.Case, timing: dict[str, Any], log=None) -> dict[str, Any]:
    """Set up, verify and time one case; a dict row for the table/JSON/CSV (``status`` != "ok" on failure)."""
    log = log or (lambda msg: None)
    row: dict[str, Any] = dict(op=case.op, case=case.name, shape=case.shape, device=case.device, peer=case.peer,
                               peer_description=case.peer_description, description=case.description)
    cuda = case.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    bench = None
    try:
        t0 = time.perf_counter()
        bench = case.setup()
        work = bench.work
        row["backend"] = backend_label(case, bench)
        log(f"inputs ready ({time.perf_counter() - t0:.1f} s, {bench.n_sets} set(s)); backend {row['backend']}; "
            "verifying ...")
        bench.verify(sync=sync)
        log("results verified; timing ...")
        with ForeignCpu() as foreign:
            cmp = compare(bench.ours, bench.peer, sync=sync, **timing)
    except _cases.CaseMismatch as exc:
        row.update(status="MISMATCH", error=str(exc))
        return row
    except Exception as exc:  # one broken case must not hide the others
        row.update(status="ERROR", error=f"{exc.__class__.__name__}: {exc}")
        return row
    finally:
        del bench
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()

    row.update(status="ok", reps=cmp.ours.reps,
               ours_ms=cmp.ours.median * 1e3, ours_min_ms=cmp.ours.min * 1e3, ours_iqr_ms=cmp.ours.iqr * 1e3,
               peer_ms=cmp.peer.median * 1e3, peer_min_ms=cmp.peer.min * 1e3, peer_iqr_ms=cmp.peer.iqr * 1e3,
               speedup=cmp.ratio, paired_q1=cmp.paired_ratio.q1, paired_q3=cmp.paired_ratio.q3,
               timed_s=cmp.elapsed_s, foreign_cpu=foreign.share)
    fill_rates(row, work)
    return row


_RATE_KEYS = {"GOP/s": "gops", "GB/s": "gbps"}


def fill_rates(row: dict[str, Any], work: _cases.Work) -> None:
    if row.get("status") != "ok":
        return
    for side in ("ours", "peer"):
        rates = work.rates(row[f"{side}_ms"] / 1e3)
        row[f"{side}_rate"] = work.format(row[f"{side}_ms"] / 1e3)
        for unit, v in rates.items():
            row[f"{side}_{_RATE_KEYS[unit]}"] = v  # ours_gops, ours_gbps, ...


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------

_COLUMNS = [
    ("op", "op"), ("case", "case"), ("shape", "shape"), ("backend", "backend"),
    ("ours_ms", "ours ms"), ("ours_rate", "ours throughput"), ("peer", "peer"), ("peer_ms", "peer ms"),
    ("peer_rate", "peer throughput"), ("speedup", "speedup"), ("paired", "paired q1-q3"),
    ("foreign_cpu", "other procs"),
]


def _cell(row: dict[str, Any], key: str) -> str:
    if row.get("status") != "ok" and key in ("ours_ms", "ours_rate", "peer_ms", "peer_rate", "speedup", "paired"):
        return row.get("status", "?") if key == "speedup" else "-"
    if key in ("ours_ms", "peer_ms"):
        v = row[key]
        return f"{v:.3f}" if v < 10 else f"{v:.2f}"
    if key == "foreign_cpu":
        v = row.get(key)
        return "-" if v is None else f"{v:.0%} cpu"
    if key == "speedup":
        return f"{row['speedup']:.2f}x"
    if key == "paired":
        return f"{row['paired_q1']:.2f}-{row['paired_q3']:.2f}x"
    return str(row.get(key, "-"))


def format_table(rows: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    """The results table (plain text, or markdown for RESULTS.md); columns nobody measured are left out."""
    columns = [(k, h) for k, h in _COLUMNS if k != "foreign_cpu" or any(r.get(k) is not None for r in rows)]
    heads = [h for _, h in columns]
    body = [[_cell(r, k) for k, _ in columns] for r in rows]
    if markdown:
        out = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in heads) + "|"]
        out += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(out)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(heads)]
    numeric = {"ours ms", "peer ms", "speedup", "other procs"}

    def fmt(cells):
        return "  ".join(c.rjust(w) if h in numeric else c.ljust(w) for c, w, h in zip(cells, widths, heads)).rstrip()

    return "\n".join([fmt(heads), fmt(["-" * w for w in widths])] + [fmt(b) for b in body])


def _write_json(path: str, cond: dict, timing: dict, rows: list[dict]) -> None:
    with open(path, "w") as f:
        json.dump({"conditions": cond, "timing": timing,
                   "results": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]}, f, indent=2)
        f.write("\n")


_CSV_FIELDS = ["op", "case", "shape", "device", "backend", "status", "reps", "ours_ms", "ours_min_ms", "ours_iqr_ms",
               "ours_gops", "ours_gbps", "peer", "peer_ms", "peer_min_ms", "peer_iqr_ms", "peer_gops", "peer_gbps",
               "speedup", "paired_q1", "paired_q3", "foreign_cpu", "error"]


def _write_csv(path: str, cond: dict, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["date"] + _CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({"date": cond["date"], **r})


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmaccel-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="speedup = peer median / ours median (> 1: llmaccel is faster); "
                                       "'paired q1-q3' is the spread of the per-round ratios; 'other procs' is "
                                       "the share of all CPUs that other processes used while a case was timed.")
    p.add_argument("--op", action="append", metavar="OP", help="only this op (repeatable); default: all")
    p.add_argument("--case", action="append", metavar="NAME", help="only this case name (repeatable)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="device of the cases (default: cpu)")
    p.add_argument("--quick", action="store_true", help="few repetitions: a smoke run for CI (numbers are rough)")
    p.add_argument("--min-time", type=float, metavar="S",
                   help=f"seconds of timed calls per case, both sides together (default {FULL['min_time_s']:g}, "
                        f"--quick {QUICK['min_time_s']:g})")
    p.add_argument("--json", metavar="PATH", help="write conditions and results as JSON")
    p.add_argument("--csv", metavar="PATH", help="write results as CSV")
    p.add_argument("--list", action="store_true", help="list the selected cases and exit")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("llmaccel-bench: --device cuda, but torch sees no CUDA GPU here "
              f"(torch {torch.__version__}); the CUDA cases exist only where one does.", file=sys.stderr)
        return 2
    try:
        selected = _cases.select(ops=args.op, devices=[args.device], names=args.case)
    except ValueError as exc:
        print(f"llmaccel-bench: {exc}", file=sys.stderr)
        return 2
    if not selected:
        print("llmaccel-bench: no case matches the filters; --list shows them", file=sys.stderr)
        return 2
    if args.list:
        for c in selected:
            print(f"{c.op:10s} {c.name:12s} {c.device:5s} {c.shape:22s} vs {c.peer}: {c.description}")
        return 0

    timing = dict(QUICK if args.quick else FULL)
    if args.min_time is not None:
        timing["min_time_s"] = args.min_time
    cond = conditions(args.device)
    print(format_header(cond, timing), flush=True)

    rows: list[dict] = []
    start = time.perf_counter()
    for k, case in enumerate(selected, 1):
        prefix = f"[{k}/{len(selected)}] {case.op} {case.name}"
        print(f"{prefix} ({case.shape}, {case.device}) ...", file=sys.stderr, flush=True)
        row = run_case(case, timing, log=lambda msg, p=prefix: print(f"{p}: {msg}", file=sys.stderr, flush=True))
        rows.append(row)
        if row["status"] == "ok":
            fc = row.get("foreign_cpu")
            print(f"{prefix}: ours {row['ours_ms']:.3f} ms, peer {row['peer_ms']:.3f} ms, "
                  f"speedup {row['speedup']:.2f}x ({row['reps']} calls each"
                  + (f"; other processes used {fc:.0%} of the CPU)" if fc is not None else ")"),
                  file=sys.stderr, flush=True)
        else:
            bar = "!" * 78
            print(f"{bar}\n{prefix}: {row['status']}: {row['error']}\n{bar}", file=sys.stderr, flush=True)
    print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)

    if args.json:
        _write_json(args.json, cond, timing, rows)
    if args.csv:
        _write_csv(args.csv, cond, rows)
    print()
    print(format_table(rows))
    busy = [r for r in rows if (r.get("foreign_cpu") or 0.0) > FOREIGN_CPU_WARN]
    if busy:
        print("\nwarning: other processes used the CPU while these cases were timed (share of all CPUs): "
              + ", ".join(f"{r['case']} {r['foreign_cpu']:.0%}" for r in busy)
              + ". Interleaving shares the noise between ours and the peer, but contention can change the ratio "
                "too (OpenMP kernels suffer unevenly when cores are oversubscribed): rerun on a quiet machine.")
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        print(f"\n{len(failed)} case(s) failed: " + ", ".join(f"{r['op']} {r['case']} ({r['status']})" for r in failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
