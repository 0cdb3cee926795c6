"""The CPU-ISA layer: feature detection, the variant gates derived from setup.py's flags, the one
variant table and its pick(), LLMACCEL_CPU_ISA, MemoryError from kernel scratch, and a
disassembly check that no generic code path can reach AVX or AVX-512 instructions.
"""

import ast
import os
import pathlib
import platform
import re
import subprocess
import sys

import pytest
import torch

import llmaccel
from llmaccel import cpu
from llmaccel._ext import ext
from llmaccel.ops._cpp_views import view
from llmaccel.ops.int8_mm import int8_mm_cpp

from helpers import int8_mm_exact, randint8

ROOT = pathlib.Path(__file__).resolve().parents[1]
X86 = platform.machine() in ("x86_64", "AMD64", "i686")

# Our feature names -> the Linux kernel's /proc/cpuinfo flag names.
PROC_CPUINFO_NAMES = {
    "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c", "avx512f": "avx512f", "avx512bw": "avx512bw",
    "avx512vl": "avx512vl", "avx512dq": "avx512dq", "avx512vnni": "avx512_vnni", "avx512vbmi": "avx512vbmi",
    "avxvnni": "avx_vnni",
    "avx512bf16": "avx512_bf16", "amx_tile": "amx_tile", "amx_int8": "amx_int8", "amx_bf16": "amx_bf16",
}


def setup_isa_table():
    """setup.py's ISA_FLAGS and flag_feature, read from its source (setup.py cannot be imported:
    it runs setup()).  ISA_FLAGS must stay a literal: it is the single source of truth."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    table, rule = None, None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "ISA_FLAGS" for t in node.targets):
            table = ast.literal_eval(node.value)
        if isinstance(node, ast.FunctionDef) and node.name == "flag_feature":
            ns = {}
            exec(compile(ast.Module(body=[node], type_ignores=[]), "setup.py", "exec"), ns)
            rule = ns["flag_feature"]
    assert table and rule, "setup.py must define ISA_FLAGS (a literal) and flag_feature()"
    return table, rule


# --- 1. detection and gates ---------------------------------------------------------------------------

def test_detector_knows_every_feature_and_matches_the_kernel():
    assert set(ext().known_cpu_features()) == set(PROC_CPUINFO_NAMES)
    detected = set(ext().cpu_features())
    assert detected <= set(PROC_CPUINFO_NAMES)
    if not (X86 and os.path.exists("/proc/cpuinfo")):
        pytest.skip("needs x86 Linux for /proc/cpuinfo")
    flags = set()
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    # The kernel clears a flag when it does not enable the state (XCR0), as our XGETBV check does.
    for ours, theirs in PROC_CPUINFO_NAMES.items():
        assert (ours in detected) == (theirs in flags), (ours, theirs)


def test_every_level_gate_covers_its_compile_flags():
    table, flag_feature = setup_isa_table()
    assert flag_feature("-mavx512vnni") == "avx512vnni" and flag_feature("-mamx-tile") == "amx_tile"
    levels = ext().isa_levels()
    assert list(levels) == ["generic", "avx2", "avxvnni", "avx512", "avx512vbmi", "amx"] and levels["generic"] == []
    assert set(table) == set(levels) - {"generic"}
    known = set(ext().known_cpu_features())
    for level, (suffix, flags) in table.items():
        needed = {flag_feature(f) for f in flags}
        assert needed <= set(levels[level]), (level, needed - set(levels[level]))
        assert needed <= known, f"cpu_features.cpp cannot detect {needed - known} (used by {suffix})"


def test_variant_table_gates_and_order():
    table, flag_feature = setup_isa_table()
    rows = ext().variant_table()
    order = ["generic", "avx2", "avxvnni", "avx512", "avx512vbmi", "amx"]
    fams = {}
    for r in rows:
        fams.setdefault(r["family"], []).append(r)
        if r["level"] != "generic":
            flags = table[r["level"]][1]
            assert {flag_feature(f) for f in flags} <= set(r["features"]), r
    # the families of today's ops stay registered (a new family needs no edit here)
    assert set(fams) >= {"int8_mm", "int8_linear_weight_only", "quantize_per_token", "attention", "sparse_nm"}
    for fam, rs in fams.items():
        levels = [order.index(r["level"]) for r in rs]
        assert levels == sorted(levels, reverse=True), f"{fam}: not best first"
        assert rs[-1]["level"] == "generic", f"{fam}: needs a generic variant"


def _entry_points_with_units(lib):
    """(row, function name, defining source file) for every registered kernel entry point."""
    from isa_disasm import demangle

    by_start = {f.start: f.name for f in lib.functions.values()}
    points = [(fam, var, level, kernel, by_start.get(off)) for fam, var, level, kernel, off in
              ext()._variant_entry_points()]
    assert all(p[4] for p in points), "an entry point is not the start of a function"
    names = demangle(p[4] for p in points)
    sources = {p.name: p.read_text() for p in (ROOT / "csrc").glob("*.cpp")}
    out = []
    for fam, var, level, kernel, sym in points:
        base = re.match(r"llmaccel::(\w+)\(", names[sym])
        assert base, names[sym]
        defined_in = [f for f, text in sources.items() if re.search(rf"^\S.*\b{base.group(1)}\([^;]*\{{", text, re.M)]
        assert len(defined_in) == 1, (names[sym], defined_in)
        out.append(((fam, var, level, kernel), sym, defined_in[0]))
    return out


@pytest.fixture(scope="module")
def library():
    from isa_disasm import Library, objdump_available

    if not X86 or not objdump_available():
        pytest.skip("needs x86-64 and objdump")
    if ext().native_build:
        pytest.skip("LLMACCEL_NATIVE=1 build: every unit is compiled for this CPU")
    return Library(ext().__file__)


def test_each_entry_point_is_gated_by_its_units_flags(library):
    """The registry's level for an entry point is the level setup.py compiles its file for."""
    table, flag_feature = setup_isa_table()
    features = {r["family"] + "/" + r["variant"]: set(r["features"]) for r in ext().variant_table()}
    for (fam, var, level, kernel), sym, src in _entry_points_with_units(library):
        unit_level = next((lv for lv, (suffix, _) in table.items() if src.endswith(suffix)), "generic")
        assert unit_level == level, f"{fam}/{var} {kernel} is defined in {src} ({unit_level}) but gated as {level}"
        flags = table[unit_level][1] if unit_level in table else []
        assert {flag_feature(f) for f in flags} <= features[f"{fam}/{var}"]


# --- 2. disassembly: generic code never reaches AVX, AVX2 code never reaches AVX-512 -------------------

def test_no_wider_isa_reachable(library):
    from isa_disasm import demangle

    lib = library
    points = _entry_points_with_units(lib)
    # Generic roots: the module init (every binding and everything it calls: validation, pick(), the
    # pybind11 machinery), static constructors (run at load on any CPU), and the generic variants.
    generic_roots = [n for n in lib.functions if n.startswith(("PyInit_", "_GLOBAL__sub_I"))]
    generic_roots += [sym for (_, _, level, _), sym, _ in points if level == "generic"]
    avx2_roots = [sym for (_, _, level, _), sym, _ in points if level == "avx2"]
    assert any(n.startswith("PyInit_") for n in generic_roots) and avx2_roots

    generic = lib.reachable(generic_roots)
    bad = [n for n in generic if lib.functions[n].avx]
    names = demangle(bad)
    assert not bad, "generic code reaches AVX:\n" + "\n".join(
        f"  {names[n][:160]}: {lib.functions[n].first_avx}" for n in bad)
    avx2 = lib.reachable(avx2_roots)
    bad = [n for n in avx2 if lib.functions[n].avx512]
    names = demangle(bad)
    assert not bad, "AVX2 code reaches AVX-512:\n" + "\n".join(
        f"  {names[n][:160]}: {lib.functions[n].first_avx512}" for n in bad)
    # The avxvnni level is AVX2 plus the VEX dot products: none of its code may use AVX-512 (the assembler's
    # default encoding of vpdpbusd on ymm is EVEX), and no other level's code may use the VEX dot products
    # (Skylake-SP to Ice Lake and Zen 4 have AVX-512 VNNI but not AVX-VNNI).
    vnni_roots = [sym for (_, _, level, _), sym, _ in points if level == "avxvnni"]
    avxvnni = lib.reachable(vnni_roots)
    bad = [n for n in avxvnni if lib.functions[n].avx512]
    names = demangle(bad)
    assert not bad, "AVX-VNNI code reaches AVX-512:\n" + "\n".join(
        f"  {names[n][:160]}: {lib.functions[n].first_avx512}" for n in bad)
    # (its tiles sit behind constexpr tile tables, which the graph does not follow: the namespace test below
    # checks them by name)
    assert any(f.avxvnni for f in lib.functions.values()) == ("avxvnni" in ext().isa_levels())
    other_roots = [sym for (_, _, level, _), sym, _ in points if level != "avxvnni"]
    bad = [n for n in lib.reachable(other_roots) | generic if lib.functions[n].avxvnni]
    names = demangle(bad)
    assert not bad, "code of another level reaches AVX-VNNI:\n" + "\n".join(
        f"  {names[n][:160]}: {lib.functions[n].first_avxvnni}" for n in bad)
    avx2 |= avxvnni
    # The check must see the kernels it guards: the AVX2 set does use AVX, and AVX-512 code exists.
    assert any(lib.functions[n].avx for n in avx2)
    assert any(f.avx512 for f in lib.functions.values())
    # AVX-512 code never reaches the tile unit (AMX runs only behind its own gate).
    avx512_roots = [sym for (_, _, level, _), sym, _ in points if level == "avx512"]
    avx512 = lib.reachable(avx512_roots)
    # Nor VBMI (the avx512vbmi level's byte permutes: Skylake-SP / Cascade Lake have AVX-512 without them).
    bad = [n for n in avx512 | avx2 | generic if lib.functions[n].vbmi]
    names = demangle(bad)
    assert not bad, "code below the avx512vbmi level reaches VBMI:\n" + "\n".join(
        f"  {names[n][:160]}: {lib.functions[n].first_vbmi}" for n in bad)
    assert any(f.vbmi for f in lib.functions.values()) == ("avx512vbmi" in ext().isa_levels())
    vbmi_roots = [sym for (_, _, level, _), sym, _ in points if level == "avx512vbmi"]
    avx512 |= lib.reachable(vbmi_roots)
    bad = [n for n in avx512 | avx2 | generic if lib.functions[n].amx]
    names = demangle(bad)
    assert not bad, "code below the amx level reaches AMX:\n" + "\n".join(
        f"  {names[n][:160]}: {lib.functions[n].first_amx}" for n in bad)
    assert any(f.amx for f in lib.functions.values()) == ("amx" in ext().isa_levels())
    print(f"\n{len(lib.functions)} functions; reachable: generic {len(generic)}, avx2 {len(avx2)}")


def test_capability_namespaces_hold_only_their_isa(library):
    """Functions named into a capability namespace (common.h) use no wider ISA, including those only
    reached through tables of function pointers, which the call graph does not follow."""
    from isa_disasm import demangle

    names = demangle(library.functions)
    seen = {"generic": 0, "avx2": 0, "avxvnni": 0, "avx512": 0, "avx512vbmi": 0, "amx": 0}
    for sym, f in library.functions.items():
        m = re.match(r"^(?:\S+ )?(?:\w+\s+)*llmaccel::(generic|avx2|avxvnni|avx512|avx512vbmi|amx)::", names[sym])
        if not m:
            continue
        seen[m.group(1)] += 1
        if m.group(1) == "generic":
            assert not f.avx, (names[sym], f.first_avx)
        elif m.group(1) in ("avx2", "avxvnni"):
            assert not f.avx512, (names[sym], f.first_avx512)
        if m.group(1) != "avxvnni":
            assert not f.avxvnni, (names[sym], f.first_avxvnni)
        if m.group(1) != "amx":
            assert not f.amx, (names[sym], f.first_amx)
        if m.group(1) in ("generic", "avx2", "avxvnni", "avx512"):
            assert not f.vbmi, (names[sym], f.first_vbmi)
    assert all(seen.values()), seen


# --- 3. one table, one pick: cpu_info explains every op ----------------------------------------------------

def test_cpu_info_lists_every_op_with_variant_and_reason():
    info = llmaccel.cpu_info()
    assert set(info["ops"]) >= {"int8_mm", "int8_linear_dynamic", "int8_linear_weight_only", "quantize_per_token",
                                "attention_forward", "attention_decode", "attention_backward", "sparse_nm_linear"}
    # every C++ family in the variant table is reported under some op (a new family under its own name)
    assert {d["family"] for d in info["ops"].values()} == {r["family"] for r in ext().variant_table()}
    rows = ext().variant_table()
    have = set(info["features"])
    for op, d in info["ops"].items():
        fam = d["family"]
        assert d["variant"] == info["variants"][fam] == info["available_variants"][fam][0]
        assert d["why"].startswith(d["variant"] + ":")
        # "kernel": the code that runs; a variant that hands the op to a lower unit says so
        assert d["kernel"] in info["available_variants"][fam], d
        if d["kernel"] != d["variant"]:
            assert f"runs the {d['kernel']} kernel" in d["why"], d
    if info["ops"]["sparse_nm_i8_linear"]["variant"] == "avx512":
        assert info["ops"]["sparse_nm_i8_linear"]["kernel"] == "avx2"  # csrc/sparse_nm_avx512.cpp delegates
        for r in rows:
            if r["family"] != fam:
                continue
            if r["variant"] == d["variant"]:
                break
            # every better variant was refused, and the reason says why: missing features, or the cap
            missing = [f for f in r["features"] if f not in have]
            if missing:
                assert f"{r['variant']} needs" in d["why"] and f"missing: {', '.join(missing)}" in d["why"], d["why"]
            else:
                assert info["cpu_isa"] and f"{r['variant']} is above the cap" in d["why"], d["why"]


def test_unknown_and_unsupported_variants_are_named():
    a, b = randint8(2, 8), randint8(8, 3)
    with pytest.raises(ValueError, match=r"llmaccel::int8_mm: unknown variant 'sse9' \(known: amx, avx512vnni, avxvnni, avx2, generic\)"):
        int8_mm_cpp(a, b, "sse9")
    missing_level = [r for r in ext().variant_table() if r["family"] == "int8_mm" and
                     not set(r["features"]) <= set(ext().cpu_features())]
    if not missing_level:
        pytest.skip("this CPU runs every variant")
    r = missing_level[0]
    with pytest.raises(ValueError, match=rf"variant {r['variant']} needs .*\(missing: .*\)"):
        int8_mm_cpp(a, b, r["variant"])


# --- 4. LLMACCEL_CPU_ISA -----------------------------------------------------------------------------------------

def _run_with_env(value, code):
    env = dict(os.environ, LLMACCEL_CPU_ISA=value, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_env_cap_generic_runs_generic_everywhere():
    code = ("import torch, llmaccel\n"
            "i = llmaccel.cpu_info()\n"
            "print(i['cpu_isa'], sorted(set(i['variants'].values())), sorted({v for a in i['available_variants'].values() for v in a}))\n"
            "a = torch.randint(-128, 128, (5, 70), dtype=torch.int8); b = torch.randint(-128, 128, (70, 9), dtype=torch.int8)\n"
            "assert torch.equal(llmaccel.int8_mm(a, b), (a.long() @ b.long()).int())\n"
            "print(i['ops']['int8_mm']['why'])\n")
    r = _run_with_env("generic", code)
    assert r.returncode == 0, r.stderr
    first, why = r.stdout.splitlines()[:2]
    assert first == "generic ['generic'] ['generic']"
    if "avx2" in ext().cpu_features():
        assert "avx2 is above the cap (avx2 > LLMACCEL_CPU_ISA=generic)" in why


def test_env_bad_value_names_variable_and_allowed_values():
    code = ("import torch, llmaccel\n"
            "a = torch.randint(-128, 128, (2, 8), dtype=torch.int8)\n"
            "try:\n    llmaccel.int8_mm(a, a.t().contiguous())\nexcept ValueError as e:\n    print('ValueError', e)\n"
            "try:\n    llmaccel.cpu_info()\nexcept ValueError as e:\n    print('ValueError', e)\n")
    r = _run_with_env("avx1024", code)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2, r.stdout
    for line in lines:
        assert line.startswith("ValueError") and "LLMACCEL_CPU_ISA='avx1024'" in line
        assert "allowed values: generic, avx2, avxvnni, avx512" in line


def test_env_level_above_the_cpu_names_missing_features():
    have = set(ext().cpu_features())
    levels = ext().isa_levels()
    above = [lv for lv, feats in levels.items() if not set(feats) <= have]
    if not above:
        pytest.skip("this CPU supports every level")
    code = ("import torch, llmaccel\n"
            "a = torch.randint(-128, 128, (2, 8), dtype=torch.int8)\n"
            "try:\n    llmaccel.int8_mm(a, a.t().contiguous())\nexcept RuntimeError as e:\n    print('RuntimeError', e)\n")
    r = _run_with_env(above[-1].upper(), code)  # case-insensitive
    assert r.returncode == 0, r.stderr
    missing = [f for f in levels[above[-1]] if f not in have]
    assert r.stdout.startswith("RuntimeError LLMACCEL_CPU_ISA=") and ", ".join(missing) in r.stdout, r.stdout


def test_in_process_cap_drives_public_ops_and_restores():
    before, cap = llmaccel.cpu_info()["variants"], ext().cpu_isa()
    x, w, s = torch.randn(3, 100), randint8(37, 100), torch.rand(37) * 0.01 + 1e-3
    with llmaccel.backends.use("cpp"):
        y_best = llmaccel.int8_linear(x, w, s)  # packs w for the best variant
        with cpu.cpu_isa("generic"):
            info = llmaccel.cpu_info()
            assert info["cpu_isa"] == "generic" and set(info["variants"].values()) == {"generic"}
            y_gen = llmaccel.int8_linear(x, w, s)  # repacked in the generic layout, not misread
            a, b = randint8(4, 33), randint8(33, 5)
            assert torch.equal(llmaccel.int8_mm(a, b), int8_mm_exact(a, b))
            if "avx2" in ext().cpu_features():
                with pytest.raises(ValueError, match=r"variant avx2 is above the cap"):
                    int8_mm_cpp(a, b, "avx2")
    torch.testing.assert_close(y_gen, y_best, atol=1e-4, rtol=1e-4)
    assert llmaccel.cpu_info()["variants"] == before and ext().cpu_isa() == cap
    with pytest.raises(ValueError, match="cpu_isa='sse' is not an ISA level; allowed values: generic, avx2, avxvnni, avx512"):
        cpu.set_cpu_isa("sse")
    missing = [lv for lv, f in ext().isa_levels().items() if not set(f) <= set(ext().cpu_features())]
    if missing:
        with pytest.raises(RuntimeError, match="this CPU lacks"):
            cpu.set_cpu_isa(missing[0])
    assert ext().cpu_isa() == cap


# --- 5. allocation failures reach Python as MemoryError --------------------------------------------------------

def _attention_bwd(q, k, v, out, lse, dout, variant, nthreads):
    import math

    grads = [torch.empty_like(t) for t in (q, k, v)]
    ext().attention_bwd(view(q), view(k), view(v), None, True, False, 1.0 / math.sqrt(q.shape[3]), view(out),
                        view(lse), view(dout), None, *[view(g) for g in grads], nthreads, variant)
    return grads


@pytest.mark.parametrize("variant", ext().attention_variants())
@pytest.mark.parametrize("nth", [1, 4])
def test_attention_scratch_failure_is_memory_error(variant, nth):
    """The forward and backward take their per-thread scratch before the parallel region, so a failed
    allocation (the first, or one after others succeeded) surfaces as MemoryError, not std::terminate."""
    from test_attention_cpp_kernel import run_kernel

    q, k, v = torch.randn(1, 4, 40, 32), torch.randn(1, 2, 70, 32), torch.randn(1, 2, 70, 32)
    dout = torch.randn(1, 4, 40, 32)
    try:
        ext()._fail_scratch_alloc_after(nth)
        with pytest.raises(MemoryError):
            run_kernel(q, k, v, is_causal=True, variant=variant, nthreads=3)
        ext()._fail_scratch_alloc_after(0)
        out, lse = run_kernel(q, k, v, is_causal=True, variant=variant, nthreads=3)
        ext()._fail_scratch_alloc_after(nth)
        with pytest.raises(MemoryError):
            _attention_bwd(q, k, v, out, lse, dout, variant, 3)
    finally:
        ext()._fail_scratch_alloc_after(0)
    # and the next calls work
    ref = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                                           is_causal=True)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    qr, kr, vr = (t.clone().requires_grad_(True) for t in (q, k, v))
    torch.nn.functional.scaled_dot_product_attention(qr, kr.repeat_interleave(2, 1), vr.repeat_interleave(2, 1),
                                                     is_causal=True).backward(dout)
    for ours, t in zip(_attention_bwd(q, k, v, out, lse, dout, variant, 3), (qr, kr, vr)):
        torch.testing.assert_close(ours, t.grad, atol=1e-4, rtol=1e-4)


def test_int8_mm_scratch_failure_is_memory_error():
    # A stride-0 B of K x N = 131071 x 2^40 must be transposed into 2^57 bytes of scratch: the allocation
    # fails (no address space is that large) before any parallel region starts.
    K, N = 131071, 1 << 40
    a = randint8(1, K)
    one = torch.zeros(1, dtype=torch.int8)
    c = torch.zeros(1, dtype=torch.int32)
    with pytest.raises(MemoryError):
        ext().int8_mm(view(a), (one.data_ptr(), "int8", (K, N), (0, 0)), (c.data_ptr(), "int32", (1, N), (0, 0)), 2,
                      "")


# What may throw or allocate (std::bad_alloc) in our C++: none of it may appear inside an OpenMP
# parallel region, because an exception leaving a region calls std::terminate (the process dies instead
# of raising MemoryError / ValueError).  A shallow lint: it reads the region bodies, not their callees;
# the kernels they call are loops over preallocated buffers.
_THROWING = re.compile(r"alloc_floats\(|scratch_alloc\(|alloc_bytes\(|aligned_alloc\(|malloc\(|std::vector<|"
                       r"\.resize\(|\.assign\(|push_back\(|emplace_back\(|\bnew\b|\bthrow\b|\bfail\(|"
                       r"fail_overflow\(|check_matrix\(|check_tensor\(|std::string|std::to_string|\.at\(")


def _omp_regions():
    for path in sorted((ROOT / "csrc").glob("*.[ch]*")):
        text = re.sub(r"//[^\n]*", "", path.read_text())
        for m in re.finditer(r"#pragma omp parallel[^\n]*\n", text):
            start = text.index("{", m.end())
            depth, i = 0, start
            while True:
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                if depth == 0:
                    break
                i += 1
            yield path.name, text.count("\n", 0, m.start()) + 1, text[start:i + 1]


def test_no_allocation_or_throw_inside_openmp_regions():
    regions = list(_omp_regions())
    assert len(regions) >= 9  # int8_mm (3), driver, weight-only, quantize, attention fwd + bwd, stream_read, sparse_nm
    bad = [(f, line, _THROWING.search(body).group(0)) for f, line, body in regions if _THROWING.search(body)]
    assert not bad, f"allocation or throw inside an OpenMP parallel region: {bad}"
