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
import os

import torch

from . import _ext


@functools.lru_cache(maxsize=1)
def huge_page_bytes() -> int:
    """Transparent huge page size in bytes, 0 if unavailable or opted out."""
    if os.environ.get("LLMACCEL_HUGE_PAGES", "1") == "0" or _ext.load_error():
        return 0
    return int(_ext.ext().huge_page_bytes())


def streamed_buffer(nbytes: int) -> torch.Tensor:
    """Uninitialized int8 CPU tensor of ``nbytes``, backed by huge pages where the OS allows.

    Only worth it for buffers of at least one huge page that are written once
    and read many times; smaller requests get a plain ``torch.empty``.
    """
    page = huge_page_bytes()
    if page == 0 or nbytes < page:
        return torch.empty(nbytes, dtype=torch.int8)
    raw = torch.empty(nbytes + page, dtype=torch.int8)
    offset = (-raw.data_ptr()) % page
    view = raw[offset:offset + nbytes]
    # Whole huge pages inside the view; the tail (< 1 page) stays on 4 KiB pages.
    _ext.ext().advise_huge_pages(view.data_ptr(), nbytes // page * page)
    return view

