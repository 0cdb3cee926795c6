// Why huge pages: a decode step streams every int8 weight once from DRAM
// (16 MB per 4096 x 4096 layer).  With 4 KiB pages that is 4096 TLB misses
// per layer, each a page walk on the critical path of the stream, and the
// hardware prefetchers stop at every 4 KiB boundary.  2 MiB pages remove
// both; on the 2-core Zen 4 VM this lifts the M=1 weight stream from ~27 to
// ~31 GB/s (same kernel, same run).  Packed weights are allocated once and
// kept, so the advice costs nothing per call.
#include "memory.h"

#include <omp.h>

#include <atomic>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>

#include "common.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace llmaccel {

namespace {
constexpr const char* kThpEnabled = "/sys/kernel/mm/transparent_hugepage/enabled";
std::atomic<int64_t> g_fail_countdown{0};
}  // namespace

void fail_scratch_alloc_after(int64_t n) { g_fail_countdown.store(n < 0 ? 0 : n); }

void* scratch_alloc(int64_t bytes) {
  int64_t left = g_fail_countdown.load();
  while (left > 0 && !g_fail_countdown.compare_exchange_weak(left, left - 1)) {
  }
  if (left == 1) throw std::bad_alloc();
  if (bytes < 0 || bytes > (int64_t{1} << 62)) throw std::bad_alloc();
  const size_t n = static_cast<size_t>(round_up(std::max<int64_t>(bytes, 64), 64));
  void* p = std::aligned_alloc(64, n);
  if (!p) throw std::bad_alloc();
  return p;
}

std::string transparent_huge_pages_mode() {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  // The file reads like "always [madvise] never": the bracketed word is active.
  FILE* f = std::fopen(kThpEnabled, "r");
  if (!f) return "unsupported";
  char buf[128] = {};
  const size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  const char* open = std::strchr(buf, '[');
  const char* close = open ? std::strchr(open, ']') : nullptr;
  if (!open || !close) return "unsupported";
  return std::string(open + 1, close);
#else
  return "unsupported";
#endif
}

int64_t huge_page_bytes() {
  const std::string mode = transparent_huge_pages_mode();
  if (mode == "unsupported") return 0;
  int64_t bytes = 2 << 20;
  if (FILE* f = std::fopen("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size", "r")) {
    long long v = 0;
    if (std::fscanf(f, "%lld", &v) == 1 && v > 0) bytes = v;
    std::fclose(f);
  }
  return bytes;
}

uint64_t stream_read(const void* addr, int64_t nbytes, int nthreads) {
  const char* op = "stream_read";
  if (nbytes < 0) fail(op, "nbytes must be >= 0, got " + std::to_string(nbytes));
  if (nthreads < 1) fail(op, "nthreads must be >= 1");
  if (nbytes > 0 && addr == nullptr) fail(op, "addr is a null pointer");
  const auto* base = static_cast<const unsigned char*>(addr);
  const int64_t words = nbytes / 8;
  uint64_t total = 0;
#pragma omp parallel num_threads(nthreads) reduction(+ : total)
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t lo = words / nt * t, hi = t + 1 == nt ? words : words / nt * (t + 1);
    // Eight independent sums: enough loads in flight, vectorized by -O3.
    uint64_t s[8] = {};
    int64_t i = lo;
    for (; i + 8 <= hi; i += 8)
      for (int j = 0; j < 8; ++j) {
        uint64_t v;
        std::memcpy(&v, base + 8 * (i + j), 8);
        s[j] += v;
      }
    for (; i < hi; ++i) {
      uint64_t v;
      std::memcpy(&v, base + 8 * i, 8);
      s[0] += v;
    }
    for (int j = 0; j < 8; ++j) total += s[j];
  }
  for (int64_t i = words * 8; i < nbytes; ++i) total += base[i];
  return total;
}

bool advise_huge_pages(void* addr, int64_t nbytes) {
  const char* op = "advise_huge_pages";
  if (nbytes < 0) fail(op, "nbytes must be >= 0, got " + std::to_string(nbytes));
  const int64_t page = huge_page_bytes();
  if (page == 0 || nbytes == 0) return false;
  if (addr == nullptr) fail(op, "addr is a null pointer");
  if (reinterpret_cast<uintptr_t>(addr) % static_cast<uintptr_t>(page) != 0 || nbytes % page != 0)
    fail(op, "addr and nbytes must be multiples of the huge page size (" + std::to_string(page) + " bytes)");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  return madvise(addr, static_cast<size_t>(nbytes), MADV_HUGEPAGE) == 0;
#else
  return false;
#endif
}

}  // namespace llmaccel
