"""``llmaccel-bench`` / ``python -m llmaccel.bench``: llmaccel against its PyTorch peers.

For every selected case (see :mod:`llmaccel.bench.cases`) it

1. builds the inputs (several rotating input sets where the cache matters),
2. checks once that llmaccel and the peer give the same result on every input
   set (``torch.equal`` for exact ops) and aborts the case loudly otherwise,
3. times the two interleaved (:func:`llmaccel.bench.timing.compare`),

then prints the conditions header, and last a table whose ``speedup`` is the
median of the per-round ratios ``peer time / ours time`` (above 1: llmaccel is
faster), with the quartiles of the same ratios beside it.

Before the cases, and again around each case, it measures this machine's
fp32 GEMM rate and memory read rate (a fraction of a second).  A side whose best call does its arithmetic at below
5 % of the fp32 GEMM rate (in a memory-bound case: and streams below 10 % of
the read rate) is running a reference (unvectorized) path, not a tuned
kernel: the table says ``peer-ref`` instead of a speedup for such a peer, and
a note under it gives the ratio and the rates (torch._int_mm on CPUs without
AVX-512 VNNI is the known case).

Examples::

    python -m llmaccel.bench                      # every CPU case, >= 2 s of timing each (<= 20 s when slow)
    python -m llmaccel.bench --quick              # smoke run: >= 0.25 s of timing a case (<= 2 s when slow)
    python -m llmaccel.bench --op int8_mm --case decode --min-time 10
    python -m llmaccel.bench --wide               # every column: shapes, full peer names, ratio of medians ...
    python -m llmaccel.bench --device cuda --json out.json --csv out.csv
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import re
import sys
import textwrap
import time
from typing import Any, Optional, Sequence

import torch

from . import cases as _cases
from .report import _RATE_KEYS, TABLE_WIDTH, _cell, _wrap, _write_csv, _write_json, format_table
from .timing import ForeignCpu, compare

__all__ = ["main", "conditions", "run_case", "format_table", "fill_rates", "backend_label", "machine_rates",
           "flag_reference_paths", "TABLE_WIDTH", "REFERENCE_SHARE"]

FOREIGN_CPU_WARN = 0.05  # warn when other processes used more than 5 % of the CPUs during a case
REFERENCE_SHARE = 0.05   # a side below 5 % of the machine's fp32 GEMM (or read) rate runs a reference path
# warmup: the verification just before already called both sides on every input set.
# case_budget_s: when one round (ours + peer) is slow (a reference-path peer), fewer rounds than min_reps.
# verify_budget_s (--quick only): stop verifying after the input set during which this many seconds passed.
QUICK = dict(min_time_s=0.25, max_reps=40, min_reps=3, warmup=0, case_budget_s=2.0, verify_budget_s=1.0)
FULL = dict(min_time_s=2.0, max_reps=2000, min_reps=10, warmup=3, case_budget_s=20.0, verify_budget_s=None)


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


def _best_time(fn, sync, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def machine_rates(device: str = "cpu") -> dict[str, float]:
    """This machine's fp32 GEMM rate (GFLOP/s, 1024^3 ``torch.mm``) and read rate (GB/s, ``sum`` of 128 MiB).

    Best of a few calls each, under a second in all: the yardsticks for
    :func:`flag_reference_paths`, not benchmarks.
    """
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    n = 1024
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    torch.mm(a, b)
    gemm = _best_time(lambda: torch.mm(a, b), sync, 5)
    buf = torch.ones(32 * 2 ** 20, device=dev)  # 128 MiB of fp32: beyond any last-level cache here
    buf.sum()
    read = _best_time(buf.sum, sync, 3)
    return {"fp32_gemm_gflops": 2.0 * n ** 3 / gemm / 1e9, "read_gbps": buf.numel() * 4 / read / 1e9}


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
        **machine_rates(device),
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
        f"  machine: fp32 GEMM {cond['fp32_gemm_gflops']:.0f} GFLOP/s, memory read {cond['read_gbps']:.1f} GB/s "
        f"(quick probes, repeated around each case; a side below {REFERENCE_SHARE:.0%} of the GEMM rate runs a "
        "reference path)",
        f"  timing: ours and peer interleaved call by call, rotating input sets, median of >= "
        f"{timing['min_reps']} calls each (fewer when a round takes over {timing['case_budget_s']:g} s / "
        f"{timing['min_reps']}), >= {timing['min_time_s']:g} s per case (max {timing['max_reps']} calls), "
        f"{timing['warmup']} warm-up round(s) after the verification calls"
        + (f"; verification stops after the input set that passes {timing['verify_budget_s']:g} s"
           if timing.get("verify_budget_s") else ""),
    ]
    out = []
    for line in lines:  # at most TABLE_WIDTH wide, like the table
        pad = " " * (len(line) - len(line.lstrip()))
        out += textwrap.wrap(line.lstrip(), TABLE_WIDTH, initial_indent=pad, subsequent_indent=pad + "  ")
    return "\n".join(out)


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------

# Ops whose C++ path runs another op's kernels (int8_linear's W8A8 core is int8_mm's packed kernel).
_VARIANT_OF = {"int8_linear": "int8_mm"}


def backend_label(case: _cases.Case, bench: _cases.Bench) -> str:
    """The backend column: "cpp/<ISA variant>" (cpp/avx2, cpp/avx512vnni ...), "triton" or "torch", for every op."""
    import llmaccel

    backend = case.backend(bench)
    if backend == "cpp":
        variants = llmaccel.cpu_info().get("variants", {})
        variant = variants.get(case.op) or variants.get(_VARIANT_OF.get(case.op, ""))
        if variant:
            return f"cpp/{variant}"
    return backend


def run_case(case: _cases.Case, timing: dict[str, Any], log=None,
             rates: Optional[dict[str, float]] = None) -> dict[str, Any]:
    """Set up, verify and time one case; a dict row for the table/JSON/CSV (``status`` != "ok" on failure).

    ``rates`` (:func:`machine_rates` of the run, or {}) enables the reference-path flags
    (:func:`flag_reference_paths`) against the yardsticks probed again just before and after this case's
    timing (the better of the two): a busy machine slows the probe and the case alike.
    """
    log = log or (lambda msg: None)
    row: dict[str, Any] = dict(op=case.op, case=case.name, shape=case.shape, device=case.device, peer=case.peer,
                               peer_description=case.peer_description, description=case.description)
    cuda = case.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    timing = dict(timing)
    budget = timing.pop("case_budget_s", None)
    verify_budget = timing.pop("verify_budget_s", None)
    bench = None
    try:
        t0 = time.perf_counter()
        bench = case.setup()
        work = bench.work
        row["backend"] = backend_label(case, bench)
        log(f"inputs ready ({time.perf_counter() - t0:.1f} s, {bench.n_sets} set(s)); backend {row['backend']}; "
            "verifying ...")
        t0 = time.perf_counter()
        checked = bench.verify(sync=sync, budget_s=verify_budget)
        round_s = (time.perf_counter() - t0) / checked  # one call of each side: the cost of a round
        if checked < bench.n_sets:
            log(f"verified {checked} of {bench.n_sets} input sets (--quick: a round takes {round_s:.1f} s)")
        if budget is not None and round_s * (timing["min_reps"] + timing["warmup"]) > budget:
            # A slow side (a reference-path peer takes seconds per call): fewer rounds, at least one.
            timing["min_reps"] = max(1, min(timing["min_reps"], int(budget / round_s)))
            timing["warmup"] = 0
        log(f"results verified ({round_s:.2f} s per round); timing >= {timing['min_reps']} round(s) ...")
        if rates is not None:  # the yardsticks again, under this case's conditions (the load may have changed)
            local = machine_rates(case.device)
        with ForeignCpu() as foreign:
            cmp = compare(bench.ours, bench.peer, sync=sync, **timing)
        if rates is not None:
            after = machine_rates(case.device)
            local = {k: max(v, after[k]) for k, v in local.items()}
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

    # speedup: the median of the per-round ratios (peer call / the ours call just before it), so that it always
    # lies inside its own q1-q3; the ratio of the two medians is kept for --wide / JSON / CSV.
    row.update(status="ok", reps=cmp.ours.reps,
               ours_ms=cmp.ours.median * 1e3, ours_min_ms=cmp.ours.min * 1e3, ours_iqr_ms=cmp.ours.iqr * 1e3,
               peer_ms=cmp.peer.median * 1e3, peer_min_ms=cmp.peer.min * 1e3, peer_iqr_ms=cmp.peer.iqr * 1e3,
               speedup=cmp.paired_ratio.median, paired_q1=cmp.paired_ratio.q1, paired_q3=cmp.paired_ratio.q3,
               ratio_of_medians=cmp.ratio, timed_s=cmp.elapsed_s, foreign_cpu=foreign.share)
    fill_rates(row, work)
    if rates is not None:
        row.update(local)
        flag_reference_paths(row, work, local)
    return row




def fill_rates(row: dict[str, Any], work: _cases.Work) -> None:
    """``ours_rate`` / ``peer_rate`` (text) and ``ours_gops`` / ``ours_gflops`` / ``ours_gbps`` ... (numbers):
    the case's one meaningful throughput (GB/s when memory-bound, GOP/s or GFLOP/s when compute-bound)."""
    if row.get("status") != "ok":
        return
    row["unit"] = work.unit
    for side in ("ours", "peer"):
        rates = work.rates(row[f"{side}_ms"] / 1e3)
        row[f"{side}_rate"] = work.format(row[f"{side}_ms"] / 1e3)
        for unit, v in rates.items():
            row[f"{side}_{_RATE_KEYS[unit]}"] = v  # ours_gops, ours_gbps, ...


def flag_reference_paths(row: dict[str, Any], work: _cases.Work, rates: dict[str, float]) -> None:
    """Set ``peer_reference_path``: the peer runs a reference (unvectorized) path, not a tuned kernel;
    ``reference_note`` says why.  Only the peer is judged: on a heavily shared machine (``other procs``
    far above a few percent) llmaccel's 2-thread OpenMP kernels can drop below any such threshold, which
    says nothing about the kernel; the peer's reference path is what the flag exists for.

    A side is flagged when its best call does its arithmetic at less than :data:`REFERENCE_SHARE` (5 %) of
    the machine's fp32 GEMM rate.  A memory-bound case also needs its bytes to stream at less than twice that
    share (10 %) of the machine's read rate: a tuned GEMV is slow in FLOP terms by nature (fp32 ``F.linear``
    decode does ~6 % of the GEMM rate in int8-weight terms) but streams at a good part of the read rate.
    """
    if row.get("status") != "ok":
        return
    gemm, read = rates.get("fp32_gemm_gflops"), rates.get("read_gbps")
    notes = []
    for side in ("peer",):
        seconds = row[f"{side}_min_ms"] / 1e3
        ops_rate = work.ops / seconds / 1e9 if work.ops is not None and seconds > 0 else None
        byte_rate = work.bytes / seconds / 1e9 if work.bytes is not None and seconds > 0 else None
        why = []
        flagged = bool(gemm and ops_rate is not None and ops_rate < REFERENCE_SHARE * gemm)
        if flagged:
            why.append(f"{ops_rate:.3g} {work.ops_unit} (best call) = {ops_rate / gemm:.1%} of this machine's fp32 "
                       f"GEMM rate ({gemm:.3g} GFLOP/s)")
        if work.memory_bound:
            slow_bytes = bool(read and byte_rate is not None and byte_rate < 2 * REFERENCE_SHARE * read)
            flagged = (flagged or ops_rate is None) and slow_bytes
            if flagged:
                why.append(f"{byte_rate:.3g} GB/s = {byte_rate / read:.1%} of its read rate ({read:.3g} GB/s)")
        row[f"{side}_reference_path"] = flagged
        if flagged:
            notes.append(f"{'llmaccel' if side == 'ours' else row['peer']} ran at " + ", ".join(why))
    if notes:
        row["reference_note"] = (f"{row['op']} {row['case']}: " + "; ".join(notes) + ": a reference path, not a "
                                 f"tuned kernel, so the time ratio {row['speedup']:.2f}x is no like-for-like "
                                 "speedup.")


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------

def _plain(text: str) -> str:
    """reST markup out of docstring text for --help: ``x`` -> x, :mod:`x` -> x, "Examples::" -> "Examples:"."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
    return text.replace("``", "").replace("::\n", ":\n")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmaccel-bench", description=_plain(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=textwrap.fill(
                                    "Table: speedup = median of the per-round ratios peer time / ours time (> 1: "
                                    "llmaccel is faster), q1-q3 = their quartiles; throughput is GB/s for "
                                    "memory-bound cases, GOP/s (integer) or GFLOP/s (float) for compute-bound "
                                    "ones. --wide adds the shape, full peer names, the ratio of the two medians, "
                                    "calls timed and 'other procs' (share of all CPUs other processes used "
                                    "while a case was timed).", width=79))
    p.add_argument("--op", action="append", metavar="OP", help="only this op (repeatable); default: all")
    p.add_argument("--case", action="append", metavar="NAME", help="only this case name (repeatable)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="device of the cases (default: cpu)")
    p.add_argument("--quick", action="store_true",
                   help="few repetitions, one verification set when a round is slow: a smoke run (numbers are "
                        "rough); building the inputs (int8_linear's 8-layer fp32 stacks) takes most of its time")
    p.add_argument("--min-time", type=float, metavar="S",
                   help=f"seconds of timed calls per case, both sides together (default {FULL['min_time_s']:g}, "
                        f"--quick {QUICK['min_time_s']:g})")
    p.add_argument("--wide", action="store_true",
                   help=f"print every column (default: a table at most {TABLE_WIDTH} characters wide)")
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
    rates = {k: cond[k] for k in ("fp32_gemm_gflops", "read_gbps")}
    for k, case in enumerate(selected, 1):
        prefix = f"[{k}/{len(selected)} {time.perf_counter() - start:4.0f} s] {case.op} {case.name}"
        print(f"{prefix} ({case.shape}, {case.device}) ...", file=sys.stderr, flush=True)
        row = run_case(case, timing, log=lambda msg, p=prefix: print(f"{p}: {msg}", file=sys.stderr, flush=True),
                       rates=rates)
        rows.append(row)
        if row["status"] == "ok":
            fc = row.get("foreign_cpu")
            print(f"{prefix}: ours {row['ours_ms']:.3f} ms, peer {row['peer_ms']:.3f} ms, "
                  f"speedup {_cell(row, 'speedup')} ({row['reps']} calls each"
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
    print(format_table(rows, wide=args.wide))
    print()
    print("\n".join(_wrap("speedup: median of the per-round ratios peer / ours (> 1: llmaccel faster), q1-q3 their "
                          f"quartiles; {'' if args.wide else '--wide for every column; '}JSON/CSV: --json / --csv.",
                          TABLE_WIDTH)))
    busy = [r for r in rows if (r.get("foreign_cpu") or 0.0) > FOREIGN_CPU_WARN]
    if busy:
        print()
        print("\n".join(_wrap(
            "warning: other processes used the CPU while these cases were timed (share of all CPUs): "
            + ", ".join(f"{r['case']} {r['foreign_cpu']:.0%}" for r in busy)
            + ". Interleaving shares the noise between ours and the peer, but contention can change the ratio "
              "too (OpenMP kernels suffer unevenly when cores are oversubscribed): rerun on a quiet machine.",
            TABLE_WIDTH)))
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        print(f"\n{len(failed)} case(s) failed: " + ", ".join(f"{r['op']} {r['case']} ({r['status']})" for r in failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
