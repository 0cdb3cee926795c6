#include "cpu_features.h"

namespace llmaccel {

static CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  // __builtin_cpu_supports also checks that the OS saves the wider register
  // state (XGETBV), so a kernel that disabled AVX-512 reports false here.
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  f.avx512f = __builtin_cpu_supports("avx512f");
  f.avx512bw = __builtin_cpu_supports("avx512bw");
  f.avx512vl = __builtin_cpu_supports("avx512vl");
  f.avx512vnni = __builtin_cpu_supports("avx512vnni");
#endif
  return f;
}

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

std::vector<std::string> cpu_feature_names() {
  const CpuFeatures& f = cpu_features();
  std::vector<std::string> out;
  if (f.avx2) out.push_back("avx2");
  if (f.fma) out.push_back("fma");
  if (f.avx512f) out.push_back("avx512f");
  if (f.avx512bw) out.push_back("avx512bw");
  if (f.avx512vl) out.push_back("avx512vl");
  if (f.avx512vnni) out.push_back("avx512vnni");
  return out;
}

}  // namespace llmaccel
