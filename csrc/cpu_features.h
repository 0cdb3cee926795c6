// Run-time CPU feature detection (CPUID via the compiler's builtins).  The
// extension is built for baseline x86-64; faster code lives in translation
// units compiled with their own -m flags and is only called when the running
// CPU reports the features here.
#pragma once

#include <string>
#include <vector>

namespace llmaccel {

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512vnni = false;
};

const CpuFeatures& cpu_features();

// Names of the detected features, for llmaccel.cpu_info().
std::vector<std::string> cpu_feature_names();

}  // namespace llmaccel
