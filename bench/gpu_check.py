#!/usr/bin/env python
"""One-shot check for a CUDA machine: GPU tests, then GPU benchmarks against PyTorch.

    python bench/gpu_check.py [--out bench/out/gpu.md] [--budget 450]

1. ``pytest tests -m "cuda or triton" -x -q`` in a subprocess, without
   ``TRITON_INTERPRET`` (so the Triton kernels compile for the GPU);
2. every CUDA case of :mod:`llmaccel.bench.cases` (the same registry as
   ``python -m llmaccel.bench``): set up, verify llmaccel against the peer on
   every input set (``torch.equal`` for int8_mm; for int8_linear and attention
   the case's accuracy check against a float64 reference, see below; this
   first call also runs Triton's autotuning), then time both with
   ``triton.testing.do_bench`` (CUDA events, L2 flushed before every call) in
   3 interleaved rounds (ours, peer, ours, peer, ...), keeping the median of
   each side's per-round medians;
3. a markdown block (date, GPU, torch/Triton/CUDA versions, test result,
   table, and whether each goal below was met) on stdout and in ``--out``, to
   paste into ``bench/RESULTS.md``;
4. a plain summary table and the goals, printed last.

Goals measured (:data:`GOALS`; speedup = peer time / llmaccel time, all bf16,
Triton backend).  Their cases run first, in this order, so that a tight
budget cuts the least important ones:

* ``int8_linear`` W8A8 (``act="dynamic"``) vs bf16 ``F.linear``, K = N = 8192,
  M = 4096 (first) and M = 2048: >= 1.6x
  (llmaccel/bench/cases_int8_linear_cuda.py; checked: SQNR >= 25 dB against
  the float64 product with the unquantized weights, every row >= 15 dB);
* ``attention`` prefill vs ``F.scaled_dot_product_attention`` (PyTorch picks
  flash / cuDNN / mem-efficient): B=1 H=32 L=2048 D=128 causal (second) and
  non-causal, B=1 H=16 L=4096 D=64 causal: >= 0.9x;
* ``attention`` decode, Lq=1, 32 query / 8 KV heads (GQA), D=128, Lk=8192,
  8 layers' caches rotating, vs SDPA with ``enable_gqa=True`` (third): > 1x
  (llmaccel/bench/cases_attention_cuda.py; checked with FlashAttention's rule:
  max error <= 2 x SDPA's + 2^-8 of the output scale, against float64);
* ``int8_linear`` weight-only decode (``act="weight_only"``), M = 1 (fourth) and
  M = 16, 8192 x 8192 layers, 8 rotating (512 MiB int8, 1 GiB bf16: beyond
  L2), vs bf16 ``F.linear``: > 1x.

Then the int8_mm cases (vs ``torch._int_mm``), in registration order.

Everything stays inside a time budget (default 450 s, under 8 minutes with
start-up): the tests get at most ``--test-timeout`` seconds, and benchmark
cases that would start past the budget are skipped and listed as such; a case
still running when the budget ends is interrupted.

Exit status: 0 when the tests passed (or none were collected) and every case
ran and matched; 1 otherwise (a goal not met is reported, not an error); 0
with a "no CUDA GPU" message where torch sees no GPU (nothing to check there).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parent.parent
ROUNDS = 3
CASE_RESERVE_S = 25.0  # don't start a case with less than this left: set-up plus autotuning


@dataclasses.dataclass(frozen=True)
class Goal:
    """A goal of the issue for one case: speedup (peer / ours) >= ``min_speedup`` (> when ``strict``)."""

    key: str            # Case.key: "op/name/device"
    min_speedup: float
    strict: bool
    text: str

    def met(self, speedup: float) -> bool:
        return speedup > self.min_speedup if self.strict else speedup >= self.min_speedup

    @property
    def target(self) -> str:
        return f"{'>' if self.strict else '>='} {self.min_speedup:g}x"


# The GPU goals, in the order their cases run (most important first); the other CUDA cases follow in
# registration order.  Case definitions: llmaccel/bench/cases_int8_linear_cuda.py, cases_attention_cuda.py.
GOALS: tuple[Goal, ...] = (
    Goal("int8_linear/w8a8-m4096/cuda", 1.6, False, "W8A8 int8_linear vs bf16 F.linear, M=4096 K=N=8192"),
    Goal("attention/prefill-1x32x2048x128-causal/cuda", 0.9, False,
         "attention prefill vs SDPA, B=1 H=32 L=2048 D=128 causal"),
    Goal("attention/decode-gqa-lk8192/cuda", 1.0, True, "attention GQA decode vs SDPA, 32/8 heads, Lk=8192, D=128"),
    Goal("int8_linear/wo-decode-m1/cuda", 1.0, True, "weight-only int8_linear decode vs bf16 F.linear, M=1"),
    Goal("int8_linear/w8a8-m2048/cuda", 1.6, False, "W8A8 int8_linear vs bf16 F.linear, M=2048 K=N=8192"),
    Goal("attention/prefill-1x32x2048x128/cuda", 0.9, False, "attention prefill vs SDPA, B=1 H=32 L=2048 D=128"),
    Goal("attention/prefill-1x16x4096x64-causal/cuda", 0.9, False,
         "attention prefill vs SDPA, B=1 H=16 L=4096 D=64 causal"),
    Goal("int8_linear/wo-decode-m16/cuda", 1.0, True, "weight-only int8_linear decode vs bf16 F.linear, M=16"),
)


def order_cases(cases: list) -> list:
    """The goal cases first, in :data:`GOALS` order, then the others in their given (registration) order."""
    rank = {g.key: n for n, g in enumerate(GOALS)}
    return [c for _, c in sorted(enumerate(cases), key=lambda t: (rank.get(t[1].key, len(GOALS)), t[0]))]


def goal_report(rows: list[dict], selected_keys: set[str]) -> list[tuple[Goal, str, str]]:
    """(goal, measured, verdict) for every goal whose case was selected."""
    by_key = {f"{r['op']}/{r['case']}/{r['device']}": r for r in rows}
    out = []
    for g in GOALS:
        if g.key not in selected_keys:
            continue
        r = by_key.get(g.key)
        if r is None:
            out.append((g, "-", "not run (time budget)"))
        elif r.get("status") != "ok":
            out.append((g, "-", f"not measured ({r.get('status')})"))
        else:
            out.append((g, f"{r['speedup']:.2f}x", "met" if g.met(r["speedup"]) else "NOT met"))
    return out


class BudgetExceeded(Exception):
    pass


def _on_alarm(signum, frame):
    raise BudgetExceeded("time budget exhausted")


# --------------------------------------------------------------------------
# 1. tests
# --------------------------------------------------------------------------

def run_tests(timeout_s: float) -> dict[str, Any]:
    """Run the GPU test subset in a subprocess; {"status", "summary", "rc", "seconds"}."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "pytest", "tests", "-m", "cuda or triton", "-x", "-q", "-p", "no:cacheprovider"]
    print(f"$ {shlex.join(cmd)}    (timeout {timeout_s:.0f} s, TRITON_INTERPRET unset)", flush=True)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout_s)
        out, rc = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or ""
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
        rc = None
    seconds = time.monotonic() - t0
    lines = out.rstrip().splitlines()
    tail = lines[-60:]
    if len(lines) > len(tail):
        print(f"... ({len(lines) - len(tail)} lines above not shown)")
    print("\n".join(tail), flush=True)
    last = lines[-1].strip("= ") if lines else ""
    if rc is None:
        status, summary = "TIMEOUT", f"killed after {timeout_s:.0f} s; last line: {last}"
    elif rc == 0:
        status, summary = "passed", last
    elif rc == 5:
        status, summary = "no tests", "no tests collected for -m \"cuda or triton\""
    else:
        status, summary = "FAILED", f"exit status {rc}: {last}"
    return {"status": status, "summary": summary, "rc": rc, "seconds": seconds}


# --------------------------------------------------------------------------
# 2. benchmarks
# --------------------------------------------------------------------------

def _do_bench_timer(fn: Callable[[], Any]) -> tuple[float, float, float]:
    from triton.testing import do_bench

    q1, med, q3 = do_bench(fn, warmup=25, rep=100, quantiles=[0.25, 0.5, 0.75])
    return q1, med, q3


def bench_case(case, timer: Callable[[Callable[[], Any]], tuple[float, float, float]] = _do_bench_timer,
               sync: Callable[[], Any] = lambda: None, rounds: int = ROUNDS) -> dict[str, Any]:
    """Verify and time one case; a row in llmaccel.bench.cli's format (times in ms)."""
    from llmaccel.bench import cases as _cases
    from llmaccel.bench.cli import backend_label, fill_rates

    row: dict[str, Any] = dict(op=case.op, case=case.name, shape=case.shape, device=case.device, peer=case.peer)
    bench = None
    try:
        t0 = time.monotonic()
        bench = case.setup()
        row["backend"] = backend_label(case, bench)
        bench.verify(sync=sync)  # first llmaccel call: Triton compiles and autotunes here
        print(f"  {case.name}: inputs, verification and autotuning {time.monotonic() - t0:.1f} s; timing ...",
              file=sys.stderr, flush=True)
        ours_r, peer_r = [], []
        counter = itertools.count()  # one index sequence for both sides, as in timing.compare
        for _ in range(rounds):
            for fn, sink in ((bench.ours, ours_r), (bench.peer, peer_r)):
                sink.append(timer(lambda fn=fn: fn(next(counter))))
        work = bench.work
    except _cases.CaseMismatch as exc:
        row.update(status="MISMATCH", error=str(exc))
        return row
    except BudgetExceeded as exc:
        row.update(status="TIMEOUT", error=str(exc))
        return row
    except Exception as exc:
        row.update(status="ERROR", error=f"{exc.__class__.__name__}: {exc}")
        return row
    finally:
        del bench

    ours_ms = statistics.median(r[1] for r in ours_r)
    peer_ms = statistics.median(r[1] for r in peer_r)
    ratios = [p[1] / o[1] for o, p in zip(ours_r, peer_r)]
    q1, med, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else (ratios[0],) * 3
    # speedup: the median of the per-round ratios, so it always lies inside its own q1-q3 (as in llmaccel.bench)
    row.update(status="ok", reps=rounds, ours_ms=ours_ms, peer_ms=peer_ms, speedup=med,
               ratio_of_medians=peer_ms / ours_ms, paired_q1=q1, paired_q3=q3,
               ours_rounds=[list(r) for r in ours_r], peer_rounds=[list(r) for r in peer_r])
    fill_rates(row, work)
    return row


# --------------------------------------------------------------------------
# 3. report
# --------------------------------------------------------------------------

def _versions() -> dict[str, str]:
    import torch

    import llmaccel

    v = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
         "llmaccel": llmaccel.__version__, "python": platform.python_version(), "torch": torch.__version__,
         "cuda": str(torch.version.cuda)}
    try:
        import triton

        v["triton"] = triton.__version__
    except Exception as exc:
        v["triton"] = f"not importable ({exc.__class__.__name__})"
    if torch.cuda.is_available():
        v["gpu"] = torch.cuda.get_device_name()
        v["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    try:
        drv = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if drv.returncode == 0 and drv.stdout.strip():
            v["driver"] = drv.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return v


def markdown(v: dict[str, str], tests: dict[str, Any], rows: list[dict], skipped: list[str],
             goals: Optional[list[tuple[Goal, str, str]]] = None) -> str:
    from llmaccel.bench.cli import format_table

    out = [
        f"### GPU: {v.get('gpu', '?')} (sm {v.get('capability', '?')}), {v['date']}",
        "",
        f"- versions: llmaccel {v['llmaccel']}, torch {v['torch']}, triton {v['triton']}, CUDA {v['cuda']}"
        + (f", driver {v['driver']}" if "driver" in v else "") + f", python {v['python']}",
        f"- tests: `pytest tests -m \"cuda or triton\" -x -q`: **{tests['status']}** ({tests['summary']}; "
        f"{tests['seconds']:.0f} s)",
        f"- timing: `triton.testing.do_bench` (CUDA events, L2 flushed before each call), {ROUNDS} interleaved "
        "rounds of ours then peer; speedup = median of the per-round ratios peer / ours (> 1: llmaccel faster), "
        "q1-q3 their quartiles; ours/peer ms = median of the per-round medians",
        "",
        format_table(rows, markdown=True) if rows else "(no benchmark case ran)",
    ]
    if goals:
        out += ["", "Goals (speedup = peer / llmaccel):", "", "| goal | case | target | measured | verdict |",
                "|---|---|---|---|---|"]
        out += [f"| {g.text} | {g.key} | {g.target} | {m} | {verdict} |" for g, m, verdict in goals]
    if skipped:
        out += ["", f"Skipped (time budget): {', '.join(skipped)}"]
    for r in rows:
        if r.get("status") != "ok":
            out += ["", f"**{r['op']} {r['case']}: {r['status']}**: {r.get('error', '')}"]
    return "\n".join(out)


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description="GPU tests + GPU benchmarks for llmaccel; prints a RESULTS.md block")
    p.add_argument("--out", metavar="PATH", help="also write the markdown block here")
    p.add_argument("--budget", type=float, default=450.0, help="total seconds for tests + benchmarks (default 450)")
    p.add_argument("--test-timeout", type=float, default=270.0, help="seconds for the pytest run (default 270)")
    p.add_argument("--skip-tests", action="store_true", help="benchmarks only")
    p.add_argument("--op", action="append", metavar="OP", help="only this op's cases (repeatable)")
    args = p.parse_args(argv)
    start = time.monotonic()

    # Triton picks the interpreter when kernels are defined, i.e. when llmaccel is imported: unset it first.
    if os.environ.pop("TRITON_INTERPRET", None) is not None:
        print("gpu_check: TRITON_INTERPRET was set; unset it for this run (GPU kernels, not the interpreter)",
              file=sys.stderr)

    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA GPU (torch {torch.__version__}, built for CUDA {torch.version.cuda}; "
              "torch.cuda.is_available() is False): nothing to check on this machine. "
              "Run it where an NVIDIA GPU is present.")
        return 0

    from llmaccel.bench import cases as _cases
    from llmaccel.bench.cli import format_table

    versions = _versions()
    print(f"gpu_check {versions['date']}: {versions.get('gpu')} (sm {versions.get('capability')}), torch "
          f"{versions['torch']}, triton {versions['triton']}, CUDA {versions['cuda']}; budget {args.budget:.0f} s",
          flush=True)

    # 1. tests
    if args.skip_tests:
        tests = {"status": "not run", "summary": "--skip-tests", "rc": None, "seconds": 0.0}
    else:
        left = args.budget - (time.monotonic() - start)
        tests = run_tests(max(10.0, min(args.test_timeout, left - 60.0)))

    # 2. benchmarks
    selected = order_cases(_cases.select(ops=args.op, devices=["cuda"]))
    rows: list[dict] = []
    skipped: list[str] = []
    old = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        for k, case in enumerate(selected, 1):
            left = args.budget - (time.monotonic() - start)
            if left < CASE_RESERVE_S:
                skipped.append(f"{case.op} {case.name}")
                print(f"[{k}/{len(selected)}] {case.op} {case.name}: skipped, {left:.0f} s of budget left",
                      file=sys.stderr, flush=True)
                continue
            print(f"[{k}/{len(selected)}] {case.op} {case.name} ({case.shape}) ...", file=sys.stderr, flush=True)
            signal.alarm(max(1, int(left)))
            try:
                row = bench_case(case, sync=torch.cuda.synchronize)
            finally:
                signal.alarm(0)
            torch.cuda.empty_cache()
            rows.append(row)
            if row["status"] == "ok":
                print(f"[{k}/{len(selected)}] {case.op} {case.name}: ours {row['ours_ms']:.4f} ms, peer "
                      f"{row['peer_ms']:.4f} ms, speedup {row['speedup']:.2f}x", file=sys.stderr, flush=True)
            else:
                print(f"{'!' * 78}\n[{k}/{len(selected)}] {case.op} {case.name}: {row['status']}: {row['error']}\n"
                      f"{'!' * 78}", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGALRM, old)

    # 3. markdown block, then 4. the summary, last
    goals = goal_report(rows, {c.key for c in selected})
    md = markdown(versions, tests, rows, skipped, goals)
    print("\n----- markdown for bench/RESULTS.md -----\n" + md + "\n----- end -----\n")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(md + "\n")
        print(f"(written to {args.out})")

    print(f"\n===== gpu_check summary ({time.monotonic() - start:.0f} s) =====")
    print(f"tests: {tests['status']}: {tests['summary']}")
    print(format_table(rows) if rows else "(no benchmark case ran)")
    if skipped:
        print(f"skipped (time budget): {', '.join(skipped)}")
    for g, m, verdict in goals:
        print(f"goal {g.target} {g.text}: {m} {verdict}")
    bad = tests["status"] in ("FAILED", "TIMEOUT") or any(r["status"] != "ok" for r in rows) or bool(skipped)
    print("RESULT: " + ("PROBLEMS (see above)" if bad else "ok"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
