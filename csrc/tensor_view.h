// TensorView: a strided tensor as the Python side hands it to a binding, (address, dtype name, sizes,
// strides in elements), checked here once against what the entry point expects before any kernel reads
// it.  An entry point takes one view per tensor instead of a pointer plus 4 sizes plus 4 strides each
// (attention's forward took 39 positional integers, its backward 60), and sizes that must agree between
// tensors (k's batch and head dim against q's, out's shape against q and v) are derived from the tensors
// themselves, so they cannot be passed inconsistently.  Only the binding layer sees views: the kernels
// keep taking their plain problem structs (attention.h).  Python side: llmaccel/ops/_cpp_views.py.
#pragma once

#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "common.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h

struct TensorView {
  uintptr_t addr = 0;
  std::string dtype;  // torch's name without the "torch." prefix: "float32", "bool", "uint8", ...
  std::vector<int64_t> sizes, strides;

  int64_t size(size_t i) const { return sizes[i]; }
  int64_t stride(size_t i) const { return strides[i]; }
  template <class T>
  T* data() const {
    return reinterpret_cast<T*>(addr);
  }
};

// What pybind11 converts a Python (int, str, tuple, tuple) into.
using TensorViewTuple = std::tuple<uintptr_t, std::string, std::vector<int64_t>, std::vector<int64_t>>;

// The view of `t` checked to be an `ndim`-D tensor of one of `dtypes` with non-negative sizes (ValueError
// naming op and argument otherwise); strides and reach are the kernels' own checks (attention.cpp).
inline TensorView tensor_view(const char* op, const char* name, const TensorViewTuple& t, size_t ndim,
                              std::initializer_list<const char*> dtypes) {
  TensorView v{std::get<0>(t), std::get<1>(t), std::get<2>(t), std::get<3>(t)};
  if (v.sizes.size() != ndim || v.strides.size() != ndim)
    fail(op, std::string(name) + " must be " + std::to_string(ndim) + "-D (got " + std::to_string(v.sizes.size()) +
                 " sizes and " + std::to_string(v.strides.size()) + " strides)");
  bool known = false;
  std::string want;
  for (const char* d : dtypes) {
    known = known || v.dtype == d;
    want += (want.empty() ? "" : " or ") + std::string(d);
  }
  if (!known) fail(op, std::string(name) + " must be " + want + ", got " + v.dtype);
  for (int64_t s : v.sizes)
    if (s < 0) fail(op, std::string(name) + " has a negative size (" + std::to_string(s) + ")");
  return v;
}

// Fails unless view `name` has exactly the sizes `want` (derived from the other tensors of the call).
inline void expect_sizes(const char* op, const char* name, const TensorView& v, const std::vector<int64_t>& want) {
  if (v.sizes == want) return;
  auto fmt = [](const std::vector<int64_t>& s) {
    std::string r = "[";
    for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + "]";
  };
  fail(op, std::string(name) + " must have shape " + fmt(want) + " (from the other tensors), got " + fmt(v.sizes));
}

}  // namespace LLMACCEL_CPU_CAPABILITY
}  // namespace llmaccel
