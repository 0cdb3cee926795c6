// Packed int8 weights (int8_mm_pack_b): the 64-byte header that records
// their layout, and the check every kernel that reads them runs first.
#include "int8_packed.h"

#include <omp.h>
#if defined(__SSE2__)
#include <emmintrin.h>  // SSE2 (baseline x86-64): the AMX tile transpose
#include <xmmintrin.h>
#endif

#include <algorithm>
#include <cstring>

#include "common.h"

namespace llmaccel {

// Bytes of the panels alone (the column sums follow them).
int64_t packed_panel_bytes(const Int8MMLayout& L, int64_t N, int64_t K) {
  int64_t bytes = 0;
  if (__builtin_mul_overflow(ceil_div(N, L.nr) * L.nr, round_up(K, L.kalign), &bytes))
    fail_overflow("int8_mm_pack_b", "packed size overflows int64");
  return round_up(bytes, 64);
}

namespace {

// The first 64 bytes of every packed weight: which variant's layout follows
// (its register tile width and K alignment), for which shape, in which
// version of the format.  int8_linear_dynamic checks it, so a buffer packed
// for another variant (e.g. before LLMACCEL_CPU_ISA or set_cpu_isa changed
// the choice) or a weight of another shape raises instead of being read as
// garbage.
struct PackedHeader {
  char magic[8];  // kPackedMagic
  uint32_t version;
  uint32_t nr, kalign;
  uint32_t flags;  // 1: AMX B tiles (Int8MMLayout::amx_tiles)
  int64_t n, k;
  char variant[24];  // NUL terminated
};
static_assert(sizeof(PackedHeader) == 64, "the panels start 64 bytes in");
constexpr char kPackedMagic[8] = {'L', 'L', 'M', 'A', 'P', 'A', 'C', 'K'};
constexpr uint32_t kPackedVersion = 1;

PackedHeader make_header(const Variant& v, int64_t N, int64_t K) {
  PackedHeader h{};
  std::memcpy(h.magic, kPackedMagic, sizeof(kPackedMagic));
  const Int8MMLayout L = v.kernels.int8_mm_layout();
  h.version = kPackedVersion;
  h.nr = static_cast<uint32_t>(L.nr);
  h.kalign = static_cast<uint32_t>(L.kalign);
  h.flags = L.amx_tiles ? 1u : 0u;
  h.n = N;
  h.k = K;
  std::strncpy(h.variant, v.name, sizeof(h.variant) - 1);
  return h;
}

std::string describe(const PackedHeader& h) {
  return "variant '" + std::string(h.variant, strnlen(h.variant, sizeof(h.variant))) + "' (layout " +
         std::to_string(h.nr) + " x " + std::to_string(h.kalign) + (h.flags & 1 ? ", AMX tiles" : "") + ", format " + std::to_string(h.version) +
         "), N = " + std::to_string(h.n) + ", K = " + std::to_string(h.k);
}

}  // namespace

PackedPanels open_packed(const char* op, const int8_t* w_packed, const Variant& v, int64_t N, int64_t K) {
  PackedHeader got;
  std::memcpy(&got, w_packed, sizeof(got));
  if (std::memcmp(got.magic, kPackedMagic, sizeof(kPackedMagic)) != 0)
    fail(op, "w_packed is not a packed weight (no header; it must come from int8_mm_pack_b)");
  const PackedHeader want = make_header(v, N, K);
  if (std::memcmp(&got, &want, sizeof(got)) != 0)
    fail(op, "w_packed holds " + describe(got) + ", but this call runs " + describe(want) +
                 "; repack the weight with int8_mm_pack_b");
  const int8_t* panels = w_packed + sizeof(PackedHeader);
  return {panels, reinterpret_cast<const int32_t*>(panels + packed_panel_bytes(v.kernels.int8_mm_layout(), N, K))};
}

namespace {

#if defined(__SSE2__)
// A 4 x 4 block of 4-byte words transposed: dst word [t][c] = src word [c][t], src rows lds bytes apart,
// dst rows ldd bytes apart.
inline void transpose_words_4x4(const int8_t* src, int64_t lds, int8_t* dst, int64_t ldd) {
  __m128 r0 = _mm_castsi128_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
  __m128 r1 = _mm_castsi128_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + lds)));
  __m128 r2 = _mm_castsi128_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * lds)));
  __m128 r3 = _mm_castsi128_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 3 * lds)));
  _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm_castps_si128(r0));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + ldd), _mm_castps_si128(r1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 2 * ldd), _mm_castps_si128(r2));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 3 * ldd), _mm_castps_si128(r3));
}

// The same for a 16 x 16 matrix of words: src row c at src + c * lds bytes, dst rows 64 bytes apart (one AMX
// B tile), in 4 x 4 blocks of SSE2 shuffles (baseline x86-64).
void transpose_words_16x16(const int8_t* src, int64_t lds, int8_t* dst) {
  for (int cb = 0; cb < 16; cb += 4)
    for (int tb = 0; tb < 16; tb += 4) transpose_words_4x4(src + cb * lds + 4 * tb, lds, dst + tb * 64 + 4 * cb, 64);
}
#endif

// One group of the 4-byte-chunk layout (KA = 4, the outer-product tiles'):
//   dst[j * NR * 4 + c * 4 + k % 4] = w[(n0 + c) * ldw + 4 * j + k % 4],  zero outside N and K.
// Row j of the group is one 4-byte quad of each of its NR columns, i.e. the group is the word-transpose of
// its NR weight rows.  Whole 4 x 4 word blocks go through SSE2 (baseline x86-64) transposes: on a Zen 4 VM a
// 4096 x 4096 weight took ~19 ms to pack quad by quad (a libc memcpy of 4 bytes each), the time of the whole
// 512-row GEMM after it.
void pack_quad_group(const int8_t* w, int64_t ldw, int64_t n0, int64_t N, int64_t K, int64_t NR, int64_t Kp,
                     int8_t* dst) {
  const int64_t cols = std::min<int64_t>(NR, N - n0), nq = Kp / 4;
  int64_t c4 = 0, j4 = 0;  // columns [0, c4) x quads [0, j4) are covered by whole blocks
#if defined(__SSE2__)
  c4 = cols & ~int64_t(3);
  j4 = (K / 4) & ~int64_t(3);
  if (c4 > 0)
    for (int64_t j = 0; j < j4; j += 4)
      for (int64_t c = 0; c < c4; c += 4)
        transpose_words_4x4(w + (n0 + c) * ldw + 4 * j, ldw, dst + j * NR * 4 + c * 4, NR * 4);
#endif
  for (int64_t j = 0; j < nq; ++j) {
    for (int64_t c = j < j4 ? c4 : 0; c < NR; ++c) {
      int8_t quad[4] = {0, 0, 0, 0};
      if (c < cols) {
        const int8_t* src = w + (n0 + c) * ldw + 4 * j;
        const int64_t len = std::min<int64_t>(4, K - 4 * j);
        for (int64_t i = 0; i < len; ++i) quad[i] = src[i];
      }
      std::memcpy(dst + j * NR * 4 + c * 4, quad, 4);
    }
  }
}

}  // namespace

void pack_panels(const Int8MMLayout& L, int64_t N, int64_t K, const int8_t* w, int64_t ldw, int8_t* out,
                 int nthreads) {
  const int64_t NR = L.nr, KA = L.kalign, Kp = round_up(K, KA), ngroups = ceil_div(N, NR);
  // Layout: group g = n / NR, chunk j = k / KA, column c = n % NR ->
  //   out[g * NR * Kp + j * NR * KA + c * KA + k % KA]; padding is zero.
  // With L.amx_tiles (KA = 64, NR a multiple of 16) the chunk's columns form
  // AMX B tiles instead:
  //   out[g * NR * Kp + j * NR * KA + (c / 16) * 1024 + ((k % KA) / 4) * 64 + (c % 16) * 4 + k % 4].
  if (KA == 4 && !L.amx_tiles) {
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t g = 0; g < ngroups; ++g) pack_quad_group(w, ldw, g * NR, N, K, NR, Kp, out + g * NR * Kp);
    return;
  }
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t g = 0; g < ngroups; ++g) {
    for (int64_t j = 0; j < Kp / KA; ++j) {
      for (int64_t c = 0; c < NR; ++c) {
        const int64_t n = g * NR + c;
        const int64_t len = n < N ? std::min<int64_t>(KA, std::max<int64_t>(K - j * KA, 0)) : 0;
#if defined(__SSE2__)
        if (L.amx_tiles && c % 16 == 0 && len == KA && n + 15 < N) {
          // A whole tile (16 columns, all 64 bytes in K): a 16 x 16 transpose of 4-byte words, in 4 x 4
          // blocks of SSE2 shuffles (baseline x86-64), instead of 256 single-word moves.
          int8_t* d = out + g * NR * Kp + j * NR * KA + (c / 16) * 16 * KA;
          transpose_words_16x16(w + n * ldw + j * KA, ldw, d);
          c += 15;  // the loop's ++c moves to the next tile
          continue;
        }
#endif
        if (L.amx_tiles) {
          // Column c of the chunk: tile c / 16, bytes k .. k + 3 of the chunk (k % 4 == 0) at tile row k / 4,
          // lanes (c % 16) * 4 .. + 3: one 4-byte move per tile row.
          int8_t* d = out + g * NR * Kp + j * NR * KA + (c / 16) * 16 * KA + (c % 16) * 4;
          const int8_t* src = w + n * ldw + j * KA;
          for (int64_t k = 0; k < KA; k += 4) {
            int8_t quad[4] = {0, 0, 0, 0};
            if (k + 4 <= len)
              std::memcpy(quad, src + k, 4);
            else
              for (int64_t i = k; i < len; ++i) quad[i - k] = src[i];
            std::memcpy(d + (k / 4) * 64, quad, 4);
          }
          continue;
        }
        int8_t* d = out + g * NR * Kp + j * NR * KA + c * KA;
        if (len > 0) std::memcpy(d, w + n * ldw + j * KA, len);
        std::memset(d + len, 0, KA - len);
      }
    }
  }
}

int64_t int8_mm_packed_size(const std::string& variant, int64_t N, int64_t K) {
  if (N < 0 || K < 0) fail("int8_mm_pack_b", "negative size");
  const Int8MMLayout L = pick(Family::int8_mm, "int8_mm_pack_b", variant).kernels.int8_mm_layout();
  return int64_t(sizeof(PackedHeader)) + packed_panel_bytes(L, N, K) + 4 * N;
}

void int8_mm_pack_b(const std::string& variant, int64_t N, int64_t K, const int8_t* w, int64_t ldw, int8_t* out_buf,
                    int nthreads) {
  const char* op = "int8_mm_pack_b";
  check_matrix(op, "w", w, N, K, ldw, 1);
  const int64_t bytes = int8_mm_packed_size(variant, N, K);
  if (bytes > 0 && out_buf == nullptr) fail(op, "out is a null pointer");
  if (nthreads < 1) fail(op, "nthreads must be >= 1");
  const Variant& v = pick(Family::int8_mm, op, variant);
  const PackedHeader header = make_header(v, N, K);
  std::memcpy(out_buf, &header, sizeof(header));
  int8_t* out = out_buf + sizeof(PackedHeader);
  const Int8MMLayout L = v.kernels.int8_mm_layout();
  pack_panels(L, N, K, w, ldw, out, nthreads);
  int32_t* colsum = reinterpret_cast<int32_t*>(out + packed_panel_bytes(L, N, K));
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    int32_t s = 0;
    for (int64_t k = 0; k < K; ++k) s += w[n * ldw + k];
    colsum[n] = s;
  }
}

}  // namespace llmaccel
