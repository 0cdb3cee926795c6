// The one table of kernel variants and the one function that picks among
// them.  Every op family lists its variants here with the ISA level of the
// translation unit that defines them; a variant is eligible only where the
// CPU has every feature of that level (setup.py's -m flags for the unit,
// isa.h) and the level is at or below the LLMACCEL_CPU_ISA cap.
//
// The table is constant data (function pointers in .rodata), so the generic
// code that consults it never references a variant's code: the only way
// into a variant unit is through pick().  tests/test_isa.py checks that on
// the linked library.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "attention.h"
#include "int8_linear_wo.h"
#include "int8_mm.h"
#include "isa.h"
#include "sparse_bitmap.h"
#include "sparse_bsr.h"
#include "sparse_nm.h"
#include "sparse_nm_large.h"

namespace llmaccel {

// Kernel families: each public op maps to one (cpu_info lists which).
enum class Family : int {
  int8_mm,
  int8_linear_weight_only,
  quantize_per_token,
  attention,
  sparse_nm,
  sparse_bitmap,
  sparse_nm_large,
  sparse_bsr
};
constexpr int kNumFamilies = 8;

using QuantizeKernel = void (*)(int64_t M, int64_t K, const float* x, int64_t x_sm, int8_t* q, int64_t q_sm,
                                float* scale, int nthreads);

// A variant's entry points; only the members of its family are set.
struct Kernels {
  // int8_mm family: int8_mm, int8_linear act="dynamic" and int8_mm_pack_b
  // (the packed layout belongs to the variant, so they must pick together).
  Int8MMVariant int8_mm = nullptr;
  Int8MMLayout (*int8_mm_layout)() = nullptr;
  void (*int8_linear_wo)(const Int8LinearWOProblem&) = nullptr;
  QuantizeKernel quantize = nullptr;
  // attention family: forward (incl. split-KV decode), backward, exp2 (tests).
  void (*attention_fwd)(const AttentionProblem&) = nullptr;
  void (*attention_bwd)(const AttentionBwdProblem&) = nullptr;
  void (*attention_exp2)(int64_t, const float*, float*) = nullptr;
  // sparse_nm family: sparse_nm_linear (N:M-sparse fp32 linear).
  void (*sparse_nm)(const SparseNMProblem&) = nullptr;
  // sparse_bitmap family: sparse_bitmap_linear (unstructured bitmap-sparse linear); returns the first
  // corrupt row or -1 (sparse_bitmap.h).
  int64_t (*sparse_bitmap)(const SparseBitmapProblem&) = nullptr;
  // sparse_nm_large family: sparse_nm_large_linear (the large-M N:M kernel, same problem).
  void (*sparse_nm_large)(const SparseNMProblem&) = nullptr;
  // sparse_bsr family: sparse_bsr_linear (block-sparse fp32 linear).
  void (*sparse_bsr)(const SparseBSRProblem&) = nullptr;
};

struct Variant {
  Family family;
  const char* name;  // what `variant=` strings and cpu_info() use
  IsaLevel level;    // the ISA level of the unit that defines the kernels
  Kernels kernels;
};

const char* family_name(Family f);

// Every variant, best first within each family.
const std::vector<const Variant*>& all_variants();

// The variant to run.  `requested` "" = the best eligible one; otherwise that
// variant by name, which must exist and be eligible.  Errors (ValueError in
// Python) start with "llmaccel::<op>: ".
const Variant& pick(Family family, const char* op, const std::string& requested);

// Names of the eligible variants of a family, best first.
std::vector<std::string> available_variants(Family family);

// Why pick(family, op, "") chooses what it does, e.g.
// "avx2: avx512vnni needs avx512f, ... (missing: avx512f, ...)".
std::string explain_pick(Family family);

}  // namespace llmaccel
