// Bare-loop rates of the three AVX2 int8 multiply-accumulate sequences, one
// core, registers only (no loads): the ceiling any AVX2 int8 GEMM built on
// each sequence can reach on this CPU.  Build and run (see bench/RESULTS.md):
//   g++ -O2 -mavx2 bench/avx2_int8_ceiling.cpp -o /tmp/ceiling && taskset -c 1 /tmp/ceiling
// * sign trick (ours, s8 x s8 exact for activations in [-127, 127]):
//     vpsignb + vpmaddubsw + vpmaddwd(ones) + vpaddd   = 32 MACs
// * u8 x s8 (fbgemm / torch.ao on AVX2: activations as unsigned bytes, which
//   is why torch.ao quantizes them to 7 bits, reduce_range, so a pair sum
//   cannot saturate int16):
//     vpmaddubsw + vpmaddwd(ones) + vpaddd             = 32 MACs
// * int16 (exact for any int8, -128 included):
//     vpmaddwd + vpaddd                                = 16 MACs
// Ten independent accumulators hide every latency; MACs per nanosecond of
// thread CPU time are printed (no clock-speed assumption).
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double cpu_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}
#define TEN(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9)

int main() {
  __m256i acc[10];
  for (int i = 0; i < 10; i++) acc[i] = _mm256_set1_epi32(i);
  const __m256i a = _mm256_set1_epi8(3), b = _mm256_set1_epi8(-5), u = _mm256_set1_epi8(5), ones = _mm256_set1_epi16(1);
  const long n = 100000000;
  double t = cpu_seconds();
  for (long i = 0; i < n; i++) {
#define SIGN(j)                                                                                         \
  {                                                                                                     \
    __m256i s;                                                                                          \
    asm volatile("vpsignb %[b], %[a], %[s]\n\tvpmaddubsw %[s], %[u], %[s]\n\tvpmaddwd %[o], %[s], %[s]\n\t" \
                 "vpaddd %[s], %[c], %[c]"                                                              \
                 : [c] "+x"(acc[j]), [s] "=&x"(s)                                                       \
                 : [a] "x"(a), [u] "x"(u), [b] "x"(b), [o] "x"(ones));                                  \
  }
    TEN(SIGN)
  }
  t = cpu_seconds() - t;
  printf("sign trick s8xs8 (4 ops / 32 MACs): %5.1f MAC/ns\n", n * 10 * 32 / t * 1e-9);
  t = cpu_seconds();
  for (long i = 0; i < n; i++) {
#define U8S8(j)                                                                                           \
  {                                                                                                       \
    __m256i s;                                                                                            \
    asm volatile("vpmaddubsw %[a], %[u], %[s]\n\tvpmaddwd %[o], %[s], %[s]\n\tvpaddd %[s], %[c], %[c]"    \
                 : [c] "+x"(acc[j]), [s] "=&x"(s)                                                         \
                 : [a] "x"(a), [u] "x"(u), [o] "x"(ones));                                                \
  }
    TEN(U8S8)
  }
  t = cpu_seconds() - t;
  printf("u8 x s8          (3 ops / 32 MACs): %5.1f MAC/ns\n", n * 10 * 32 / t * 1e-9);
  t = cpu_seconds();
  for (long i = 0; i < n; i++) {
#define I16(j)                                                                              \
  {                                                                                         \
    __m256i s;                                                                              \
    asm volatile("vpmaddwd %[a], %[u], %[s]\n\tvpaddd %[s], %[c], %[c]"                     \
                 : [c] "+x"(acc[j]), [s] "=&x"(s)                                           \
                 : [a] "x"(a), [u] "x"(u));                                                 \
  }
    TEN(I16)
  }
  t = cpu_seconds() - t;
  printf("int16            (2 ops / 16 MACs): %5.1f MAC/ns\n", n * 10 * 16 / t * 1e-9);
  int sink = 0;
  for (int i = 0; i < 10; i++) sink += _mm256_extract_epi32(acc[i], 0);
  return sink == 42;  // keeps the loops live
}
