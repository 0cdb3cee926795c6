// How much DRAM read bandwidth a decode kernel's walk can draw, by how many weight rows it reads side by
// side.  Two threads each read their half of 512 MB of rows (ROW bytes each) S rows at a time in 256-byte
// steps, the S rows adjacent (row g*S + s) or spread over the thread's half (row s*G + g); the best of
// three passes in GB/s.  No compute: the ceiling of each walk.  Build and run (see bench/RESULTS.md,
// fourteenth session):
//   g++ -O2 -fopenmp -mavx2 bench/read_streams_probe.cpp -o /tmp/probe && /tmp/probe
// (AVX2 loads, so it runs on every x86 server this project targets: the walk matters, not the width.)
// On the 2-core Sapphire Rapids class VM, with 512-bit loads (the build the fourteenth session's figures in
// bench/RESULTS.md come from): one row at a time 15-16 GB/s, 4 adjacent rows 20-26, 8 rows 22-30; with this
// file's 256-bit loads, two runs: 8.9-11.9, 16.8-18.2, 18.4-19.7 GB/s.  Either way several rows side by side
// draw ~1.5x one, which is why the AVX-512 decode GEMVs (int8_linear_wo_gemv.h, sparse_nm_half_tile.h) walk
// 4 rows in lockstep.  (Whole rows in turn, 8 KiB each, stay at 16-19 GB/s, and a software prefetch of rows ahead of
// a one-row walk does not help.)
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>

static float run(const float* buf, size_t n, size_t R, int S, bool spread) {
  float tot = 0;
#pragma omp parallel num_threads(2) reduction(+ : tot)
  {
    const int t = omp_get_thread_num();
    const size_t rows = n / R / 2, r0 = t * rows, groups = rows / S;
    __m256 acc[4];
    for (int i = 0; i < 4; ++i) acc[i] = _mm256_setzero_ps();
    for (size_t g = 0; g < groups; ++g) {
      const float* p[8];
      for (int s = 0; s < S; ++s) p[s] = buf + (r0 + (spread ? s * groups + g : g * S + s)) * R;
      for (size_t j = 0; j < R; j += 64)
        for (int s = 0; s < S; ++s)
          for (int q = 0; q < 8; ++q) acc[q & 3] = _mm256_add_ps(acc[q & 3], _mm256_load_ps(p[s] + j + 8 * q));
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (float l : lanes) tot += l;
  }
  return tot;
}

int main() {
  const size_t n = (512ull << 20) / 4;
  float* buf = static_cast<float*>(aligned_alloc(2 << 20, n * 4));
  for (size_t i = 0; i < n; ++i) buf[i] = 1e-9f * (i & 1023);  // touched: no zero pages
  for (size_t R : {2048ul, 4096ul})
    for (int S : {1, 2, 4, 8})
      for (int spread : {0, 1}) {
        if (S == 1 && spread) continue;
        double best = 1e9;
        for (int r = 0; r < 3; ++r) {
          const auto t0 = std::chrono::steady_clock::now();
          volatile float sink = run(buf, n, R, S, spread);
          (void)sink;
          best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        }
        std::printf("rows of %5zu B, %d at a time, %s: %.1f GB/s\n", R * 4, S, spread ? "spread  " : "adjacent",
                    n * 4 / best / 1e9);
      }
}
