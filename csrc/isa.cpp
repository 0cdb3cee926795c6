// ISA levels and the LLMACCEL_CPU_ISA cap (see isa.h).
#include "isa.h"

#include <atomic>
#include <cctype>
#include <cstdlib>
#include <mutex>
#include <stdexcept>

#include "cpu_features.h"

#if !defined(LLMACCEL_ISA_FEATURES_avx2) || !defined(LLMACCEL_ISA_FEATURES_avxvnni) || \
    !defined(LLMACCEL_ISA_FEATURES_avx512) || \
    !defined(LLMACCEL_ISA_FEATURES_avx512vbmi) || !defined(LLMACCEL_ISA_FEATURES_amx)
#error "setup.py passes LLMACCEL_ISA_FEATURES_<level> for every level in ISA_FLAGS; build through setup.py"
#endif

namespace llmaccel {

namespace {

constexpr const char* kEnv = "LLMACCEL_CPU_ISA";
const char* const kLevelNames[kNumIsaLevels] = {"generic", "avx2", "avxvnni", "avx512", "avx512vbmi", "amx"};
const char* const kLevelFeatures[kNumIsaLevels] = {"", LLMACCEL_ISA_FEATURES_avx2, LLMACCEL_ISA_FEATURES_avxvnni,
                                                    LLMACCEL_ISA_FEATURES_avx512,
                                                    LLMACCEL_ISA_FEATURES_avx512vbmi, LLMACCEL_ISA_FEATURES_amx};

std::vector<std::string> split(const char* csv) {
  std::vector<std::string> out;
  std::string cur;
  for (const char* c = csv;; ++c) {
    if (*c == ',' || *c == '\0') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
      if (*c == '\0') break;
    } else {
      cur += *c;
    }
  }
  return out;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

std::vector<std::string> missing_features(IsaLevel level) {
  std::vector<std::string> missing;
  for (const std::string& f : isa_level_features(level)) {
    bool known = false;
    if (!cpu_has(f, &known)) missing.push_back(known ? f : f + " (unknown to cpu_features.cpp)");
  }
  return missing;
}

// CPU features never change while the process runs: computed once.
IsaLevel best_supported() {
  static const IsaLevel best = [] {
    for (int i = kNumIsaLevels - 1; i > 0; --i)
      if (isa_level_missing(static_cast<IsaLevel>(i)).empty()) return static_cast<IsaLevel>(i);
    return IsaLevel::generic;
  }();
  return best;
}

// The cap and, when the configuration is bad, the error every selection raises.
struct Cap {
  bool set = false;
  IsaLevel level = IsaLevel::generic;
  bool bad_value = false;  // std::invalid_argument; otherwise std::runtime_error
  std::string error;
};

// isa_cap() runs on every kernel call, so its common path is one atomic
// load: kUncapped, a level, or kBadConfig (then g_error, under g_mutex, says why).
constexpr int kUncapped = -1, kBadConfig = -2;
std::atomic<int> g_state{kUncapped};
std::mutex g_mutex;
Cap g_error;

void store(const Cap& c) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_error = c;
  g_state.store(!c.error.empty() ? kBadConfig : c.set ? static_cast<int>(c.level) : kUncapped);
}

// Parses `value` (case-insensitive) into a cap, or an error naming `source`.
Cap parse(const std::string& value, const std::string& source) {
  Cap c;
  if (value.empty()) return c;
  std::string v;
  for (char ch : value) v += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  for (int i = 0; i < kNumIsaLevels; ++i) {
    if (v != kLevelNames[i]) continue;
    const std::vector<std::string> missing = isa_level_missing(static_cast<IsaLevel>(i));
    if (!missing.empty()) {
      c.error = source + "='" + value + "' asks for the " + kLevelNames[i] +
                " kernels, but this CPU lacks " + join(missing) + " (it supports up to " +
                isa_level_name(best_supported()) + ")";
      return c;
    }
    c.set = true;
    c.level = static_cast<IsaLevel>(i);
    return c;
  }
  c.bad_value = true;
  c.error = source + "='" + value + "' is not an ISA level; allowed values: generic, avx2, avxvnni, avx512, avx512vbmi, amx "
            "(unset = the best this CPU supports)";
  return c;
}

}  // namespace

const char* isa_level_name(IsaLevel level) { return kLevelNames[static_cast<int>(level)]; }

const std::vector<std::string>& isa_level_features(IsaLevel level) {  // parsed once
  static const std::vector<std::string> features[kNumIsaLevels] = {
      split(kLevelFeatures[0]), split(kLevelFeatures[1]), split(kLevelFeatures[2]), split(kLevelFeatures[3]),
      split(kLevelFeatures[4]), split(kLevelFeatures[5])};
  return features[static_cast<int>(level)];
}

const std::vector<std::string>& isa_level_missing(IsaLevel level) {
  static const std::vector<std::string> missing[kNumIsaLevels] = {
      missing_features(IsaLevel::generic), missing_features(IsaLevel::avx2), missing_features(IsaLevel::avxvnni),
      missing_features(IsaLevel::avx512), missing_features(IsaLevel::avx512vbmi), missing_features(IsaLevel::amx)};
  return missing[static_cast<int>(level)];
}

IsaLevel isa_cap() {
  const int state = g_state.load();
  if (state >= 0) return static_cast<IsaLevel>(state);
  if (state == kUncapped) return best_supported();
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_error.bad_value) throw std::invalid_argument(g_error.error);
  throw std::runtime_error(g_error.error);
}

std::string isa_cap_name() {
  const int state = g_state.load();
  return state >= 0 ? kLevelNames[state] : "";
}

void isa_cap_from_env() {
  const char* v = std::getenv(kEnv);
  store(parse(v ? v : "", kEnv));
}

void set_cpu_isa(const std::string& value) {
  Cap c = parse(value, "cpu_isa");
  if (!c.error.empty()) {
    if (c.bad_value) throw std::invalid_argument(c.error);
    throw std::runtime_error(c.error);
  }
  store(c);
}

}  // namespace llmaccel
