"""Which C++ route the ``sparse_linear`` op's cpp backend takes for a call, from measured crossovers.

A sparse kernel only pays where it beats the dense GEMM on the same pruned weight (what a user has without
llmaccel): at decode shapes the N:M / bitmap kernels stream half (or a tenth) of the bytes and win; past a
few dozen rows of x the dense sgemm's register blocking wins over a kernel that re-reads the compressed
weight per tile of rows.  So the route for ``layout``, M rows of x and the weight's density is:

==========  ==================================================================  =====================
route       what runs                                                           when
==========  ==================================================================  =====================
``nm``      csrc/sparse_nm*.cpp: streams values + index bits, <= 4 rows a tile  N:M, M <= crossover
``bitmap``  csrc/sparse_bitmap*.cpp: streams bitmap + values, <= 4 rows a tile  bitmap, M <= crossover
``expand``  csrc/sparse_expand.cpp expands the weight to dense fp32 once per      past the crossover
            call (memory-bound, ~1-4 % of an M=512 GEMM), then ``F.linear``     (no kernel wins)
            (MKL sgemm)
==========  ==================================================================  =====================

The crossover M is measured, not guessed: ``bench/sparse_crossover.py`` times each sparse kernel against
dense fp32 ``F.linear`` over M (4 rotating 4096 x 4096 layers, beyond the last-level cache, 2 threads) and
the largest M at which the kernel still won goes in :data:`CROSSOVER_M`, per route and CPU variant, with the
CPU it was measured on.  A variant with no measurement of its own uses the avx2 row (documented guess:
AVX-512 streams the same bytes and its dense GEMM is faster too).  The density dependence is the kernel's
work: a kernel that does ``density`` of the dense FLOPs crosses over at M proportional to ``1 / density``
(measured at the density in the table, scaled for others).  The bitmap kernel is the exception: it does
the same work per bitmap byte (8 lanes) at any density, so only its bytes shrink with the density and its
crossover is taken as measured for sparser weights (scaled down only for denser ones): ``bitmap_route``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .._ext import ext


@dataclass(frozen=True)
class Crossover:
    """Largest M (rows of x) at which ``route`` beat dense fp32 ``F.linear``, measured at ``density``."""

    max_m: int
    density: float
    measured_on: str

    def limit(self, density: float) -> int:
        """The crossover for another density (work ~ density, so the crossover M ~ 1 / density)."""
        return max(0, int(self.max_m * self.density / max(density, 1e-6)))


# (route, CPU variant) -> crossover.  See the module docstring and bench/RESULTS.md.
CROSSOVER_M: dict[tuple[str, str], Crossover] = {
    # 2:4 fp32, 4096 x 4096: 1.78 / 3.48 / 5.39 / 2.16 / 1.27x dense at M = 1 / 2 / 4 / 8 / 16, 0.97x at 32.
    ("nm", "avx2"): Crossover(16, 0.5, "AMD EPYC (Zen 3 class, AVX2), 2 threads, 2026-11-30"),
    # bitmap fp32, 4096 x 4096, bench/sparse_crossover.py --routes bitmap90 bitmap50 on the shared 2-core VM
    # under heavy contention (load ~7): 90 %: 0.98 / 3.4 / 5.4 / 3.9 / 3.0 / 1.7x dense at M = 1 / 2 / 4 / 8 /
    # 16 / 32; 50 %: 1.03 / 3.7 / 4.7 / 4.0 / 2.2 / 1.8x.  The dense peer's M >= 2 times were anomalous there
    # (4x its M = 1 time), so the crossover is taken at 16, not 32, until a quiet machine re-measures it.
    ("bitmap", "avx2"): Crossover(16, 0.5, "AMD EPYC (Zen 3 class, AVX2), 2 threads, contended, 2026-11-30"),
}


def _variant(family: str) -> str:
    try:
        return ext().variant_choice()[family]["variant"]
    except Exception:  # an extension without this family: treated like avx2 (the caller checks the binding)
        return "avx2"


def crossover(route: str, family: str) -> tuple[Optional[Crossover], str]:
    """The crossover for ``route`` on the variant ``family`` runs now, and that variant's name."""
    variant = _variant(family)
    found = CROSSOVER_M.get((route, variant)) or CROSSOVER_M.get((route, "avx2"))
    return found, variant


@dataclass(frozen=True)
class Route:
    name: str  # "nm" | "bitmap" | "expand"
    why: str


def nm_route(rows: int, n: int, m: int) -> Route:
    """Route for an N:M weight and ``rows`` rows of x (module docstring)."""
    density = n / m
    found, variant = crossover("nm", "sparse_nm")
    limit = found.limit(density) if found else 0
    if rows <= limit:
        return Route("nm", f"M={rows} <= {limit}, the measured crossover of the N:M kernel ({variant}) against "
                           f"dense sgemm at density {density:.2f}: the sparse kernel wins")
    return Route("expand", f"M={rows} > {limit}, the measured crossover of the N:M kernel ({variant}) against dense "
                           f"sgemm at density {density:.2f}: expand the weight once in C++, then dense sgemm")


def bitmap_route(rows: int, density: float) -> Route:
    """Route for a bitmap weight keeping ``density`` of its entries and ``rows`` rows of x (module docstring)."""
    found, variant = crossover("bitmap", "sparse_bitmap")
    limit = 0 if not found else found.max_m if density <= found.density else found.limit(density)
    how = f"the measured crossover of the bitmap kernel ({variant}) against dense sgemm at density {density:.2f}"
    if rows <= limit:
        return Route("bitmap", f"M={rows} <= {limit}, {how}: the sparse kernel wins")
    return Route("expand", f"M={rows} > {limit}, {how}: expand the weight once in C++, then dense sgemm")
