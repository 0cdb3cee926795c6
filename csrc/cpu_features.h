// Run-time CPU feature detection: CPUID for what the CPU implements, XGETBV
// for what the operating system saves on a context switch (a CPU with
// AVX-512 under an OS that does not save zmm state must not run AVX-512
// code), and on Linux the AMX tile-data permission.
//
// The list is every feature some variant's compile flags can ask for:
// setup.py's ISA_FLAGS maps "-mavx512vnni" -> "avx512vnni", "-mamx-tile" ->
// "amx_tile" (drop "-m", "-" -> "_"), and a variant only runs where each of
// its unit's features is detected here (isa.h).  A flag with no entry here
// makes its level unusable, never silently allowed.
#pragma once

#include <string>
#include <vector>

namespace llmaccel {

enum class CpuFeature : int {
  avx,
  avx2,
  fma,
  f16c,
  avx512f,
  avx512bw,
  avx512vl,
  avx512dq,
  avx512vnni,
  avx512vbmi,
  avxvnni,
  avx512bf16,
  amx_tile,
  amx_int8,
  amx_bf16,
  kCount
};

// "avx512vnni" for CpuFeature::avx512vnni (the setup.py spelling).
const char* cpu_feature_name(CpuFeature f);

// Whether the CPU implements the feature and the OS enabled its state.
bool cpu_has(CpuFeature f);

// Looks a feature up by name; returns false if the name is unknown (and sets *known = false).
bool cpu_has(const std::string& name, bool* known);

// Whether CPUID's vendor string is "AuthenticAMD".  Not a feature gate: only tuning that was measured to
// differ between vendors reads it (int8_linear_wo_avx512vnni.cpp).
bool cpu_vendor_is_amd();

// Names of every known feature, and of the detected ones (llmaccel.cpu_info()).
std::vector<std::string> cpu_feature_names_all();
std::vector<std::string> cpu_feature_names();

}  // namespace llmaccel
