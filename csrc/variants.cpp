// The variant registry (see variants.h).
#include "variants.h"

#include "common.h"
#include "quantize.h"

namespace llmaccel {

namespace {

constexpr Kernels int8_mm_kernels(Int8MMVariant run, Int8MMLayout (*layout)()) {
  Kernels k;
  k.int8_mm = run;
  k.int8_mm_layout = layout;
  return k;
}

constexpr Kernels wo_kernels(void (*run)(const Int8LinearWOProblem&)) {
  Kernels k;
  k.int8_linear_wo = run;
  return k;
}

constexpr Kernels quantize_kernels(QuantizeKernel run) {
  Kernels k;
  k.quantize = run;
  return k;
}

constexpr Kernels attention_kernels(void (*fwd)(const AttentionProblem&), void (*bwd)(const AttentionBwdProblem&),
                                    void (*exp2)(int64_t, const float*, float*)) {
  Kernels k;
  k.attention_fwd = fwd;
  k.attention_bwd = bwd;
  k.attention_exp2 = exp2;
  return k;
}

constexpr Kernels sparse_nm_kernels(void (*run)(const SparseNMProblem&)) {
  Kernels k;
  k.sparse_nm = run;
  return k;
}

constexpr Kernels sparse_bitmap_kernels(int64_t (*run)(const SparseBitmapProblem&)) {
  Kernels k;
  k.sparse_bitmap = run;
  return k;
}

constexpr Kernels sparse_nm_large_kernels(void (*run)(const SparseNMProblem&)) {
  Kernels k;
  k.sparse_nm_large = run;
  return k;
}

constexpr Kernels sparse_bsr_kernels(void (*run)(const SparseBSRProblem&)) {
  Kernels k;
  k.sparse_bsr = run;
  return k;
}

// Best first within a family.  The level must be the one setup.py compiles
// the defining unit for: *_amx.cpp -> amx, *_avx512vbmi.cpp -> avx512vbmi, *_avx512vnni.cpp -> avx512, *_avxvnni.cpp -> avxvnni,
// *_avx2.cpp -> avx2,
// everything else generic.
constexpr Variant kVariants[] = {
    {Family::int8_mm, "amx", IsaLevel::amx, int8_mm_kernels(&int8_mm_amx, &int8_mm_layout_amx)},
    {Family::int8_mm, "avx512vnni", IsaLevel::avx512, int8_mm_kernels(&int8_mm_avx512vnni, &int8_mm_layout_avx512vnni)},
    {Family::int8_mm, "avxvnni", IsaLevel::avxvnni, int8_mm_kernels(&int8_mm_avxvnni, &int8_mm_layout_avxvnni)},
    {Family::int8_mm, "avx2", IsaLevel::avx2, int8_mm_kernels(&int8_mm_avx2, &int8_mm_layout_avx2)},
    {Family::int8_mm, "generic", IsaLevel::generic, int8_mm_kernels(&int8_mm_generic, &int8_mm_layout_generic)},

    {Family::int8_linear_weight_only, "avx512vnni", IsaLevel::avx512, wo_kernels(&int8_linear_wo_avx512vnni)},
    {Family::int8_linear_weight_only, "avx2", IsaLevel::avx2, wo_kernels(&int8_linear_wo_avx2)},
    {Family::int8_linear_weight_only, "generic", IsaLevel::generic, wo_kernels(&int8_linear_wo_generic)},

    {Family::quantize_per_token, "avx512", IsaLevel::avx512, quantize_kernels(&quantize_per_token_avx512)},
    {Family::quantize_per_token, "avx2", IsaLevel::avx2, quantize_kernels(&quantize_per_token_avx2)},
    {Family::quantize_per_token, "generic", IsaLevel::generic, quantize_kernels(&quantize_per_token_generic)},

    {Family::attention, "avx512", IsaLevel::avx512,
     attention_kernels(&attention_run_avx512, &attention_bwd_avx512, &attention_exp2_avx512)},
    {Family::attention, "avx2", IsaLevel::avx2,
     attention_kernels(&attention_run_avx2, &attention_bwd_avx2, &attention_exp2_avx2)},
    {Family::attention, "generic", IsaLevel::generic,
     attention_kernels(&attention_run_generic, &attention_bwd_generic, &attention_exp2_generic)},

    {Family::sparse_nm, "avx512vbmi", IsaLevel::avx512vbmi, sparse_nm_kernels(&sparse_nm_avx512vbmi)},
    {Family::sparse_nm, "avx512", IsaLevel::avx512, sparse_nm_kernels(&sparse_nm_avx512)},
    {Family::sparse_nm, "avx2", IsaLevel::avx2, sparse_nm_kernels(&sparse_nm_avx2)},
    {Family::sparse_nm, "generic", IsaLevel::generic, sparse_nm_kernels(&sparse_nm_generic)},

    {Family::sparse_bitmap, "avx512", IsaLevel::avx512, sparse_bitmap_kernels(&sparse_bitmap_avx512)},
    {Family::sparse_bitmap, "avx2", IsaLevel::avx2, sparse_bitmap_kernels(&sparse_bitmap_avx2)},
    {Family::sparse_bitmap, "generic", IsaLevel::generic, sparse_bitmap_kernels(&sparse_bitmap_generic)},

    {Family::sparse_nm_large, "avx512", IsaLevel::avx512, sparse_nm_large_kernels(&sparse_nm_large_avx512)},
    {Family::sparse_nm_large, "avx2", IsaLevel::avx2, sparse_nm_large_kernels(&sparse_nm_large_avx2)},
    {Family::sparse_nm_large, "generic", IsaLevel::generic, sparse_nm_large_kernels(&sparse_nm_large_generic)},

    {Family::sparse_bsr, "avx512", IsaLevel::avx512, sparse_bsr_kernels(&sparse_bsr_avx512)},
    {Family::sparse_bsr, "avx2", IsaLevel::avx2, sparse_bsr_kernels(&sparse_bsr_avx2)},
    {Family::sparse_bsr, "generic", IsaLevel::generic, sparse_bsr_kernels(&sparse_bsr_generic)},
};

const char* const kFamilyNames[kNumFamilies] = {"int8_mm",   "int8_linear_weight_only", "quantize_per_token",
                                                "attention", "sparse_nm",               "sparse_bitmap",
                                                "sparse_nm_large", "sparse_bsr"};

std::string join(const std::vector<std::string>& v, const char* sep = ", ") {
  std::string s;
  for (const std::string& x : v) s += (s.empty() ? "" : sep) + x;
  return s;
}

// pick() runs on every kernel call: the eligibility test allocates nothing;
// refusal() builds the message only when one is needed.
bool eligible(const Variant& v, IsaLevel cap) {
  return static_cast<int>(v.level) <= static_cast<int>(cap) && isa_level_missing(v.level).empty();
}

// "" if `v` may run now, else why not.
std::string refusal(const Variant& v, IsaLevel cap) {
  const std::vector<std::string> missing = isa_level_missing(v.level);
  if (!missing.empty())
    return std::string(v.name) + " needs " + join(isa_level_features(v.level)) + " (missing: " + join(missing) + ")";
  if (static_cast<int>(v.level) > static_cast<int>(cap))
    return std::string(v.name) + " is above the cap (" + isa_level_name(v.level) + " > LLMACCEL_CPU_ISA=" +
           isa_level_name(cap) + ")";
  return "";
}

}  // namespace

const char* family_name(Family f) { return kFamilyNames[static_cast<int>(f)]; }

const std::vector<const Variant*>& all_variants() {
  static const std::vector<const Variant*> all = [] {
    std::vector<const Variant*> v;
    for (const Variant& x : kVariants) v.push_back(&x);
    return v;
  }();
  return all;
}

const Variant& pick(Family family, const char* op, const std::string& requested) {
  IsaLevel cap;
  try {
    cap = isa_cap();
  } catch (const std::invalid_argument& e) {
    fail(op, e.what());
  }
  for (const Variant& v : kVariants) {
    if (v.family != family || (!requested.empty() && requested != v.name)) continue;
    if (eligible(v, cap)) return v;
    if (!requested.empty()) fail(op, "variant " + refusal(v, cap));
  }
  if (requested.empty()) fail(op, "no variant can run on this CPU");  // unreachable: every family has a generic one
  std::string known;
  for (const Variant& v : kVariants)
    if (v.family == family) known += (known.empty() ? "" : ", ") + std::string(v.name);
  fail(op, "unknown variant '" + requested + "' (known: " + known + ")");
}

std::vector<std::string> available_variants(Family family) {
  const IsaLevel cap = isa_cap();
  std::vector<std::string> out;
  for (const Variant& v : kVariants)
    if (v.family == family && eligible(v, cap)) out.push_back(v.name);
  return out;
}

std::string explain_pick(Family family) {
  const IsaLevel cap = isa_cap();
  std::vector<std::string> refused;
  for (const Variant& v : kVariants) {
    if (v.family != family) continue;
    if (eligible(v, cap)) {
      std::string s = std::string(v.name) + ": ";
      if (refused.empty()) {
        s += "the best variant";
        if (!isa_level_features(v.level).empty()) s += "; the CPU has " + join(isa_level_features(v.level));
      } else {
        s += join(refused, "; ");
      }
      return s;
    }
    refused.push_back(refusal(v, cap));
  }
  return "none: " + join(refused, "; ");
}

}  // namespace llmaccel
