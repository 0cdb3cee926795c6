"""Helpers shared by the Triton GEMM kernels."""

import triton
import triton.language as tl


@triton.jit
def grouped_tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of this program with "grouped" ordering for L2 reuse.

    Consecutive programs walk GROUP_M tile rows down one tile column before
    moving right, so a group of programs running together shares GROUP_M
    A tiles and one B column block instead of one A row and every B column.
    """
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def gemm_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """This program's output tile of an M x N GEMM, in grouped order:
    ``(offs_m, offs_n, offs_k0, mask_m, mask_n)``.

    Offsets are int64 so that ``offset * stride`` cannot overflow for huge or
    transposed operands; ``offs_k0`` is the first K tile's offsets (add
    ``k * BLOCK_K``); the masks mark the rows / columns inside M / N.
    """
    pid_m, pid_n = grouped_tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    offs_k0 = tl.arange(0, BLOCK_K).to(tl.int64)
    return offs_m, offs_n, offs_k0, offs_m < M, offs_n < N
