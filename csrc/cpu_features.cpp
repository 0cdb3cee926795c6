// CPUID / XGETBV feature detection (see cpu_features.h).  Compiled for the
// baseline ISA like every non-variant unit: cpuid and xgetbv are plain
// x86-64 instructions.
#include "cpu_features.h"

#include <cstdint>

#if defined(__linux__) && (defined(__x86_64__) || defined(__i386__))
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace llmaccel {

namespace {

constexpr int kCount = static_cast<int>(CpuFeature::kCount);

const char* const kNames[kCount] = {"avx",        "avx2",    "fma",        "f16c",     "avx512f",
                                    "avx512bw",   "avx512vl", "avx512dq",  "avx512vnni", "avx512vbmi", "avxvnni",
                                    "avx512bf16", "amx_tile", "amx_int8",  "amx_bf16"};

#if defined(__x86_64__) || defined(__i386__)
struct Regs {
  uint32_t a, b, c, d;
};

Regs cpuid(uint32_t leaf, uint32_t subleaf) {
  Regs r;
  asm volatile("cpuid" : "=a"(r.a), "=b"(r.b), "=c"(r.c), "=d"(r.d) : "a"(leaf), "c"(subleaf));
  return r;
}

// XCR0: which register state the OS saves and restores.  Only readable when
// CPUID.1:ECX.OSXSAVE says the OS enabled XSAVE.
uint64_t xgetbv0() {
  uint32_t lo, hi;
  asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}

bool bit(uint32_t reg, int i) { return (reg >> i) & 1u; }

// Linux (5.16+) gives a process AMX tile data only after it asks once
// (arch_prctl ARCH_REQ_XCOMP_PERM); without it the first tile instruction
// faults even though CPUID and XCR0 report AMX.
bool amx_permitted() {
#if defined(__linux__) && defined(SYS_arch_prctl)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return true;
#endif
}
#endif

struct Detected {
  bool has[kCount] = {};
};

Detected detect() {
  Detected d;
#if defined(__x86_64__) || defined(__i386__)
  auto set = [&](CpuFeature f, bool v) { d.has[static_cast<int>(f)] = v; };
  const uint32_t max_leaf = cpuid(0, 0).a;
  if (max_leaf < 1) return d;
  const Regs l1 = cpuid(1, 0);
  const uint64_t xcr0 = bit(l1.c, 27) ? xgetbv0() : 0;  // OSXSAVE
  const bool os_ymm = (xcr0 & 0x6) == 0x6;              // SSE + AVX state
  const bool os_zmm = os_ymm && (xcr0 & 0xE0) == 0xE0;  // opmask + ZMM_Hi256 + Hi16_ZMM
  const bool os_amx = (xcr0 & 0x60000) == 0x60000;      // XTILECFG + XTILEDATA
  const bool avx = os_ymm && bit(l1.c, 28);
  set(CpuFeature::avx, avx);
  set(CpuFeature::fma, avx && bit(l1.c, 12));
  set(CpuFeature::f16c, avx && bit(l1.c, 29));
  if (max_leaf < 7) return d;
  const Regs l7 = cpuid(7, 0);
  const Regs l7s1 = l7.a >= 1 ? cpuid(7, 1) : Regs{0, 0, 0, 0};
  set(CpuFeature::avx2, avx && bit(l7.b, 5));
  set(CpuFeature::avxvnni, avx && bit(l7s1.a, 4));
  const bool avx512f = os_zmm && bit(l7.b, 16);
  set(CpuFeature::avx512f, avx512f);
  set(CpuFeature::avx512dq, avx512f && bit(l7.b, 17));
  set(CpuFeature::avx512bw, avx512f && bit(l7.b, 30));
  set(CpuFeature::avx512vl, avx512f && bit(l7.b, 31));
  set(CpuFeature::avx512vnni, avx512f && bit(l7.c, 11));
  set(CpuFeature::avx512vbmi, avx512f && bit(l7.c, 1));
  set(CpuFeature::avx512bf16, avx512f && bit(l7s1.a, 5));
  const bool amx_tile = os_amx && bit(l7.d, 24) && amx_permitted();
  set(CpuFeature::amx_tile, amx_tile);
  set(CpuFeature::amx_int8, amx_tile && bit(l7.d, 25));
  set(CpuFeature::amx_bf16, amx_tile && bit(l7.d, 22));
#endif
  return d;
}

const Detected& detected() {
  static const Detected d = detect();
  return d;
}

}  // namespace

const char* cpu_feature_name(CpuFeature f) { return kNames[static_cast<int>(f)]; }

bool cpu_has(CpuFeature f) { return detected().has[static_cast<int>(f)]; }

bool cpu_vendor_is_amd() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool amd = [] {
    const Regs r = cpuid(0, 0);  // vendor string in EBX, EDX, ECX
    return r.b == 0x68747541u && r.d == 0x69746e65u && r.c == 0x444d4163u;  // "Auth" "enti" "cAMD"
  }();
  return amd;
#else
  return false;
#endif
}

bool cpu_has(const std::string& name, bool* known) {
  for (int i = 0; i < kCount; ++i) {
    if (name == kNames[i]) {
      *known = true;
      return detected().has[i];
    }
  }
  *known = false;
  return false;
}

std::vector<std::string> cpu_feature_names_all() { return std::vector<std::string>(kNames, kNames + kCount); }

std::vector<std::string> cpu_feature_names() {
  std::vector<std::string> out;
  for (int i = 0; i < kCount; ++i)
    if (detected().has[i]) out.push_back(kNames[i]);
  return out;
}

}  // namespace llmaccel
