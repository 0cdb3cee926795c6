"""Allocation of long-lived buffers that the C++ kernels stream (packed int8 weights).

A decode step reads every weight byte once from DRAM, so the speed of that
stream is the speed of the step.  With 4 KiB pages the stream takes a TLB
miss (a page walk) every 4 KiB and the hardware prefetchers stop at every
page boundary; with 2 MiB transparent huge pages neither happens.  On the
2-core Zen 4 VM the M=1 int8 weight stream rose from ~27 to ~31 GB/s (same
kernel, same run) when the packed weights moved to huge pages.

Linux hands out huge pages for an anonymous range only when the range is
2 MiB aligned and, under the common ``madvise`` policy, advised with
``MADV_HUGEPAGE``.  We over-allocate by one huge page, take the aligned
interior as a view (the storage lives as long as the view) and advise it
before the first write, so the first touch faults in huge pages.

Set ``LLMACCEL_HUGE_PAGES=0`` to opt out (benchmarks use it to measure the
difference).  Where THP is unavailable this is a plain ``torch.empty``.
"""

from __future__ import annotations

import functools
import math
import mmap
import os

import torch

from . import _ext


@functools.lru_cache(maxsize=1)
def huge_page_bytes() -> int:
    """Transparent huge page size in bytes, 0 if unavailable or opted out."""
    if os.environ.get("LLMACCEL_HUGE_PAGES", "1") == "0" or _ext.load_error():
        return 0
    return int(_ext.ext().huge_page_bytes())


def streamed_tensor(shape: tuple[int, ...], dtype: torch.dtype = torch.int8) -> torch.Tensor:
    """Uninitialized contiguous CPU tensor, backed by huge pages where the OS allows.

    Its storage is exactly the tensor's bytes (``numel * itemsize``), so it
    serializes like any tensor (``torch.save``, safetensors): the memory is an
    anonymous ``mmap`` one huge page larger than needed, of which the tensor
    takes the 2 MiB aligned interior (``torch.frombuffer`` with an offset; the
    storage keeps the map alive, and the untouched slack costs no RAM).
    Only worth it for buffers of at least one huge page that are written once
    and read many times; smaller requests get a plain ``torch.empty``.  Made
    with inference mode off, so modules may keep it as a normal tensor.
    """
    numel = math.prod(shape)
    nbytes = numel * dtype.itemsize
    page = huge_page_bytes()
    with torch.inference_mode(False):
        if page == 0 or nbytes < page:
            return torch.empty(shape, dtype=dtype)
        raw = mmap.mmap(-1, nbytes + page, flags=mmap.MAP_PRIVATE)  # private: THP covers private anonymous memory
        base = torch.frombuffer(raw, dtype=torch.uint8, count=1).data_ptr()
        t = torch.frombuffer(raw, dtype=dtype, count=numel, offset=(-base) % page).view(shape)
    # Whole huge pages; a tail below one page stays on 4 KiB pages.  Advised before the first write, so the
    # first touch faults in huge pages.
    _ext.ext().advise_huge_pages(t.data_ptr(), nbytes // page * page)
    return t


def streamed_buffer(nbytes: int) -> torch.Tensor:
    """Uninitialized int8 CPU tensor of ``nbytes`` bytes on huge pages where the OS allows (:func:`streamed_tensor`)."""
    return streamed_tensor((nbytes,), torch.int8)

