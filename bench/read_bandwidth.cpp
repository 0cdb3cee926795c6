// The fastest sequential DRAM read this machine sustains: the ceiling for any
// memory-bound decode kernel (int8_linear M=1 reads each weight byte once).
//
//   g++ -O2 -mavx512f -fopenmp bench/read_bandwidth.cpp -o /tmp/read_bw && /tmp/read_bw
//
// Two buffers of 256 MB (7x the LLC) are read alternately so no pass starts
// from cache; each thread streams a contiguous half with 64-byte AVX-512
// loads into four independent accumulators (no dependency stalls), with and
// without 2 MiB transparent huge pages, for several software-prefetch
// distances.  Reports the median of 9 passes for every configuration and the
// best of those.  Needs AVX-512F (the machine the int8 benchmarks run on).
#include <immintrin.h>
#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

constexpr size_t kBytes = size_t(256) << 20;
constexpr size_t kHuge = size_t(2) << 20;

int64_t read_pass(const int8_t* b, size_t n, size_t prefetch) {
  int64_t total = 0;
#pragma omp parallel reduction(+ : total)
  {
    const size_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const size_t lo = n / nt * t, hi = t + 1 == nt ? n : lo + n / nt;
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = lo; i + 256 <= hi; i += 256) {
      if (prefetch)
        for (int l = 0; l < 4; ++l) _mm_prefetch(reinterpret_cast<const char*>(b + i + prefetch + 64 * l), _MM_HINT_T0);
      a0 = _mm512_add_epi32(a0, _mm512_load_si512(b + i));
      a1 = _mm512_add_epi32(a1, _mm512_load_si512(b + i + 64));
      a2 = _mm512_add_epi32(a2, _mm512_load_si512(b + i + 128));
      a3 = _mm512_add_epi32(a3, _mm512_load_si512(b + i + 192));
    }
    total += _mm512_reduce_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)));
  }
  return total;  // returned so the loads cannot be optimized away
}

}  // namespace

int main() {
  double best = 0;
  for (int huge = 0; huge <= 1; ++huge) {
    int8_t* buf[2];
    for (auto& p : buf) {
      p = static_cast<int8_t*>(std::aligned_alloc(kHuge, kBytes));
      if (!p) return 1;
      if (huge) madvise(p, kBytes, MADV_HUGEPAGE);
      std::memset(p, 1, kBytes);  // fault every page in before timing
    }
    for (size_t prefetch : {size_t(0), size_t(1024), size_t(4096), size_t(16384)}) {
      std::vector<double> gbs;
      int64_t check = 0;
      for (int rep = 0; rep < 9; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        check += read_pass(buf[rep % 2], kBytes, prefetch);
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        gbs.push_back(kBytes / s / 1e9);
      }
      std::sort(gbs.begin(), gbs.end());
      std::printf("%-10s prefetch %5zu B: median %5.1f GB/s (max %5.1f)  [%lld]\n", huge ? "huge pages" : "4 KiB pages",
                  prefetch, gbs[4], gbs.back(), static_cast<long long>(check));
      best = std::max(best, gbs[4]);
    }
    for (auto p : buf) std::free(p);
  }
  std::printf("best median read bandwidth: %.1f GB/s with %d threads\n", best, omp_get_max_threads());
}
