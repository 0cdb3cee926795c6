// TensorView: a strided tensor as the Python side hands it to a binding, (address, dtype name, sizes,
// strides in elements), checked here once against what the entry point expects before any kernel reads
// it.  An entry point takes one view per tensor instead of a pointer plus its sizes and strides (attention's
// forward took 39 positional integers, its backward 60; the int8 and sparse entry points 9-20 each), and sizes
// that must agree between tensors (k's batch and head dim against q's; a linear call's M and K from x, N from y,
// the weight's and bias's shapes against them) are derived from the tensors themselves, so they cannot be
// passed inconsistently.  Only the binding layer (bindings.cpp) sees views: the kernels keep taking their plain
// problem structs and raw-pointer entry points (attention.h, int8_mm.h, sparse_*.h ...), whose own checks
// stay.  Python side: llmaccel/ops/_cpp_views.py.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h

// Sizes or strides of a view: at most kMaxDims of them kept inline (a view is parsed on every kernel call, so it
// allocates nothing); n counts them all, so a view of higher rank still fails its rank check.
constexpr size_t kMaxViewDims = 8;
struct ViewDims {
  int64_t v[kMaxViewDims] = {};
  size_t n = 0;
  size_t size() const { return n; }
  int64_t operator[](size_t i) const { return v[i]; }
  const int64_t* begin() const { return v; }
  const int64_t* end() const { return v + (n < kMaxViewDims ? n : kMaxViewDims); }
  bool operator==(const std::vector<int64_t>& o) const {
    return n == o.size() && std::equal(o.begin(), o.end(), v);
  }
};

// dtype points into the Python string the caller passed, which lives for the call (the binding's argument).
struct TensorView {
  uintptr_t addr = 0;
  std::string_view dtype;  // torch's name without the "torch." prefix: "float32", "bool", "uint8", ...
  ViewDims sizes, strides;

  int64_t size(size_t i) const { return sizes[i]; }
  int64_t stride(size_t i) const { return strides[i]; }
  template <class T>
  T* data() const {
    return reinterpret_cast<T*>(addr);
  }
};

// What pybind11 converts a Python (int, str, sequence of ints, sequence of ints) into (its caster: bindings.cpp),
// before tensor_view() checks it.
using TensorViewTuple = TensorView;

// The view of `t` checked to be an `ndim`-D tensor of one of `dtypes` with non-negative sizes (ValueError
// naming op and argument otherwise); strides and reach are the kernels' own checks (attention.cpp).
inline TensorView tensor_view(const char* op, const char* name, const TensorViewTuple& t, size_t ndim,
                              std::initializer_list<const char*> dtypes) {
  const TensorView& v = t;
  if (v.sizes.size() != ndim || v.strides.size() != ndim)
    fail(op, std::string(name) + " must be " + std::to_string(ndim) + "-D (got " + std::to_string(v.sizes.size()) +
                 " sizes and " + std::to_string(v.strides.size()) + " strides)");
  bool known = false;
  std::string want;
  for (const char* d : dtypes) {
    known = known || v.dtype == d;
    want += (want.empty() ? "" : " or ") + std::string(d);
  }
  if (!known) fail(op, std::string(name) + " must be " + want + ", got " + std::string(v.dtype));
  for (int64_t s : v.sizes)
    if (s < 0) fail(op, std::string(name) + " has a negative size (" + std::to_string(s) + ")");
  return t;
}

// Fails unless view `name` has exactly the sizes `want` (derived from the other tensors of the call).
inline void expect_sizes(const char* op, const char* name, const TensorView& v, const std::vector<int64_t>& want) {
  if (v.sizes == want) return;
  auto fmt = [](const auto& s) {
    std::string r = "[";
    for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + "]";
  };
  fail(op, std::string(name) + " must have shape " + fmt(want) + " (from the other tensors), got " + fmt(v.sizes));
}

// A 2-D view whose rows are unit-stride (the kernels' "k contiguous" operands: x, y, an int8 weight, N:M values
// and indices, a bitmap): the view plus its row stride, which is its column count when it has at most one row
// (any row stride is fine then).  ValueError unless the column stride is 1 (or there is at most one column).
struct RowsView {
  TensorView v;
  int64_t rows, cols, ld;
  template <class T>
  T* data() const {
    return v.data<T>();
  }
};

inline RowsView rows_view(const char* op, const char* name, const TensorViewTuple& t,
                          std::initializer_list<const char*> dtypes) {
  const TensorView& v = tensor_view(op, name, t, 2, dtypes);
  if (v.size(1) > 1 && v.stride(1) != 1)
    fail(op, std::string(name) + " must have contiguous rows (column stride 1), got strides [" +
                 std::to_string(v.stride(0)) + ", " + std::to_string(v.stride(1)) + "]");
  const int64_t rows = v.size(0), cols = v.size(1), ld = rows > 1 ? v.stride(0) : cols;
  return {v, rows, cols, ld};
}

// A 1-D view with unit stride (any stride when it has at most one element) and, unless n < 0, exactly n elements.
inline TensorView vector_view(const char* op, const char* name, const TensorViewTuple& t,
                              std::initializer_list<const char*> dtypes, int64_t n = -1) {
  const TensorView& v = tensor_view(op, name, t, 1, dtypes);
  if (n >= 0) expect_sizes(op, name, v, {n});
  if (v.size(0) > 1 && v.stride(0) != 1)
    fail(op, std::string(name) + " must be contiguous, got stride " + std::to_string(v.stride(0)));
  return v;
}

// vector_view's pointer for an optional tensor of one dtype; null for None.
template <class T>
T* optional_vector(const char* op, const char* name, const std::optional<TensorViewTuple>& t, const char* dtype,
                   int64_t n) {
  return t ? vector_view(op, name, *t, {dtype}, n).data<T>() : nullptr;
}

}  // namespace LLMACCEL_CPU_CAPABILITY
}  // namespace llmaccel
