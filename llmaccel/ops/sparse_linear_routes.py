"""Which C++ route the ``sparse_linear`` op's cpp backend takes for a call, from measured crossovers.

A sparse kernel only pays where it beats the dense GEMM on the same pruned weight (what a user has without
llmaccel): at decode shapes the N:M / bitmap kernels stream half (or a tenth) of the bytes and win; past a
few dozen rows of x the dense sgemm's register blocking wins over a kernel that re-reads the compressed
weight per tile of rows.  So the route for ``layout``, M rows of x and the weight's density is:

==========  ==================================================================  =====================
route       what runs                                                           when
==========  ==================================================================  =====================
``nm``      csrc/sparse_nm*.cpp: streams values + index bits, <= 4 rows a tile  N:M, M <= crossover
``nm_large`` csrc/sparse_nm_large*.cpp: x in transposed panels, the weight    N:M past the ``nm``
            decoded once per call, n/m of dense's FMAs (register-blocked)       crossover, density
                                                                                <= ``NM_LARGE_MAX_DENSITY``
``bitmap``  csrc/sparse_bitmap*.cpp: streams bitmap + values, <= 4 rows a tile  bitmap, M <= crossover
``bitmap_index`` the same kernels on the column-index form (uint16 column per    bitmap, density <=
            value, derived once per weight, ``sparsity.cpu_bitmap_index``):      ``INDEX_MAX_DENSITY`` and
            work per kept value instead of per bitmap byte                      M x density <= ``INDEX_MAX_WORK``
``expand``  csrc/sparse_expand.cpp expands the weight to dense fp32 once per      past the crossover
            call (memory-bound, ~1-4 % of an M=512 GEMM), then ``F.linear``     (no kernel wins)
            (MKL sgemm)
==========  ==================================================================  =====================

The crossover M is measured, not guessed: ``bench/sparse_crossover.py`` times each sparse kernel against
dense fp32 ``F.linear`` over M (4 rotating 4096 x 4096 layers, beyond the last-level cache, 2 threads) and
the largest M at which the kernel is still the fastest route (it beats dense; or, where nothing beats dense,
it beats the expand route) goes in :data:`CROSSOVER_M`, per route and CPU variant, with the CPU it was
measured on.  A variant with no measurement of its own uses the avx2 row (documented guess:
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
    """Largest M (rows of x) at which ``route`` was the fastest (module docstring), measured at ``density``."""

    max_m: int
    density: float
    measured_on: str

    def limit(self, density: float) -> int:
        """The crossover for another density (work ~ density, so the crossover M ~ 1 / density)."""
        return max(0, int(self.max_m * self.density / max(density, 1e-6)))


# (route, CPU variant) -> crossover.  See the module docstring and bench/RESULTS.md.
CROSSOVER_M: dict[tuple[str, str], Crossover] = {
    # Quiet AMD EPYC (Zen 3 class, AVX2), 2 threads, 17:20 UTC, bench/sparse_crossover.py (dense time / route
    # time).  2:4 fp32: 2.35 / 3.75 / 2.56 / 1.71x at M = 1 / 4 / 8 / 16, 0.98x at 24, 0.72x at 32; the large-M
    # kernel 0.90x at 16, 0.99x at 24, 1.03x at 32, 1.30x at 64, 1.38x at 512: the small kernel up to 16.
    ("nm", "avx2"): Crossover(16, 0.5, "AMD EPYC (Zen 3 class, AVX2), 2 threads, quiet, 2026-11-30"),
    # bitmap fp32, 50 % / 90 % sparse: 2.04 / 2.45x at M = 1, 1.73 / 1.76x at 16, 1.21 / 1.25x at 24, 1.03 /
    # 0.93x at 32, 0.67 / 0.55x at 128, 0.40 / 0.39x at 512.  Past 24-32 rows no route beats dense (there is no
    # large-M bitmap kernel), so the question is the faster of the kernel and expand + sgemm, which ran
    # 0.30 / 0.37 / 0.51 / 0.78x at M = 32 / 64 / 128 / 512 (its 64 MB buffer is allocated and faulted in per
    # call): the kernel up to 128 rows.
    ("bitmap", "avx2"): Crossover(128, 0.5, "AMD EPYC (Zen 3 class, AVX2), 2 threads, quiet, 2026-11-30"),
    # The scalar generic variants (LLMACCEL_CPU_ISA=generic on the same CPU, so dense is still AVX2 MKL) never
    # beat dense: 2:4 0.32 / 0.64 / 0.71 / 0.34 / 0.18x at M = 1 / 2 / 4 / 8 / 16, bitmap 50 % 0.43 / 0.76 /
    # 0.87 / 0.41 / 0.27x; against the expand route (0.09 / 0.26 / 0.23 / 0.26x at 1 / 4 / 8 / 16) the kernels
    # win up to 8 (2:4) and 16 (bitmap) rows.
    ("nm", "generic"): Crossover(8, 0.5, "AMD EPYC (Zen 3 class), generic variant, 2 threads, quiet, 2026-11-30"),
    # act="dynamic" (int8 x int8, sparse_nm_i8_linear) on 2:4 int8 values, 4 rotating 4096 x 4096 layers, 2
    # threads, 2026-12-01 (dense F.linear time / kernel time; the large-M kernel on the dequantized codes
    # beside it): 8.1 / 1.4x at M = 8, 4.5 / 1.3x at 16, 2.9 / 1.3x at 32, 2.2 / 1.4x at 64, 1.6 / 1.4x at 128,
    # 1.43 / 1.51x at 192, 1.38 / 1.33x at 256, 1.10 / 1.26x at 384: the int8 kernel up to 192 rows (it ties
    # the large-M one from there).
    ("nm_i8", "avx2"): Crossover(192, 0.5, "AMD EPYC (Zen 3 class, AVX2), 2 threads, 2026-12-01"),
    # Not measured: the scalar int8 kernel does the per-slot work of the scalar fp32 one, so its crossover.
    ("nm_i8", "generic"): Crossover(8, 0.5, "taken from ('nm', 'generic'): the same scalar per-slot work"),
    ("bitmap", "generic"): Crossover(16, 0.5, "AMD EPYC (Zen 3 class), generic variant, 2 threads, quiet, 2026-11-30"),
    # The AVX2 kernels on an AVX-512 CPU, where the dense peer (MKL sgemm) runs AVX-512 and is about twice as
    # fast as on the AVX2 EPYC: 2-core Intel Xeon VM (Sapphire Rapids class: AVX-512, AMX, 105 MiB L3), 2 threads,
    # 2026-12-01, bench/sparse_crossover.py --routes nm nm_large bitmap50 index90 (dense time / route time).
    # 2:4 fp32: 1.23 / 2.09 / 1.85 / 0.83 / 0.54x at M = 1 / 4 / 8 / 16 / 32.  bitmap 50 %: 1.07 / 1.97 / 1.59 /
    # 0.64 / 0.42x.  (The large-M N:M kernel never beat dense there: 0.50-0.74x from M = 16 to 512; see
    # NM_LARGE_LOSES_TO_DENSE.)
    ("nm", "avx2@avx512"): Crossover(8, 0.5, "Intel Xeon (Sapphire Rapids class, AVX-512 MKL), 2 threads, 2026-12-01"),
    # The AVX-512 N:M unit on the same machine (bench/sparse_crossover.py --routes nm): 1.44 / 2.18 / 1.94 / 0.88
    # / 0.63x at M = 1 / 4 / 8 / 16 / 24.  (Its int8-activation path is the AVX2 kernel: ("nm_i8", "avx2").)
    ("nm", "avx512@avx512"): Crossover(8, 0.5, "Intel Xeon (Sapphire Rapids class, AVX-512 MKL), 2 threads, "
                                               "2026-12-01"),
    # The AVX-512 bitmap unit (vexpandps per 16 columns) on the same machine, bench/sparse_crossover.py --routes
    # bitmap50 bitmap90: 50 % 1.34 / 1.42 / 2.19 / 1.95 / 0.80x at M = 1 / 2 / 4 / 8 / 16; 90 % 1.14 / 1.15 / 2.14
    # / 1.82 / 1.44 / 0.91x at M = 1 / 2 / 4 / 8 / 16 / 32.
    ("bitmap", "avx512@avx512"): Crossover(8, 0.5, "Intel Xeon (Sapphire Rapids class, AVX-512 MKL), 2 threads, "
                                                   "2026-12-01"),
    ("bitmap", "avx2@avx512"): Crossover(8, 0.5, "Intel Xeon (Sapphire Rapids class, AVX-512 MKL), 2 threads, "
                                                 "2026-12-01"),
}


def dense_isa() -> str:
    """The ISA the dense peer (MKL / oneDNN sgemm through ``F.linear``) runs here: "avx512" where torch reports an
    AVX-512 CPU capability and MKL is not capped below it (``MKL_ENABLE_INSTRUCTIONS``), else "avx2".  A sparse
    kernel's crossover depends on it as much as on its own variant."""
    import os

    import torch

    cap = (torch.backends.cpu.get_cpu_capability() or "").upper()
    mkl_cap = os.environ.get("MKL_ENABLE_INSTRUCTIONS", "").upper()
    if "AVX512" in cap and mkl_cap in ("", "AVX512", "AVX512_E1", "AVX512_E2", "AVX512_E3", "AVX512_E4"):
        return "avx512"
    return "avx2"


# The route is taken on every call, and asking the extension for the variant table costs ~10 us (a quarter
# of a decode call's Python overhead): the variants are cached until the ISA cap changes
# (llmaccel.cpu.set_cpu_isa calls reset()).
_VARIANTS: dict[str, str] = {}


def reset() -> None:
    """Forget the cached variants, dense ISA and small-M limits (the ISA cap changed)."""
    _VARIANTS.clear()
    _DENSE_ISA.clear()
    _NM_LIMITS.clear()
    _BITMAP_ROUTES.clear()


def _variant(family: str) -> str:
    found = _VARIANTS.get(family)
    if found is None:
        try:
            found = ext().variant_choice()[family]["variant"]
        except Exception:  # an extension without this family: treated like avx2 (the caller checks the binding)
            found = "avx2"
        _VARIANTS[family] = found
    return found


_DENSE_ISA: list[str] = []


def _dense() -> str:
    if not _DENSE_ISA:
        _DENSE_ISA.append(dense_isa())
    return _DENSE_ISA[0]


def crossover(route: str, family: str) -> tuple[Optional[Crossover], str]:
    """The crossover for ``route`` on the variant ``family`` runs now, and that variant's name: the row measured for
    this variant against this machine's dense ISA ("avx2@avx512"), else the variant's own row (measured where the
    dense peer ran the same ISA), else the avx2 rows (against this dense ISA, then the plain one)."""
    variant = _variant(family)
    found = (CROSSOVER_M.get((route, f"{variant}@{_dense()}")) or CROSSOVER_M.get((route, variant))
             or CROSSOVER_M.get((route, f"avx2@{_dense()}")) or CROSSOVER_M.get((route, "avx2")))
    return found, variant


class Route:
    """A route's name and why it was taken.  ``why`` may be given as a zero-argument function: the op takes a route
    on every call but only ``explain()`` reads the reason, and formatting it was a fifth of a decode call's
    Python overhead."""

    __slots__ = ("name", "_why")

    def __init__(self, name: str, why):
        self.name = name  # "nm" | "nm_large" | "bitmap" | "bitmap_index" | "expand" | "bsr"
        self._why = why

    @property
    def why(self) -> str:
        return self._why() if callable(self._why) else self._why

    def __repr__(self) -> str:
        return f"Route({self.name!r}, {self.why!r})"


# The large-M N:M kernel against dense F.linear (MKL), 4096 x 4096 2:4 fp32 on the shared AVX2 EPYC (contended):
# 1.04x at M = 24, 1.19x at 32, 1.17-1.47x at 128, 1.07-1.25x at 512; it beats the small-M kernel from
# M = 24-32 (ms per layer, one thread, small / large: 39 / 41 at 24, 52 / 37 at 32, 219 / 80 at 128).  So past
# the small-M kernel's crossover it runs, for weights as sparse as the 2:4 it was measured at or sparser: its
# work is density x dense's at a lower per-FMA rate than MKL (loads bound it), so a denser pattern (3:4)
# would lose to expand + sgemm.
NM_LARGE_MAX_DENSITY = 0.5
# Variants of the large-M kernel measured to lose to dense sgemm at every M, as "<variant>@<dense ISA>": the AVX2
# kernel against AVX-512 MKL (Sapphire Rapids class Xeon, 2026-12-01: 0.50 / 0.58 / 0.66 / 0.74 / 0.73x at M = 16
# / 32 / 64 / 128 / 512).  There the expand route (the weight expanded once, then sgemm) runs instead.
NM_LARGE_LOSES_TO_DENSE = frozenset({"avx2@avx512"})
# Variants that lose to dense sgemm on the weight stored dense but beat the expand route (the honest alternative
# for a compressed weight: expansion per call, then sgemm): the AVX-512 kernel against AVX-512 MKL, same machine,
# 2026-12-01 (bench/sparse_crossover.py --routes nm_large: 0.61 / 0.74 / 0.86x dense at M = 32 / 128 / 512;
# python -m llmaccel.bench prefill cases: 0.79x at 128, 0.84x at 512, where the expand route ran 0.37-0.55x and
# 0.66-0.69x).  They run; explain() says they trail dense.  Re-measured 2026-12-02 after the contiguous decode
# and row-wise store (same machine): crossover script 0.63 / 0.80 / 0.77 / 0.85x at M = 16 / 32 / 128 / 512;
# the bench's prefill cases 0.82-0.94x at 128 and 0.92-1.27x at 512 (MKL's own rate moved 135-187 GFLOP/s
# between those runs), expand 0.39 / 0.62x at 128 / 512: still trailing dense in the median.
NM_LARGE_TRAILS_DENSE = frozenset({"avx512@avx512"})


_NM_LIMITS: dict[tuple[int, int, str], tuple[dict, int]] = {}


def nm_small_limit(n: int, m: int, act: str = "none") -> int:
    """The most rows of x the small-M N:M kernel takes for pattern n:m (:func:`nm_route`'s test: its measured
    crossover, scaled to the density), cached per pattern until the ISA cap changes (:func:`reset`) or
    ``CROSSOVER_M`` is replaced: the direct decode road asks on every call."""
    hit = _NM_LIMITS.get((n, m, act))
    if hit is not None and hit[0] is CROSSOVER_M:
        return hit[1]
    found, _ = crossover("nm_i8" if act == "dynamic" else "nm", "sparse_nm")
    limit = found.limit(n / m) if found else 0
    _NM_LIMITS[(n, m, act)] = (CROSSOVER_M, limit)
    return limit


def nm_route(rows: int, n: int, m: int, act: str = "none") -> Route:
    """Route for an N:M weight and ``rows`` rows of x (module docstring); ``act="dynamic"``: the int8-activation
    kernel's own crossover."""
    density = n / m
    found, variant = crossover("nm_i8" if act == "dynamic" else "nm", "sparse_nm")
    limit = found.limit(density) if found else 0
    if rows <= limit:
        return Route("nm", lambda: f"M={rows} <= {limit}, the measured crossover of the N:M kernel ({variant}) against "
                           f"dense sgemm at density {density:.2f}: the sparse kernel wins")
    large = f"{_variant('sparse_nm_large')}@{_dense()}"
    if density <= NM_LARGE_MAX_DENSITY and hasattr(ext(), "sparse_nm_large_linear") and \
            large not in NM_LARGE_LOSES_TO_DENSE:
        if large in NM_LARGE_TRAILS_DENSE:
            return Route("nm_large", lambda: f"M={rows} > {limit}, the small-M N:M kernel's crossover; at density "
                                     f"{density:.2f} <= {NM_LARGE_MAX_DENSITY} the large-M kernel ({large}) does "
                                     f"{density:.2f} of dense's FMAs: measured behind dense sgemm on a dense weight "
                                     f"but ahead of expanding this one per call (NM_LARGE_TRAILS_DENSE)")
        return Route("nm_large", lambda: f"M={rows} > {limit}, the small-M N:M kernel's crossover; at density "
                                 f"{density:.2f} <= {NM_LARGE_MAX_DENSITY} the large-M kernel "
                                 f"({_variant('sparse_nm_large')}) does {density:.2f} of dense's FMAs and beats "
                                 f"dense sgemm (NM_LARGE_MAX_DENSITY)")
    return Route("expand", lambda: f"M={rows} > {limit}, the measured crossover of the N:M kernel ({variant}) against "
                                   f"dense sgemm at density {density:.2f}"
                                   + (f" (the large-M kernel, {large}, loses to dense sgemm here: "
                                      "NM_LARGE_LOSES_TO_DENSE)" if large in NM_LARGE_LOSES_TO_DENSE else "")
                                   + ": expand the weight once in C++, then dense sgemm")


# The column-index form against the bitmap byte kernel, 8 rotating 4096 x 4096 layers, fp32, 2 threads, AVX2 EPYC
# (Zen 3), 2026-12-01, first measured with 8 layers (dense time / route time; bench/sparse_crossover.py --routes
# bitmap50 index50 bitmap70 index70 ... repeats it with 4):
#   sparsity 50 %: M=1 index 1.17x, bitmap 1.87x;  M=4 1.02 / 4.13x
#   sparsity 70 %: M=1 1.74 / 1.83x;  M=4 2.38 / 5.18x
#   sparsity 80 %: M=1 2.57 / 1.92x;  M=4 1.94 / 3.10x;  M=16 1.61 / 2.74x
#   sparsity 90 %: M=1 5.31 / 2.06x;  M=4 4.71 / 4.60x;  M=16 1.16 / 1.25x
# The byte kernel's work is fixed per bitmap byte and shared by the <= 4 x rows of a tile, the index kernel's
# is per kept value and per x row (one gather each): the index form wins at one row below ~25-30 % density
# and loses as soon as several rows share the bytes, so it runs where density <= INDEX_MAX_DENSITY and
# rows x density <= INDEX_MAX_WORK (1 row up to 25 %, 2 up to 20 %, 4 at 10 %: the tie measured above).
# The AVX-512 unit gathers x with vgatherdps (16 values a step) where the AVX2 one inserts 8 scalars, so its
# index form stays ahead further: 2-core Sapphire Rapids class Xeon, 2026-12-01, bench/sparse_crossover.py
# --routes bitmap90 index90 (dense time / route time, both AVX-512): 90 % at M = 1 / 2 / 4 / 8 / 16, index
# 4.39 / 3.55 / 2.92 / 2.10 / 0.88x, bitmap 1.14 / 1.15 / 2.14 / 1.82 / 1.44x: the index form up to 8 rows at
# 10 % density (INDEX_MAX_WORK_BY_VARIANT).
INDEX_MAX_DENSITY = 0.25
INDEX_MAX_WORK = 0.4
INDEX_MAX_WORK_BY_VARIANT = {"avx512": 0.8}


def index_max_work() -> float:
    """The rows x density limit of the column-index form for the bitmap variant that runs here."""
    return INDEX_MAX_WORK_BY_VARIANT.get(_variant("sparse_bitmap"), INDEX_MAX_WORK)


def bitmap_route_name(rows: int, density: float, k: int) -> str:
    """``bitmap_route(rows, density, k).name``, cached until the ISA cap changes (:func:`reset`) or a table it
    reads is replaced: a layer's prepared decode call asks on every call."""
    key = (rows, density, k)
    tables = (CROSSOVER_M, INDEX_MAX_DENSITY, INDEX_MAX_WORK, INDEX_MAX_WORK_BY_VARIANT)
    hit = _BITMAP_ROUTES.get(key)
    if hit is not None and all(a is b for a, b in zip(hit[0], tables)):
        return hit[1]
    name = bitmap_route(rows, density, k).name
    if len(_BITMAP_ROUTES) >= 4096:  # distinct (rows, density, K) of every layer seen: bounded anyway
        _BITMAP_ROUTES.clear()
    _BITMAP_ROUTES[key] = (tables, name)
    return name


_BITMAP_ROUTES: dict = {}


def bitmap_route(rows: int, density: float, k: int = 0) -> Route:
    """Route for a bitmap weight keeping ``density`` of its entries, ``rows`` rows of x and K = ``k`` (module
    docstring)."""
    work = index_max_work()
    if density <= INDEX_MAX_DENSITY and rows * density <= work and 0 < k <= 65536 \
            and hasattr(ext(), "sparse_bitmap_index_linear"):
        return Route("bitmap_index", lambda: f"M={rows} at density {density:.2f}: the column-index form (work per kept "
                                     f"value; density <= {INDEX_MAX_DENSITY} and M x density <= {work}, "
                                     f"measured against the bitmap byte kernel, {_variant('sparse_bitmap')})")
    found, variant = crossover("bitmap", "sparse_bitmap")
    limit = 0 if not found else found.max_m if density <= found.density else found.limit(density)
    how = f"the measured crossover of the bitmap kernel ({variant}) against dense sgemm at density {density:.2f}"
    if rows <= limit:
        return Route("bitmap", lambda: f"M={rows} <= {limit}, {how}: the sparse kernel wins")
    return Route("expand", lambda: f"M={rows} > {limit}, {how}: expand the weight once in C++, then dense sgemm")
