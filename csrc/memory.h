// Page-level advice for long-lived, streamed buffers (packed int8 weights).
#pragma once

#include <cstdint>
#include <string>

namespace llmaccel {

// Size of a transparent huge page on this system (bytes; 2 MiB on x86-64),
// or 0 when the kernel has no transparent huge pages.
int64_t huge_page_bytes();

// The kernel's transparent-huge-page policy ("always", "madvise", "never"),
// or "unsupported" off Linux / without THP.
std::string transparent_huge_pages_mode();

// Asks the OS to back [addr, addr + nbytes) with transparent huge pages
// (madvise(MADV_HUGEPAGE)).  addr and nbytes must be multiples of
// huge_page_bytes().  Returns whether the advice was accepted; false (never
// an error) where THP is unavailable, since the advice is only a speed hint.
bool advise_huge_pages(void* addr, int64_t nbytes);

// Reads [addr, addr + nbytes) once, split into one contiguous range per
// thread, and returns the wrapping 64-bit sum of its 8-byte words (so the
// loads cannot be optimized away).  It does nothing else: its time is the
// machine's sequential read bandwidth for that buffer, the ceiling of any
// kernel that streams the same bytes (benchmarks time it beside decode).
uint64_t stream_read(const void* addr, int64_t nbytes, int nthreads);

// 64-byte aligned kernel scratch of at least `bytes` bytes (free with
// std::free); throws std::bad_alloc, which Python sees as MemoryError.
// Kernels take all their scratch from here BEFORE their OpenMP parallel
// region: an exception that leaves a parallel region calls std::terminate.
void* scratch_alloc(int64_t bytes);

// Test hook: the n-th scratch_alloc() from now (1 = the next one) fails with
// std::bad_alloc; 0 disarms.  Lets tests reach every allocation-failure path
// without exhausting memory.
void fail_scratch_alloc_after(int64_t n);

}  // namespace llmaccel
