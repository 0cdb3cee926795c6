"""Build llmaccel and its C++/OpenMP extension llmaccel._C.

The extension includes no PyTorch headers: kernels take raw pointers, sizes
and strides, so it builds in seconds against any torch version.

CPU features are chosen at run time, never at build time.  The extension is
compiled for baseline x86-64; each hot kernel has extra translation units
named ``*_avx2.cpp`` / ``*_avx512vnni.cpp`` that get their own ``-m`` flags
here and are only entered when CPUID reports those features.

Environment:
  LLMACCEL_NATIVE=1   add -march=native to every file (local builds only;
                      such a build crashes on older CPUs)
  LLMACCEL_DEBUG=1    -O0 -g
"""

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import pybind11
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ISA_FLAGS = {
    "_avx2.cpp": ["-mavx2", "-mfma", "-mf16c"],
    "_avx512vnni.cpp": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
                        "-mavx512vnni"],
}


def _isa_flags(src):
    for suffix, flags in ISA_FLAGS.items():
        if src.endswith(suffix):
            return flags
    return []


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
if os.environ.get("LLMACCEL_NATIVE") == "1":
    cflags.append("-march=native")

sources = sorted(os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith(".cpp"))

ext = Extension(
    "llmaccel._C",
    sources=sources,
    include_dirs=[pybind11.get_include(), "csrc"],
    extra_compile_args=cflags,
    extra_link_args=["-fopenmp"],
    language="c++",
    depends=[os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith(".h")],
)

if sys.platform != "linux":
    raise RuntimeError("llmaccel's C++ extension is built and tested on Linux (gcc) only")

setup(
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExt},
)
