// ISA levels and the LLMACCEL_CPU_ISA cap (see isa.h).
#include "isa.h"

#include <cctype>
#include <cstdlib>
#include <mutex>
#include <stdexcept>

#include "cpu_features.h"

#if !defined(LLMACCEL_ISA_FEATURES_avx2) || !defined(LLMACCEL_ISA_FEATURES_avx512)
#error "setup.py passes LLMACCEL_ISA_FEATURES_<level> for every level in ISA_FLAGS; build through setup.py"
#endif

namespace llmaccel {

namespace {

constexpr const char* kEnv = "LLMACCEL_CPU_ISA";
const char* const kLevelNames[kNumIsaLevels] = {"generic", "avx2", "avx512"};
const char* const kLevelFeatures[kNumIsaLevels] = {"", LLMACCEL_ISA_FEATURES_avx2, LLMACCEL_ISA_FEATURES_avx512};

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

IsaLevel best_supported() {
  for (int i = kNumIsaLevels - 1; i > 0; --i)
    if (isa_level_missing(static_cast<IsaLevel>(i)).empty()) return static_cast<IsaLevel>(i);
  return IsaLevel::generic;
}

// The cap and, when the configuration is bad, the error every selection raises.
struct Cap {
  bool set = false;
  IsaLevel level = IsaLevel::generic;
  bool bad_value = false;  // std::invalid_argument; otherwise std::runtime_error
  std::string error;
};
std::mutex g_mutex;
Cap g_cap;

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
  c.error = source + "='" + value + "' is not an ISA level; allowed values: generic, avx2, avx512 "
            "(unset = the best this CPU supports)";
  return c;
}

}  // namespace

const char* isa_level_name(IsaLevel level) { return kLevelNames[static_cast<int>(level)]; }

const std::vector<std::string>& isa_level_features(IsaLevel level) {
  static const std::vector<std::string> features[kNumIsaLevels] = {
      split(kLevelFeatures[0]), split(kLevelFeatures[1]), split(kLevelFeatures[2])};
  return features[static_cast<int>(level)];
}

std::vector<std::string> isa_level_missing(IsaLevel level) {
  std::vector<std::string> missing;
  for (const std::string& f : isa_level_features(level)) {
    bool known = false;
    if (!cpu_has(f, &known)) missing.push_back(known ? f : f + " (unknown to cpu_features.cpp)");
  }
  return missing;
}

IsaLevel isa_cap() {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_cap.error.empty()) {
    if (g_cap.bad_value) throw std::invalid_argument(g_cap.error);
    throw std::runtime_error(g_cap.error);
  }
  return g_cap.set ? g_cap.level : best_supported();
}

std::string isa_cap_name() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_cap.set ? kLevelNames[static_cast<int>(g_cap.level)] : "";
}

void isa_cap_from_env() {
  const char* v = std::getenv(kEnv);
  Cap c = parse(v ? v : "", kEnv);
  std::lock_guard<std::mutex> lock(g_mutex);
  g_cap = c;
}

void set_cpu_isa(const std::string& value) {
  Cap c = parse(value, "cpu_isa");
  if (!c.error.empty()) {
    if (c.bad_value) throw std::invalid_argument(c.error);
    throw std::runtime_error(c.error);
  }
  std::lock_guard<std::mutex> lock(g_mutex);
  g_cap = c;
}

}  // namespace llmaccel
