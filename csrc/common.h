// Shared helpers for llmaccel's C++ kernels: argument validation that turns
// bad input into Python exceptions (via C++ exceptions that pybind11 maps to
// ValueError / OverflowError), and overflow-checked index arithmetic.
//
// Kernels in csrc/ work on raw pointers + sizes + strides and include no
// PyTorch headers, so the extension builds in seconds and does not depend on
// the torch C++ ABI.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

// Every inline function here is compiled into each unit that includes it,
// with that unit's target flags, and inline functions have weak linkage: the
// linker keeps one copy per name for the whole library.  Without a
// per-capability namespace it could keep the AVX-512 unit's copy of, say,
// check_matrix and hand it to the generic unit's callers, which then crash
// on a CPU without AVX-512.  setup.py defines LLMACCEL_CPU_CAPABILITY per
// unit (generic, avx2, avx512); the inline namespace changes the mangled
// names without changing any call site (PyTorch's CPU_CAPABILITY scheme).
// Types shared across units and the cross-unit entry points stay in plain
// llmaccel.
#ifndef LLMACCEL_CPU_CAPABILITY
#error "setup.py defines LLMACCEL_CPU_CAPABILITY (generic, avx2 or avx512) for every translation unit"
#endif

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {

// pybind11 maps std::invalid_argument -> ValueError, std::overflow_error ->
// OverflowError.  Every message starts with the op name so the user knows
// which call failed.
[[noreturn]] inline void fail(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string("llmaccel::") + op + ": " + what);
}

[[noreturn]] inline void fail_overflow(const char* op, const std::string& what) {
  throw std::overflow_error(std::string("llmaccel::") + op + ": " + what);
}

// No buffer spans 2^48 elements (x86-64 user space is 2^47 bytes): a view
// whose last element lies further out has a corrupt size or stride, and
// pointer + offset * sizeof(element) could even wrap around the address
// space (undefined behaviour) before any kernel noticed.
constexpr int64_t kMaxElementOffset = int64_t(1) << 48;
inline void check_reach(const char* op, const char* name, int64_t last) {
  if (last >= kMaxElementOffset)
    fail_overflow(op, std::string(name) + ": its last element lies " + std::to_string(last) +
                          " elements from its start, beyond any addressable buffer (size or stride corrupt)");
}

// Offset of the last element of a strided 2-D view, checked for int64
// overflow.  Returns false when the arithmetic would overflow.
inline bool last_offset_2d(int64_t rows, int64_t cols, int64_t s_row, int64_t s_col, int64_t* out) {
  if (rows == 0 || cols == 0) {
    *out = 0;
    return true;
  }
  int64_t a = 0, b = 0;
  if (__builtin_mul_overflow(rows - 1, s_row, &a)) return false;
  if (__builtin_mul_overflow(cols - 1, s_col, &b)) return false;
  return !__builtin_add_overflow(a, b, out);
}

// Validates one strided 2-D operand: non-null when non-empty, non-negative
// sizes and strides, and index arithmetic that fits in int64.
inline void check_matrix(const char* op, const char* name, const void* ptr, int64_t rows, int64_t cols,
                         int64_t s_row, int64_t s_col) {
  if (rows < 0 || cols < 0)
    fail(op, std::string(name) + " has a negative size (" + std::to_string(rows) + ", " + std::to_string(cols) + ")");
  if (s_row < 0 || s_col < 0)
    fail(op, std::string(name) + " has a negative stride (" + std::to_string(s_row) + ", " + std::to_string(s_col) +
                 ")");
  if (rows > 0 && cols > 0 && ptr == nullptr) fail(op, std::string(name) + " is a null pointer");
  int64_t last = 0;
  if (!last_offset_2d(rows, cols, s_row, s_col, &last))
    fail_overflow(op, std::string(name) + ": index arithmetic overflows int64");
  check_reach(op, name, last);
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
inline int64_t ceil_div(int64_t x, int64_t m) { return (x + m - 1) / m; }

}  // namespace LLMACCEL_CPU_CAPABILITY
}  // namespace llmaccel
