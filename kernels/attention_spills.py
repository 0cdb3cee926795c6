"""Which attention autotune configs ptxas spills registers for, per GPU generation and head dim.

Measured, not modelled: ``tests/test_triton_compile.py`` compiles every config for sm_80 and sm_90
at head dims 64 and 128 (bf16 and fp16 alike, Triton 3.9's ptxas) and fails on any spill a kernel's
autotuner would still try. The entries below are the compiles that spilled (8-184 bytes of stack
per thread); the autotuners drop them there, and each kernel carries a replacement that compiled
clean (e.g. dQ 64 x 64 on 8 warps instead of 4 on Ampere). A spill is not fatal, just slow, so a
GPU generation or head dim without measurements keeps every config.

Keys: ``(generation, head-dim bucket, BLOCK_M, BLOCK_N, num_warps, num_stages)``; generation 8 is
Ampere / Ada (sm_8x, ``mma.sync``), 9 is Hopper and later (``wgmma``); the bucket is 64 for
BLOCK_D <= 64 and 128 above.
"""

FWD = {  # _attn_fwd_kernel (the split-KV decode tiles)
    (9, 128, 16, 64, 4, 2),   # 24 B
    (8, 64, 16, 32, 4, 3),    # 8 B
}
DQ = {  # _attn_bwd_dq_kernel on Ampere: the 255-register cap at 64 x 64 / 4 warps and 128 x 64 / 8
    (8, 64, 64, 64, 4, 2), (8, 128, 64, 64, 4, 2),      # 8 B
    (8, 64, 128, 64, 8, 2), (8, 128, 128, 64, 8, 2),    # 8 B, 184 B
    (8, 128, 128, 32, 8, 2),                            # 8 B (one stage fewer compiles clean)
}
DKDV = {  # _attn_bwd_dkdv_kernel
    (9, 64, 32, 32, 4, 2),    # 8 B
    (8, 128, 32, 32, 4, 1),   # 8 B (the single-stage replacement is for head dim 64)
}


def generation(major: int) -> int:
    return 9 if major >= 9 else 8


def bucket(block_d: int) -> int:
    return 64 if block_d <= 64 else 128


def fits(table: set, kwargs: dict, num_warps: int, num_stages: int, major: int, block_d: int) -> bool:
    """False when ``table`` records a spill for this config on this GPU generation and head dim."""
    key = (generation(major), bucket(block_d), kwargs["BLOCK_M"], kwargs["BLOCK_N"], num_warps, num_stages)
    return key not in table


def launch_major(named_args: dict, kwargs: dict) -> int:
    """Compute-capability major of the launch's GPU; ``GPU_MAJOR`` in kwargs overrides it (the compile
    sweep in tests/triton_resources.py asks for sm_80 and sm_90 on a machine without a GPU)."""
    if "GPU_MAJOR" in kwargs:
        return kwargs["GPU_MAJOR"]
    import torch

    return torch.cuda.get_device_capability(named_args["q_ptr"].device)[0]


def archs(table: set, kwargs: dict, num_warps: int, num_stages: int) -> tuple:
    """The architectures (80, 90) whose autotuner tries this config at some head dim."""
    return tuple(a for a in (80, 90)
                 if any(fits(table, kwargs, num_warps, num_stages, a // 10, d) for d in (64, 128)))
