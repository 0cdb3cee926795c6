"""Honest wall-clock comparison of two callables: ours against a peer.

Why interleave
--------------
A shared, noisy machine drifts: other processes come and go, clocks boost and
throttle, the OS migrates threads.  Timing "all of ours, then all of the
peer" lets such drift land on one side only and shows up as a fake speedup
(or slowdown).  :func:`compare` therefore alternates the calls -- ours, peer,
ours, peer, ... -- so that whatever the machine does, it does to both alike,
and reports medians (robust to the odd preempted call), the minimum, the
inter-quartile range, and the median of the *paired* ratios (each peer call
divided by the ours call just before it), which cancels slow drift even
better than the ratio of the two medians.

Why rotate inputs
-----------------
Calling a kernel again and again on the same weight lets that weight live in
the last-level cache (a 4096 x 4096 int8 matrix is 16 MB; this machine's L3
is 32 MB), so a memory-bound case such as single-token decode is measured at
cache speed, which no real model sees: a model streams every layer's weights
from memory once per token.  Each call therefore gets an index ``i`` and a
case keeps several input sets whose total exceeds the cache, picking one
with ``weights[i % len(weights)]``.

The index is the position of the call in the interleaved sequence and is
shared by the two sides: during timing ours gets the even indices and the
peer the odd ones.  So two consecutive calls never touch the same input set,
and neither side finds in the cache the weight the other just loaded.  (With
8 sets and strict alternation, each set is touched every 8th call, after 7
other sets -- 112 MB for 16 MB sets -- went through the cache.)

GPU work is asynchronous: pass ``sync=torch.cuda.synchronize`` so each timed
call ends when the device is done, not when the launch returns.  Host timing
then includes launch overhead (microseconds), which matters only for tiny
kernels; ``bench/gpu_check.py`` uses CUDA events via
``triton.testing.do_bench`` for those.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import resource
import statistics
import time
from typing import Any, Callable, Optional

__all__ = ["Stats", "Comparison", "compare", "summarize", "ForeignCpu"]


def _noop() -> None:
    return None


@dataclasses.dataclass
class Stats:
    """Summary of one side's per-call times, in seconds."""

    median: float
    min: float
    q1: float
    q3: float
    mean: float
    reps: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def rel_iqr(self) -> float:
        """IQR as a fraction of the median: a quick noise gauge (0.02 = 2 %)."""
        return self.iqr / self.median if self.median > 0 else float("nan")

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["iqr"] = self.iqr
        return d


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def summarize(times: list[float]) -> Stats:
    """Median, min, quartiles and mean of a list of per-call times (seconds)."""
    if not times:
        raise ValueError("no times to summarize")
    q1, med, q3 = _quartiles(times)
    return Stats(median=med, min=min(times), q1=q1, q3=q3, mean=statistics.fmean(times), reps=len(times))


@dataclasses.dataclass
class Comparison:
    """Result of :func:`compare`.  ``ratio > 1`` means ours is faster than the peer."""

    ours: Stats
    peer: Stats
    ratio: float                 # peer.median / ours.median
    paired_ratio: Stats          # per-round peer_time / ours_time (median, quartiles...)
    ours_times: list[float] = dataclasses.field(repr=False)
    peer_times: list[float] = dataclasses.field(repr=False)
    elapsed_s: float = 0.0

    def as_dict(self, with_times: bool = False) -> dict:
        d = {
            "ours": self.ours.as_dict(),
            "peer": self.peer.as_dict(),
            "ratio": self.ratio,
            "paired_ratio": self.paired_ratio.as_dict(),
            "elapsed_s": self.elapsed_s,
        }
        if with_times:
            d["ours_times"] = list(self.ours_times)
            d["peer_times"] = list(self.peer_times)
        return d


def compare(
    ours: Callable[[int], Any],
    peer: Callable[[int], Any],
    *,
    min_time_s: float = 1.0,
    max_reps: int = 1000,
    min_reps: int = 5,
    warmup: int = 2,
    max_time_s: Optional[float] = None,
    sync: Callable[[], Any] = _noop,
) -> Comparison:
    """Time ``ours(i)`` against ``peer(i)``, interleaved, and summarize both.

    Args:
        ours, peer: callables taking the call index ``i`` (see the module
            docstring: use it to rotate through input sets).  Their return
            values are dropped (kept alive only until the next call).
        min_time_s: keep going until the timed calls of both sides together
            took at least this long (and ``min_reps`` rounds were done).
        max_reps: stop after this many calls per side, whatever the time.
        min_reps: at least this many calls per side.
        warmup: untimed rounds (ours, peer) first: page faults, lazy
            initialisation, autotuning, thread pool start-up.
        max_time_s: optional hard cap on the wall time of the timed loop
            (checked after each round; ``min_reps`` still wins).
        sync: called before starting and before stopping each clock
            (``torch.cuda.synchronize`` for CUDA work).

    Returns:
        :class:`Comparison` with per-side :class:`Stats` (seconds per call),
        ``ratio = peer.median / ours.median`` and the paired per-round ratios.
    """
    if max_reps < 1 or min_reps < 1:
        raise ValueError("max_reps and min_reps must be >= 1")
    min_reps = min(min_reps, max_reps)
    clock = time.perf_counter
    i = 0
    for _ in range(warmup):
        ours(i)
        peer(i + 1)
        i += 2
    sync()

    ours_t: list[float] = []
    peer_t: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # a collection in the middle of a call would charge that call
    held: list[Any] = [None]
    loop_start = clock()
    busy = 0.0
    try:
        while True:
            for fn, sink in ((ours, ours_t), (peer, peer_t)):
                sync()
                t0 = clock()
                held[0] = fn(i)
                sync()
                dt = clock() - t0
                held[0] = None  # free the result outside the timed region
                sink.append(dt)
                busy += dt
                i += 1
            n = len(ours_t)
            if n >= max_reps:
                break
            if n >= min_reps:
                if busy >= min_time_s:
                    break
                if max_time_s is not None and clock() - loop_start >= max_time_s:
                    break
    finally:
        if gc_was_enabled:
            gc.enable()
    elapsed = clock() - loop_start

    o, p = summarize(ours_t), summarize(peer_t)
    paired = summarize([pt / ot for ot, pt in zip(ours_t, peer_t) if ot > 0] or [float("nan")])
    return Comparison(ours=o, peer=p, ratio=p.median / o.median if o.median > 0 else float("nan"),
                      paired_ratio=paired, ours_times=ours_t, peer_times=peer_t, elapsed_s=elapsed)


class ForeignCpu:
    """How much CPU *other* processes used while we measured: the noise the interleaving has to absorb.

    ``with ForeignCpu() as fc: ...`` then ``fc.share``: CPU time spent outside
    this process (busy time from ``/proc/stat``, steal included, minus this
    process's own user + system time) as a fraction of all CPUs over the wall
    time; 0.0 on a quiet machine, 0.5 when another process kept half the cores
    busy.  ``None`` where ``/proc/stat`` is unavailable (not Linux).
    """

    def __init__(self) -> None:
        self.share: Optional[float] = None

    @staticmethod
    def _busy_s() -> Optional[float]:
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()
        except OSError:
            return None
        if not fields or fields[0] != "cpu":
            return None
        v = [int(x) for x in fields[1:]]
        # user nice system idle iowait irq softirq steal (guest time is already inside user)
        busy = v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)
        return busy / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _self_s() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def __enter__(self) -> "ForeignCpu":
        self._b0, self._s0, self._t0 = self._busy_s(), self._self_s(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        b1, s1, wall = self._busy_s(), self._self_s(), time.perf_counter() - self._t0
        if self._b0 is None or b1 is None or wall <= 0:
            return
        other = (b1 - self._b0) - (s1 - self._s0)
        self.share = max(0.0, other / (wall * (os.cpu_count() or 1)))


def shuffled_rounds(fns: dict, rounds: int, warmup: int = 1) -> dict:
    """``{name: [seconds per round]}``: every function of ``fns`` once per round, in a fresh random order each
    round (machine drift hits all of them alike), after ``warmup`` untimed rounds.  For the ceiling scripts in
    ``bench/`` that compare a kernel with a plain read of its bytes and with its peer."""
    import random

    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict = {k: [] for k in fns}
    for _ in range(rounds):
        order = list(fns)
        random.shuffle(order)
        for k in order:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return times
