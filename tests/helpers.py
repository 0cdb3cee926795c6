"""Test helpers: exact references and backend enumeration."""

import logging
import os

import pytest
import torch

import llmaccel

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# The ASan/UBSan pass (scripts/sanitize.sh): the C++ kernels run several times slower there.
SANITIZED = os.environ.get("LLMACCEL_SANITIZED") == "1"


def rotate_in_interpreter(options, i):
    """All of ``options`` on real hardware; in Triton's interpreter (CI's slowest pass) only ``options[i % n]``:
    a loop over cases that passes its case number still covers every option, once every n cases."""
    options = tuple(options)
    return options if not INTERPRET else (options[i % len(options)],)


def rotate_in_slow_pass(options, i):
    """All of ``options`` in the default pass; in the Triton-interpreter and sanitizer passes only
    ``options[i % n]`` (the same covering rotation as :func:`rotate_in_interpreter`)."""
    options = tuple(options)
    return options if not (INTERPRET or SANITIZED) else (options[i % len(options)],)


def randint8(*shape, device="cpu"):
    """Uniform int8 in [-128, 127]: every bit pattern, never all zeros."""
    return torch.randint(-128, 128, shape, dtype=torch.int8, device=device)


def int8_mm_exact(a, b):
    """Exact integer reference on the CPU: int64 accumulation, then int32."""
    return (a.cpu().long() @ b.cpu().long()).to(torch.int32)


def cpu_backends():
    """(label, callable) for every path that can run int8_mm on CPU tensors here.

    Every C++ ISA variant this CPU supports is its own entry, so the AVX2 and
    generic kernels are checked on an AVX-512 machine too.
    """
    from llmaccel.ops.int8_mm import int8_mm_cpp

    paths = []
    for variant in llmaccel.cpu_info()["available_variants"].get("int8_mm", []):
        paths.append((f"cpp:{variant}", lambda a, b, v=variant: int8_mm_cpp(a, b, v)))

    def via(backend):
        def run(a, b):
            with llmaccel.backends.use(backend):
                return llmaccel.int8_mm(a, b)

        return run

    paths.append(("cpp:auto", via("cpp")))
    paths.append(("torch", via("torch")))
    if INTERPRET:
        paths.append(("triton-interpret", via("triton")))
    return paths


@pytest.fixture
def quiet_fallback_log():
    """Silences the dispatcher's one-time fallback log (act='weight_only' on CPU falls back to torch)."""
    logger = logging.getLogger("llmaccel")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def sqnr(out, ref) -> float:
    """Signal-to-quantization-noise ratio in dB of out against ref (float64)."""
    out, ref = out.detach().double(), ref.detach().double()
    return 10 * torch.log10(ref.pow(2).sum() / (out - ref).pow(2).sum()).item()


def _gloo_rank(rank, fn, init_file, world, args):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def spawn_gloo(fn, world, tmp_path, *args):
    """Run ``fn(rank, *args)`` in ``world`` CPU processes joined in one gloo group (file rendezvous in
    ``tmp_path``), one thread each; raises when a rank raises.  ``fn`` must be a module-level function."""
    import torch.multiprocessing as mp

    mp.spawn(_gloo_rank, args=(fn, str(tmp_path / "init"), world, args), nprocs=world, join=True)


def strided_x_cases(K: int, rows: int = 9) -> dict:
    """x operands [..., K] of a linear kernel with every layout a wrapper must take: a row stride > K (used
    in place), a column stride 2 (copied), one strided row, 3-D / transposed / 4-D batches, a transposed
    matrix and stride-0 rows.  Never zeros: randn."""
    big = torch.randn(rows, 2 * K + 8)
    return {
        "row stride > K": big[:, 3:3 + K],
        "column stride 2": big[:, 1:1 + 2 * K:2],
        "one strided row": big[rows // 2, 5:5 + K],
        "3-D batch": torch.randn(2, 3, K),
        "transposed batch": torch.randn(3, 2, K).transpose(0, 1),
        "transposed matrix": torch.randn(K, 7).t(),
        "expanded (stride 0)": torch.randn(1, K).expand(4, K),
        "4-D": torch.randn(2, 1, 3, K),
    }


def variant_params(family):
    """pytest params for every C++ variant of ``family`` the build has (whether or not this CPU runs it)."""
    from llmaccel._ext import ext

    return [pytest.param(r["variant"], id=r["variant"]) for r in ext().variant_table() if r["family"] == family]


def require_variant(family, variant):
    """``variant`` if this CPU (and the LLMACCEL_CPU_ISA cap) runs it; else the test is skipped."""
    available = llmaccel.cpu_info()["available_variants"][family]
    if variant not in available:
        pytest.skip(f"variant {variant} does not run here (the CPU or LLMACCEL_CPU_ISA; available: {available})")
    return variant


def int8_linear_backends(*args, **kw):
    """Every backend that would run ``llmaccel.int8_linear(*args, **kw)`` when requested (torch always; Triton
    in the interpreter; the C++ one where its limits allow)."""
    from llmaccel import backends

    names = []
    for name in backends.BACKENDS:
        with backends.use(name):
            if backends.explain("int8_linear", *args, **kw).backend == name:
                names.append(name)
    assert "torch" in names
    if INTERPRET:
        assert "triton" in names
    return names


def int8_linear_on(name, *args, **kw):
    """``llmaccel.int8_linear(*args, **kw)`` on backend ``name``."""
    from llmaccel import backends

    with backends.use(name):
        return llmaccel.int8_linear(*args, **kw)
