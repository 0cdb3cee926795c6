"""Build llmaccel and its C++/OpenMP extension llmaccel._C.

The extension includes no PyTorch headers: kernels take raw pointers, sizes
and strides, so it builds in seconds against any torch version.

CPU features are chosen at run time, never at build time.  The extension is
compiled for baseline x86-64; each hot kernel has extra translation units
named ``*_avx2.cpp`` / ``*_avx512.cpp`` / ``*_avx512vnni.cpp`` / ``*_amx.cpp`` that get their own ``-m`` flags
here (ISA_FLAGS) and are only entered when the CPU reports every feature
those flags use (csrc/variants.h).

Environment:
  LLMACCEL_NATIVE=1   add -march=native to every file (local builds only;
                      such a build crashes on older CPUs)
  LLMACCEL_DEBUG=1    -O0 -g
  LLMACCEL_SANITIZE=address,undefined
                      AddressSanitizer and/or UndefinedBehaviorSanitizer
                      (comma list: address, undefined); -O1 -g1, reports are
                      fatal. Python is not instrumented: run under
                      LD_PRELOAD=libasan.so (scripts/sanitize.sh does it all)
"""

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import pybind11
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# The ISA levels above the baseline, ascending: capability name -> (source
# suffix or suffixes, -m flags).  The single source of truth for what each variant unit
# may execute: every unit named *<suffix> is compiled with these flags, and
# C++ gates the unit's variants on exactly these features (flag "-mavx512vnni"
# -> feature "avx512vnni", "-mamx-tile" -> "amx_tile"; see csrc/isa.h and
# csrc/cpu_features.h, which must know every feature used here).  Every other
# unit is compiled for baseline x86-64 as capability "generic".
ISA_FLAGS = {
    "avx2": ("_avx2.cpp", ["-mavx2", "-mfma", "-mf16c"]),
    # AVX-VNNI (Alder Lake and later clients, Sierra Forest, Zen 5): the AVX2 level plus the VEX-encoded
    # vpdpbusd.  Below avx512 in the cap order: CPUs with AVX-512 VNNI have a better int8 unit, and
    # Skylake-SP to Ice Lake and Zen 4 lack this one (its gate then excludes it whatever the cap).
    "avxvnni": ("_avxvnni.cpp", ["-mavx2", "-mfma", "-mf16c", "-mavxvnni"]),
    # attention_avx512.cpp uses no VNNI but shares the level (one gate per level).
    "avx512": (("_avx512.cpp", "_avx512vnni.cpp"), ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl",
                                   "-mavx512dq", "-mavx512vnni"]),
    # AVX512-VBMI (Ice Lake, Sapphire Rapids, Zen 4; not Skylake-SP / Cascade Lake): the AVX-512 level plus the
    # byte permutes (vpermt2b, vpmultishiftqb) of the sparse int8 gather.
    "avx512vbmi": ("_avx512vbmi.cpp", ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl",
                                       "-mavx512dq", "-mavx512vnni", "-mavx512vbmi"]),
    # AMX-INT8 (Sapphire Rapids and later): the AVX-512 level plus the tile unit.
    "amx": ("_amx.cpp", ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
                         "-mavx512vnni", "-mamx-tile", "-mamx-int8"]),
}
BASELINE_CAPABILITY = "generic"


def flag_feature(flag):
    """The CPU feature a -m flag needs: "-mavx512vnni" -> "avx512vnni", "-mamx-int8" -> "amx_int8"."""
    assert flag.startswith("-m"), flag
    return flag[2:].replace("-", "_")


def _capability(src):
    for cap, (suffix, _) in ISA_FLAGS.items():
        if src.endswith(suffix):
            return cap
    return BASELINE_CAPABILITY


def _isa_flags(src):
    """Compile flags of one unit: its level's -m flags, its capability (the per-ISA namespace of
    csrc/common.h) and every level's feature list (csrc/isa.cpp builds the gates from them)."""
    cap = _capability(src)
    flags = list(ISA_FLAGS[cap][1]) if cap in ISA_FLAGS else []
    flags.append(f"-DLLMACCEL_CPU_CAPABILITY={cap}")
    for level, (_, level_flags) in ISA_FLAGS.items():
        features = ",".join(flag_feature(f) for f in level_flags)
        flags.append(f'-DLLMACCEL_ISA_FEATURES_{level}="{features}"')
    return flags


def _progress(msg):
    # One write per line: the compiler threads echo their command lines to the same stream.
    sys.stdout.write(f"llmaccel build: {msg}\n")
    sys.stdout.flush()


class BuildExt(build_ext):
    """Per-file ISA flags and parallel compilation of the translation units."""

    def build_extensions(self):
        compiler = self.compiler
        original_compile = compiler._compile

        def compile_one(obj, src, ext, cc_args, extra_postargs, pp_opts):
            original_compile(obj, src, ext, cc_args, list(extra_postargs) + _isa_flags(src), pp_opts)

        def parallel_compile(sources, output_dir=None, macros=None, include_dirs=None, debug=0,
                             extra_preargs=None, extra_postargs=None, depends=None):
            macros, objects, extra_postargs, pp_opts, build = compiler._setup_compile(
                output_dir, macros, include_dirs, sources, depends, extra_postargs)
            cc_args = compiler._get_cc_args(pp_opts, debug, extra_preargs)
            jobs = [(obj, build[obj]) for obj in objects if obj in build]
            # One progress line per translation unit ("llmaccel build: ..."; scripts/install.sh shows these).
            t0 = time.monotonic()
            _progress(f"compiling {len(jobs)} C++ files on {os.cpu_count() or 2} cores")

            def one(job):
                t = time.monotonic()
                compile_one(job[0], job[1][0], job[1][1], cc_args, extra_postargs, pp_opts)
                return job[1][0], time.monotonic() - t

            with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
                for k, done in enumerate(as_completed([pool.submit(one, job) for job in jobs]), 1):
                    src, dt = done.result()
                    _progress(f"[{k}/{len(jobs)}] {src} {dt:.1f} s ({time.monotonic() - t0:.0f} s elapsed)")
            return objects

        compiler.compile = parallel_compile
        t0 = time.monotonic()
        super().build_extensions()
        _progress(f"llmaccel._C compiled and linked in {time.monotonic() - t0:.0f} s")


debug = os.environ.get("LLMACCEL_DEBUG") == "1"
# -fno-wrapv undoes the -fwrapv that Python's own CFLAGS add: defined signed
# wraparound blocks loop optimizations (it cost the attention decode kernel
# ~20%).  Kernels that need wrapping arithmetic do it in unsigned types, and
# the C++ layer checks index arithmetic for overflow before any kernel runs.
cflags = ["-std=c++17", "-fopenmp", "-fvisibility=hidden", "-fno-wrapv", "-Wall", "-Wextra", "-Wno-unused-parameter"]
cflags += ["-O0", "-g"] if debug else ["-O3"]
native = os.environ.get("LLMACCEL_NATIVE") == "1"
if native:
    cflags.append("-march=native")
cflags.append(f"-DLLMACCEL_NATIVE_BUILD={int(native)}")

# ---- sanitizers (scripts/sanitize.sh) -------------------------------------
sanitize = [s.strip() for s in os.environ.get("LLMACCEL_SANITIZE", "").split(",") if s.strip()]
if sanitize:
    unknown = set(sanitize) - {"address", "undefined"}
    if unknown:
        raise RuntimeError(f"LLMACCEL_SANITIZE: unknown sanitizer(s) {sorted(unknown)}; use address, undefined")
    san = [f"-fsanitize={','.join(sanitize)}", "-fno-sanitize-recover=all"]
    # -g1: line tables and function names, all a report's stack trace needs; full -g made the build (a CI
    # pass) ~25 % slower.
    cflags = [f for f in cflags if not f.startswith("-O")] + san + ["-fno-omit-frame-pointer", "-O1", "-g1"]
    link_san = san
else:
    link_san = []

sources = sorted(os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith(".cpp"))

ext = Extension(
    "llmaccel._C",
    sources=sources,
    include_dirs=[pybind11.get_include(), "csrc"],
    extra_compile_args=cflags,
    extra_link_args=["-fopenmp"] + link_san,
    language="c++",
    depends=[os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith(".h")],
)

if sys.platform != "linux":
    raise RuntimeError("llmaccel's C++ extension is built and tested on Linux (gcc) only")

setup(
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExt},
)
