// CPU ISA levels: the instruction sets the variant translation units are
// compiled for, what each needs from the CPU, and the LLMACCEL_CPU_ISA cap.
//
// setup.py's ISA_FLAGS is the single source of truth: it compiles every
// *_avx2.cpp / *_avxvnni.cpp / *_avx512vnni.cpp / *_avx512vbmi.cpp / *_amx.cpp with that level's -m flags and passes every
// unit the feature list of each level (LLMACCEL_ISA_FEATURES_<level>), so
// the gate below is derived from the very flags the code was built with.
#pragma once

#include <string>
#include <vector>

namespace llmaccel {

// Ascending: a level's units may only run where its features are present.
// avxvnni sits between avx2 and avx512: the AVX-512 CPUs before Sapphire Rapids / Zen 5 lack it, so a
// variant's own feature gate (not the order) decides where it runs.
enum class IsaLevel : int { generic = 0, avx2 = 1, avxvnni = 2, avx512 = 3, avx512vbmi = 4, amx = 5 };
constexpr int kNumIsaLevels = 6;

const char* isa_level_name(IsaLevel level);

// Features the level's units were compiled for ("avx2", "fma", ...).
const std::vector<std::string>& isa_level_features(IsaLevel level);

// Features of `level` this machine lacks (unknown names count as missing).
const std::vector<std::string>& isa_level_missing(IsaLevel level);

// The highest level variants may use: LLMACCEL_CPU_ISA (read once, when the
// extension loads) or set_cpu_isa(); by default the best the CPU supports.
// Throws the configuration error (bad value, or a level the CPU lacks) so
// that every kernel call reports it instead of silently running something
// else.
IsaLevel isa_cap();

// "" when uncapped, else the level name.
std::string isa_cap_name();

// Reads LLMACCEL_CPU_ISA; called once at extension load.  Never throws: a
// bad value is remembered and raised by isa_cap().
void isa_cap_from_env();

// Sets the cap for this process ("" = best the CPU supports): the per-call
// override for tests.  Throws std::invalid_argument for an unknown level and
// std::runtime_error for a level the CPU lacks (the cap is then unchanged).
void set_cpu_isa(const std::string& value);

}  // namespace llmaccel
