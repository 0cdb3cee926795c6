// pybind11 module llmaccel._C.  Python validates tensors and passes each one
// as a view (address, dtype, sizes, strides in elements: tensor_view.h,
// llmaccel/ops/_cpp_views.py); the binding checks the views once (rank,
// dtype, sizes that must agree, unit strides where a kernel needs them),
// derives the problem's sizes from them and unpacks them into the kernels'
// raw-pointer entry points, which validate again and run with the GIL
// released.  Only raw buffers (stream_read, advise_huge_pages,
// attention_exp2) still take addresses.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <dlfcn.h>

#include <cstdint>
#include <optional>

#include "attention.h"
#include "cpu_features.h"
#include "int8_linear_wo.h"
#include "int8_mm.h"
#include "isa.h"
#include "memory.h"
#include "quantize.h"
#include "sparse_expand.h"
#include "sparse_bitmap.h"
#include "sparse_bsr.h"
#include "sparse_nm.h"
#include "tensor_view.h"
#include "variants.h"

namespace py = pybind11;

// A tensor view (address, dtype name, sizes, strides) parsed straight from the Python objects into the inline
// TensorView: no std::vector or std::string per call (a decode step passes 5-7 views per kernel call).  Takes a
// tuple or list of 4 whose sizes and strides are tuples (torch.Size, stride()) or lists of ints; anything else
// does not convert (TypeError, as for any other argument).
namespace pybind11::detail {
template <>
struct type_caster<llmaccel::TensorView> {
  PYBIND11_TYPE_CASTER(llmaccel::TensorView, const_name("tuple[int, str, Sequence[int], Sequence[int]]"));

  bool load(handle src, bool) {
    PyObject* const* items = nullptr;
    if (!fast_items(src.ptr(), 4, &items)) return false;
    const unsigned long long addr = PyLong_Check(items[0]) ? PyLong_AsUnsignedLongLong(items[0]) : 0;
    if (!PyLong_Check(items[0]) || (addr == static_cast<unsigned long long>(-1) && PyErr_Occurred())) {
      PyErr_Clear();
      return false;
    }
    value.addr = static_cast<uintptr_t>(addr);
    if (!PyUnicode_Check(items[1])) return false;
    Py_ssize_t len = 0;
    const char* dtype = PyUnicode_AsUTF8AndSize(items[1], &len);  // cached in the str, which the caller holds
    if (dtype == nullptr) {
      PyErr_Clear();
      return false;
    }
    value.dtype = std::string_view(dtype, static_cast<size_t>(len));
    return load_dims(items[2], value.sizes) && load_dims(items[3], value.strides);
  }

  static handle cast(const llmaccel::TensorView&, return_value_policy, handle) { return none().release(); }

 private:
  // The items of a tuple (or subclass: torch.Size) or list, which must have `want` of them (want < 0: any).
  static bool fast_items(PyObject* o, Py_ssize_t want, PyObject* const** items, Py_ssize_t* n = nullptr) {
    Py_ssize_t size = 0;
    if (PyTuple_Check(o)) {
      size = PyTuple_GET_SIZE(o);
      *items = &PyTuple_GET_ITEM(o, 0);
    } else if (PyList_Check(o)) {
      size = PyList_GET_SIZE(o);
      *items = reinterpret_cast<PyListObject*>(o)->ob_item;  // null when empty: then never read
    } else {
      return false;
    }
    if (want >= 0 && size != want) return false;
    if (n) *n = size;
    return true;
  }

  static bool load_dims(PyObject* o, llmaccel::ViewDims& d) {
    PyObject* const* items = nullptr;
    Py_ssize_t n = 0;
    if (!fast_items(o, -1, &items, &n)) return false;
    d.n = static_cast<size_t>(n);
    for (Py_ssize_t i = 0; i < n; ++i) {
      if (!PyLong_Check(items[i])) return false;
      const long long x = PyLong_AsLongLong(items[i]);
      if (x == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return false;
      }
      if (static_cast<size_t>(i) < llmaccel::kMaxViewDims) d.v[i] = x;
    }
    return true;
  }
};
}  // namespace pybind11::detail

namespace {

template <class T>
T* ptr(uintptr_t addr) {
  return reinterpret_cast<T*>(addr);
}

// Offset of a kernel entry point inside this shared library (its symbol
// value), for the disassembly check in tests/test_isa.py.
template <class Fn>
py::object library_offset(Fn fn) {
  if (fn == nullptr) return py::none();
  Dl_info info{};
  void* addr = reinterpret_cast<void*>(fn);
  if (dladdr(addr, &info) == 0 || info.dli_fbase == nullptr) return py::none();
  return py::int_(reinterpret_cast<uintptr_t>(addr) - reinterpret_cast<uintptr_t>(info.dli_fbase));
}

using llmaccel::TensorView;
using llmaccel::TensorViewTuple;
using llmaccel::expect_sizes;
using llmaccel::tensor_view;

// The four strides of a 4-D view into a problem struct's four stride fields.
void strides4(const TensorView& v, int64_t& s0, int64_t& s1, int64_t& s2, int64_t& s3) {
  s0 = v.stride(0), s1 = v.stride(1), s2 = v.stride(2), s3 = v.stride(3);
}

// Row-major with no gaps (an empty tensor is, whatever its strides).
void expect_contiguous(const char* op, const char* name, const TensorView& v) {
  for (int64_t s : v.sizes)
    if (s == 0) return;
  int64_t want = 1;
  for (size_t i = v.sizes.size(); i-- > 0;) {
    if (v.sizes[i] > 1 && v.strides[i] != want) llmaccel::fail(op, std::string(name) + " must be contiguous");
    want *= v.sizes[i];
  }
}

// The forward problem from its views: sizes come from q, k and v, and every other tensor must agree with
// them (ValueError naming the argument).  attention_fwd / attention_bwd check strides, reach and the rest.
llmaccel::AttentionProblem attention_problem(const TensorViewTuple& q_, const TensorViewTuple& k_,
                                             const TensorViewTuple& v_, const std::optional<TensorViewTuple>& mask_,
                                             bool is_causal, bool causal_bottom_right, double scale,
                                             const TensorViewTuple& out_, const std::optional<TensorViewTuple>& lse_,
                                             int nthreads) {
  const char* op = "attention";
  const TensorView q = tensor_view(op, "q", q_, 4, {"float32"});
  const TensorView k = tensor_view(op, "k", k_, 4, {"float32"});
  const TensorView v = tensor_view(op, "v", v_, 4, {"float32"});
  const int64_t B = q.size(0), Hq = q.size(1), Lq = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), Lk = k.size(2), Dv = v.size(3);
  expect_sizes(op, "k", k, {B, Hkv, Lk, D});
  expect_sizes(op, "v", v, {B, Hkv, Lk, Dv});
  llmaccel::AttentionProblem p{};
  p.B = B, p.Hq = Hq, p.Hkv = Hkv, p.Lq = Lq, p.Lk = Lk, p.D = D, p.Dv = Dv;
  p.q = q.data<const float>();
  strides4(q, p.q_sb, p.q_sh, p.q_sl, p.q_sd);
  p.k = k.data<const float>();
  strides4(k, p.k_sb, p.k_sh, p.k_sl, p.k_sd);
  p.v = v.data<const float>();
  strides4(v, p.v_sb, p.v_sh, p.v_sl, p.v_sd);
  p.mask_kind = llmaccel::kMaskNone;
  if (mask_) {
    const TensorView m = tensor_view(op, "mask", *mask_, 4, {"bool", "uint8", "float32"});
    expect_sizes(op, "mask", m, {B, Hq, Lq, Lk});
    p.mask = m.data<const void>();
    p.mask_kind = m.dtype == "float32" ? llmaccel::kMaskFloat : llmaccel::kMaskBool;
    strides4(m, p.m_sb, p.m_sh, p.m_sq, p.m_sk);
  }
  p.causal = is_causal;
  p.bottom_right = causal_bottom_right;
  p.scale = static_cast<float>(scale);
  const TensorView out = tensor_view(op, "out", out_, 4, {"float32"});
  expect_sizes(op, "out", out, {B, Hq, Lq, Dv});
  p.out = out.data<float>();
  strides4(out, p.o_sb, p.o_sh, p.o_sl, p.o_sd);
  if (lse_) {
    const TensorView lse = tensor_view(op, "lse", *lse_, 3, {"float32"});
    expect_sizes(op, "lse", lse, {B, Hq, Lq});
    expect_contiguous(op, "lse", lse);
    p.lse = lse.data<float>();
  }
  p.nthreads = nthreads;
  return p;
}

using llmaccel::optional_vector;
using llmaccel::rows_view;
using llmaccel::RowsView;
using llmaccel::vector_view;
using OptView = std::optional<TensorViewTuple>;

// The activation side every linear entry point shares: x [M, K] and y [M, N] float32 with contiguous rows (M and
// K from x, N from y: the other tensors are checked against them), bias None or float32 [N].
struct LinearIO {
  RowsView x, y;
  const float* bias;
  int64_t M() const { return x.rows; }
  int64_t K() const { return x.cols; }
  int64_t N() const { return y.cols; }
};
LinearIO linear_io(const char* op, const TensorViewTuple& x_, const TensorViewTuple& y_, const OptView& bias) {
  RowsView x = rows_view(op, "x", x_, {"float32"});
  RowsView y = rows_view(op, "y", y_, {"float32"});
  expect_sizes(op, "y", y.v, {x.rows, y.cols});
  const float* b = optional_vector<const float>(op, "bias", bias, "float32", y.cols);
  return {std::move(x), std::move(y), b};
}

// An int8 weight w [N, K] (contiguous rows) with its float32 per-channel scales w_scale [N], for the linear call
// `io` (int8_linear_dynamic, int8_linear_weight_only).
struct Int8Weight {
  RowsView w;
  const float* scale;
};
Int8Weight int8_weight(const char* op, const LinearIO& io, const TensorViewTuple& w_, const TensorViewTuple& scale) {
  RowsView w = rows_view(op, "w", w_, {"int8"});
  expect_sizes(op, "w", w.v, {io.N(), io.K()});
  const float* s = vector_view(op, "w_scale", scale, {"float32"}, io.N()).data<const float>();
  return {std::move(w), s};
}

// A packed-weight buffer (int8_mm_pack_b's output): int8, 1-D contiguous, at least int8_mm_packed_size(variant,
// N, K) bytes.
int8_t* packed_buffer(const char* op, const char* name, const TensorViewTuple& t, const std::string& variant,
                            int64_t N, int64_t K) {
  const TensorView v = vector_view(op, name, t, {"int8"});
  const int64_t need = llmaccel::int8_mm_packed_size(variant, N, K);
  if (v.size(0) < need)
    llmaccel::fail(op, std::string(name) + " has " + std::to_string(v.size(0)) + " bytes, fewer than the " +
                           std::to_string(need) + " of the packed layout of a [" + std::to_string(N) + ", " +
                           std::to_string(K) + "] weight for this call's variant (packed for another variant or "
                           "shape? repack it with int8_mm_pack_b)");
  return v.data<int8_t>();
}

// The per-row scales of a sparse weight: int8 values need float32 scale [N], float32 values take None.
const float* row_scales(const char* op, const TensorView& values, const OptView& scale, int64_t N) {
  const bool int8 = values.dtype == "int8";
  if (int8 && !scale) llmaccel::fail(op, "scale is None, but int8 values need float32 per-row scales [N]");
  if (!int8 && scale)
    llmaccel::fail(op, "scale must be None for " + std::string(values.dtype) + " values (it scales int8 values)");
  return optional_vector<const float>(op, "scale", scale, "float32", N);
}

// An N:M-packed weight [N, K] (NMPackedWeight): values [N, ceil(K/m)*n] of one of `dtypes` and indices uint8
// [N, ceil(slots * index bits / 8)], both with contiguous rows, and their row_scales.
struct NMWeight {
  RowsView values, indices;
  const float* scale;
  bool int8() const { return values.v.dtype == "int8"; }
};
NMWeight nm_weight(const char* op, const TensorViewTuple& values_, const TensorViewTuple& indices_,
                   const OptView& scale, int64_t n, int64_t m, int64_t N, int64_t K,
                   std::initializer_list<const char*> dtypes) {
  if (n < 1 || m > 256 || n >= m)
    llmaccel::fail(op, "pattern n:m = " + std::to_string(n) + ":" + std::to_string(m) + " must have 1 <= n < m <= 256");
  RowsView values = rows_view(op, "values", values_, dtypes);
  const int64_t slots = llmaccel::ceil_div(K, m) * n;
  expect_sizes(op, "values", values.v, {N, slots});
  RowsView indices = rows_view(op, "indices", indices_, {"uint8"});
  expect_sizes(op, "indices", indices.v, {N, llmaccel::ceil_div(slots * llmaccel::sparse_nm_index_bits(m), 8)});
  const float* s = row_scales(op, values.v, scale, N);
  return {std::move(values), std::move(indices), s};
}

// The values of a row-compressed weight (BitmapWeight, its column-index form): values [nnz] float32 or int8 and
// row_offsets int64 [N + 1], both contiguous, and their row_scales.
struct PackedRows {
  TensorView values;
  const int64_t* row_offsets;
  const float* scale;
  int64_t nnz() const { return values.size(0); }
  bool int8() const { return values.dtype == "int8"; }
};
PackedRows packed_rows(const char* op, const TensorViewTuple& values_, const TensorViewTuple& row_offsets,
                       const OptView& scale, int64_t N) {
  TensorView values = vector_view(op, "values", values_, {"float32", "int8"});
  const int64_t* off = vector_view(op, "row_offsets", row_offsets, {"int64"}, N + 1).data<const int64_t>();
  const float* s = row_scales(op, values, scale, N);
  return {std::move(values), off, s};
}

// A weight's bitmap: uint8 [N, ceil(K/8)] with contiguous rows.
RowsView bitmap_view(const char* op, const TensorViewTuple& t, int64_t N, int64_t K) {
  RowsView b = rows_view(op, "bitmap", t, {"uint8"});
  expect_sizes(op, "bitmap", b.v, {N, llmaccel::ceil_div(K, 8)});
  return b;
}

void bind_isa(py::module_& m) {
  using namespace llmaccel;
  m.attr("native_build") = py::bool_(LLMACCEL_NATIVE_BUILD != 0);
  m.def("cpu_features", &cpu_feature_names, "CPU features detected at run time (CPUID + XGETBV), setup.py spelling.");
  m.def("known_cpu_features", &cpu_feature_names_all, "Every feature the detector knows (cpu_features.h).");
  m.def(
      "isa_levels",
      [] {
        py::dict d;
        for (int i = 0; i < kNumIsaLevels; ++i)
          d[isa_level_name(static_cast<IsaLevel>(i))] = isa_level_features(static_cast<IsaLevel>(i));
        return d;
      },
      "{level: features its units are compiled for}, ascending; from setup.py's ISA_FLAGS.");
  m.def("cpu_isa", &isa_cap_name, "The LLMACCEL_CPU_ISA cap in force ('' = none: the best the CPU supports).");
  m.def("set_cpu_isa", &set_cpu_isa, py::arg("level"),
        "Caps the variants at `level` ('' = uncapped) for this process, like LLMACCEL_CPU_ISA at load. "
        "ValueError for an unknown level, RuntimeError for one this CPU lacks. Packed weights from before "
        "the change must be repacked (llmaccel.cpu.cpu_isa does that).");
  m.def(
      "variant_table",
      [] {
        py::list out;
        for (const Variant* v : all_variants()) {
          py::dict d;
          d["family"] = family_name(v->family);
          d["variant"] = v->name;
          d["level"] = isa_level_name(v->level);
          d["features"] = isa_level_features(v->level);
          out.append(d);
        }
        return out;
      },
      "Every kernel variant: family, name, ISA level and the CPU features it needs, best first per family.");
  m.def(
      "variant_choice",
      [] {
        py::dict out;
        for (int f = 0; f < kNumFamilies; ++f) {
          const Family fam = static_cast<Family>(f);
          py::dict d;
          d["variant"] = pick(fam, family_name(fam), "").name;
          d["why"] = explain_pick(fam);
          d["available"] = available_variants(fam);
          out[family_name(fam)] = d;
        }
        return out;
      },
      "{family: {variant, why, available}}: what each kernel family runs here and why. Raises the "
      "LLMACCEL_CPU_ISA error, if any.");
  m.def(
      "_variant_entry_points",
      [] {
        py::list out;
        for (const Variant* v : all_variants()) {
          const Kernels& k = v->kernels;
          const std::pair<const char*, py::object> fns[] = {
              {"int8_mm", library_offset(k.int8_mm)},
              {"int8_mm_layout", library_offset(k.int8_mm_layout)},
              {"int8_linear_wo", library_offset(k.int8_linear_wo)},
              {"quantize", library_offset(k.quantize)},
              {"attention_fwd", library_offset(k.attention_fwd)},
              {"attention_bwd", library_offset(k.attention_bwd)},
              {"attention_exp2", library_offset(k.attention_exp2)},
              {"sparse_nm", library_offset(k.sparse_nm)},
              {"sparse_bitmap", library_offset(k.sparse_bitmap)},
              {"sparse_nm_large", library_offset(k.sparse_nm_large)},
              {"sparse_bsr", library_offset(k.sparse_bsr)}};
          for (const auto& fn : fns)
            if (!fn.second.is_none())
              out.append(py::make_tuple(family_name(v->family), v->name, isa_level_name(v->level), fn.first,
                                        fn.second));
        }
        return out;
      },
      "(family, variant, level, kernel, offset in this library) of every registered entry point (tests).");
  m.def("_fail_scratch_alloc_after", &fail_scratch_alloc_after, py::arg("n"),
        "Test hook: the n-th kernel scratch allocation from now fails with MemoryError (0 disarms).");
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "llmaccel C++/OpenMP CPU kernels (tensors as views: csrc/tensor_view.h)";

  // Read once, here: a bad value is raised by every kernel call (isa.h).
  llmaccel::isa_cap_from_env();
  bind_isa(m);
  m.def("huge_page_bytes", &llmaccel::huge_page_bytes, "Transparent huge page size in bytes (0 if unavailable).");
  m.def("transparent_huge_pages_mode", &llmaccel::transparent_huge_pages_mode,
        "The kernel's THP policy: always, madvise, never or unsupported.");
  m.def(
      "advise_huge_pages", [](uintptr_t addr, int64_t nbytes) { return llmaccel::advise_huge_pages(ptr<void>(addr), nbytes); },
      py::arg("addr"), py::arg("nbytes"),
      "madvise(MADV_HUGEPAGE) on a huge-page-aligned range; returns whether the advice was taken.");
  m.def(
      "stream_read",
      [](uintptr_t addr, int64_t nbytes, int nthreads) {
        py::gil_scoped_release release;
        return llmaccel::stream_read(ptr<const void>(addr), nbytes, nthreads);
      },
      py::arg("addr"), py::arg("nbytes"), py::arg("nthreads"),
      "Reads a buffer once (threads split it) and returns its wrapping uint64 word sum: the read-bandwidth "
      "ceiling that streaming kernels are measured against.");
  m.def("int8_mm_variants", &llmaccel::int8_mm_variants, "int8_mm variants this CPU can run, best first.");
  m.def(
      "int8_mm",
      [](const TensorViewTuple& a_, const TensorViewTuple& b_, const TensorViewTuple& c_, int nthreads,
         const std::string& variant) {
        const char* op = "int8_mm";
        const TensorView a = tensor_view(op, "a", a_, 2, {"int8"});
        const TensorView b = tensor_view(op, "b", b_, 2, {"int8"});
        const TensorView c = tensor_view(op, "c", c_, 2, {"int32"});
        const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
        expect_sizes(op, "b", b, {K, N});
        expect_sizes(op, "c", c, {M, N});
        py::gil_scoped_release release;
        llmaccel::int8_mm(M, N, K, a.data<const int8_t>(), a.stride(0), a.stride(1), b.data<const int8_t>(),
                          b.stride(0), b.stride(1), c.data<int32_t>(), c.stride(0), c.stride(1), nthreads, variant);
      },
      py::arg("a"), py::arg("b"), py::arg("c"), py::arg("nthreads"), py::arg("variant") = "",
      "C = A @ B, exact.  Views (data_ptr, dtype name, sizes, strides in elements; csrc/tensor_view.h), any "
      "strides: a int8 [M, K], b int8 [K, N], c int32 [M, N] (written).");

  m.def(
      "int8_linear_dynamic",
      [](const TensorViewTuple& x, const TensorViewTuple& w, const OptView& w_packed, const TensorViewTuple& w_scale,
         const OptView& bias, const TensorViewTuple& y, int nthreads, const std::string& variant,
         const OptView& smooth, const std::string& activation, const OptView& residual) {
        const char* op = "int8_linear_dynamic";
        const LinearIO io = linear_io(op, x, y, bias);
        const Int8Weight wt = int8_weight(op, io, w, w_scale);
        const int8_t* packed = w_packed ? packed_buffer(op, "w_packed", *w_packed, variant, io.N(), io.K()) : nullptr;
        const float* sm = optional_vector<const float>(op, "smooth", smooth, "float32", io.K());
        const float* res = nullptr;
        int64_t r_sm = 0;
        if (residual) {
          const RowsView r = rows_view(op, "residual", *residual, {"float32"});
          expect_sizes(op, "residual", r.v, {io.M(), io.N()});
          res = r.data<const float>();
          r_sm = r.ld;
        }
        py::gil_scoped_release release;
        llmaccel::int8_linear_dynamic(io.M(), io.N(), io.K(), io.x.data<const float>(), io.x.ld,
                                      wt.w.data<const int8_t>(), wt.w.ld, packed, wt.scale, io.bias,
                                      io.y.data<float>(), io.y.ld, nthreads, variant, sm, activation, res, r_sm);
      },
      py::arg("x"), py::arg("w"), py::arg("w_packed"), py::arg("w_scale"), py::arg("bias"), py::arg("y"),
      py::arg("nthreads"), py::arg("variant") = "", py::arg("smooth") = py::none(), py::arg("activation") = "",
      py::arg("residual") = py::none(),
      "y = act(dequant(quantize_per_token(x * (1 / smooth)) @ w^T) * w_scale + bias), fused.  Views "
      "(csrc/tensor_view.h): x float32 [M, K] and y float32 [M, N] (rows contiguous), w int8 [N, K] (rows "
      "contiguous), w_packed None or int8 [>= int8_mm_packed_size(variant, N, K)] from int8_mm_pack_b with the "
      "same variant, w_scale float32 [N], bias None or float32 [N], smooth None (no smoothing) or float32 [K] "
      "(1-D ones contiguous); activation '' / 'none', 'gelu' (erf), 'gelu_tanh' or 'relu'; residual None or "
      "float32 [M, N] (rows contiguous; y or not overlapping it), added after the activation.");
  m.def("int8_mm_packed_size", &llmaccel::int8_mm_packed_size, py::arg("variant"), py::arg("N"), py::arg("K"),
        "Bytes of the packed panel layout of an [N, K] weight for `variant` ('' = best).");
  m.def(
      "int8_mm_pack_b",
      [](const std::string& variant, const TensorViewTuple& w_, const TensorViewTuple& out, int nthreads) {
        const char* op = "int8_mm_pack_b";
        const RowsView w = rows_view(op, "w", w_, {"int8"});
        int8_t* dst = packed_buffer(op, "out", out, variant, w.rows, w.cols);
        py::gil_scoped_release release;
        llmaccel::int8_mm_pack_b(variant, w.rows, w.cols, w.data<const int8_t>(), w.ld, dst, nthreads);
      },
      py::arg("variant"), py::arg("w"), py::arg("out"), py::arg("nthreads"),
      "Writes w (view: int8 [N, K], rows contiguous) in the packed panel layout of `variant` into out (view: "
      "int8, 1-D contiguous, at least int8_mm_packed_size(variant, N, K) bytes).");
  m.def(
      "quantize_per_token",
      [](const TensorViewTuple& x_, const TensorViewTuple& q_, const TensorViewTuple& scale, int nthreads,
         const std::string& variant) {
        const char* op = "quantize_per_token";
        const RowsView x = rows_view(op, "x", x_, {"float32"});
        const RowsView q = rows_view(op, "q", q_, {"int8"});
        expect_sizes(op, "q", q.v, {x.rows, x.cols});
        float* s = vector_view(op, "scale", scale, {"float32"}, x.rows).data<float>();
        py::gil_scoped_release release;
        llmaccel::quantize_per_token(x.rows, x.cols, x.data<const float>(), x.ld, q.data<int8_t>(), q.ld, s, nthreads,
                                     variant);
      },
      py::arg("x"), py::arg("q"), py::arg("scale"), py::arg("nthreads"), py::arg("variant") = "",
      "Per-row symmetric absmax int8 quantization.  Views (csrc/tensor_view.h): x float32 [M, K] (rows "
      "contiguous), q int8 [M, K] (rows contiguous, written), scale float32 [M] contiguous (written).  variant: "
      "'' = best, 'avx512', 'avx2', 'generic'.");
  m.def(
      "int8_linear_weight_only",
      [](const TensorViewTuple& x, const TensorViewTuple& w, const TensorViewTuple& w_scale, const OptView& bias,
         const TensorViewTuple& y, int nthreads, const std::string& variant) {
        const char* op = "int8_linear_weight_only";
        const LinearIO io = linear_io(op, x, y, bias);
        const Int8Weight wt = int8_weight(op, io, w, w_scale);
        py::gil_scoped_release release;
        llmaccel::int8_linear_weight_only(io.M(), io.N(), io.K(), io.x.data<const float>(), io.x.ld,
                                          wt.w.data<const int8_t>(), wt.w.ld, wt.scale, io.bias, io.y.data<float>(),
                                          io.y.ld, nthreads, variant);
      },
      py::arg("x"), py::arg("w"), py::arg("w_scale"), py::arg("bias"), py::arg("y"), py::arg("nthreads"),
      py::arg("variant") = "",
      "y = x @ (w * w_scale[:, None])^T + bias, the weight converted in registers.  Views (csrc/tensor_view.h): "
      "x float32 [M, K] and y float32 [M, N] (rows contiguous), w int8 [N, K] (rows contiguous), w_scale "
      "float32 [N] and bias None or float32 [N] contiguous.");

  // Fused attention forward (fp32), see csrc/attention.h.
  m.def("attention_variants", &llmaccel::attention_variants, "attention_fwd variants this CPU can run, best first.");
  m.def(
      "attention_fwd",
      [](const TensorViewTuple& q, const TensorViewTuple& k, const TensorViewTuple& v,
         const std::optional<TensorViewTuple>& mask, bool is_causal, bool causal_bottom_right, double scale,
         const TensorViewTuple& out, const std::optional<TensorViewTuple>& lse, int nthreads,
         const std::string& variant) {
        const llmaccel::AttentionProblem p =
            attention_problem(q, k, v, mask, is_causal, causal_bottom_right, scale, out, lse, nthreads);
        py::gil_scoped_release release;
        llmaccel::attention_fwd(p, variant);
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("mask"), py::arg("is_causal"),
      py::arg("causal_bottom_right"), py::arg("scale"), py::arg("out"), py::arg("lse"), py::arg("nthreads"),
      py::arg("variant") = "",
      "Fused SDPA forward, fp32.  Every tensor is a view (data_ptr, dtype name, sizes, strides in elements; "
      "csrc/tensor_view.h): q [B, Hq, Lq, D], k [B, Hkv, Lk, D], v [B, Hkv, Lk, Dv] float32 (GQA when Hkv < Hq); "
      "mask None or [B, Hq, Lq, Lk] (stride 0 on broadcast dims) bool / uint8 (nonzero = attend) or float32 "
      "(added to the scores); out [B, Hq, Lq, Dv] float32; lse None or float32 [B, Hq, Lq] contiguous (natural "
      "log).  variant: '' = best, 'avx512', 'avx2', 'generic'.");
  m.def(
      "attention_bwd",
      [](const TensorViewTuple& q, const TensorViewTuple& k, const TensorViewTuple& v,
         const std::optional<TensorViewTuple>& mask, bool is_causal, bool causal_bottom_right, double scale,
         const TensorViewTuple& out, const TensorViewTuple& lse, const TensorViewTuple& dout,
         const std::optional<TensorViewTuple>& dlse, const TensorViewTuple& dq, const TensorViewTuple& dk,
         const TensorViewTuple& dv, int nthreads, const std::string& variant) {
        const char* op = "attention";
        llmaccel::AttentionBwdProblem p{};
        p.f = attention_problem(q, k, v, mask, is_causal, causal_bottom_right, scale, out, lse, nthreads);
        const int64_t B = p.f.B, Hq = p.f.Hq, Hkv = p.f.Hkv, Lq = p.f.Lq, Lk = p.f.Lk, D = p.f.D, Dv = p.f.Dv;
        const TensorView go = tensor_view(op, "dout", dout, 4, {"float32"});
        expect_sizes(op, "dout", go, {B, Hq, Lq, Dv});
        p.dout = go.data<const float>();
        strides4(go, p.do_sb, p.do_sh, p.do_sl, p.do_sd);
        if (dlse) {
          const TensorView gl = tensor_view(op, "dlse", *dlse, 3, {"float32"});
          expect_sizes(op, "dlse", gl, {B, Hq, Lq});
          expect_contiguous(op, "dlse", gl);
          p.dlse = gl.data<const float>();
        }
        const TensorView gq = tensor_view(op, "dq", dq, 4, {"float32"});
        const TensorView gk = tensor_view(op, "dk", dk, 4, {"float32"});
        const TensorView gv = tensor_view(op, "dv", dv, 4, {"float32"});
        expect_sizes(op, "dq", gq, {B, Hq, Lq, D});
        expect_sizes(op, "dk", gk, {B, Hkv, Lk, D});
        expect_sizes(op, "dv", gv, {B, Hkv, Lk, Dv});
        p.dq = gq.data<float>();
        strides4(gq, p.dq_sb, p.dq_sh, p.dq_sl, p.dq_sd);
        p.dk = gk.data<float>();
        strides4(gk, p.dk_sb, p.dk_sh, p.dk_sl, p.dk_sd);
        p.dv = gv.data<float>();
        strides4(gv, p.dv_sb, p.dv_sh, p.dv_sl, p.dv_sd);
        py::gil_scoped_release release;
        llmaccel::attention_bwd(p, variant);
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("mask"), py::arg("is_causal"),
      py::arg("causal_bottom_right"), py::arg("scale"), py::arg("out"), py::arg("lse"), py::arg("dout"),
      py::arg("dlse"), py::arg("dq"), py::arg("dk"), py::arg("dv"), py::arg("nthreads"), py::arg("variant") = "",
      "Fused SDPA backward (FlashAttention-2, fp32, no dropout): attention_fwd's views (out = the forward output, "
      "lse required) plus dout [B, Hq, Lq, Dv], dlse None or float32 [B, Hq, Lq] contiguous, and the outputs dq, "
      "dk, dv (float32, shaped like q, k, v; any strides).  A float mask is added to the scores; its gradient is "
      "not computed.");
  m.def(
      "attention_exp2",
      [](int64_t n, uintptr_t x, uintptr_t y, const std::string& variant) {
        py::gil_scoped_release release;
        llmaccel::attention_exp2(n, ptr<const float>(x), ptr<float>(y), variant);
      },
      py::arg("n"), py::arg("x"), py::arg("y"), py::arg("variant") = "",
      "y = 2^x (fp32, contiguous) with the attention kernel's vectorized exp2 (for tests).");

  // N:M-sparse linear (llmaccel.sparsity.NMPackedWeight, float32 or int8 values), see csrc/sparse_nm.h: the
  // small-M kernel and the large-M one (csrc/sparse_nm_large.h) take the same arguments.
  const auto def_sparse_nm = [&m](const char* name, llmaccel::SparseNMKernel kernel, const char* what) {
    m.def(
        name,
        [kernel, name](const TensorViewTuple& x, const TensorViewTuple& values, const TensorViewTuple& indices,
                       const OptView& scale, const OptView& bias, const TensorViewTuple& y, int64_t n, int64_t m,
                       int nthreads, const std::string& variant) {
          const LinearIO io = linear_io(name, x, y, bias);
          const NMWeight w = nm_weight(name, values, indices, scale, n, m, io.N(), io.K(), {"float32", "int8"});
          py::gil_scoped_release release;
          llmaccel::sparse_nm_linear(kernel, io.M(), io.N(), io.K(), n, m, io.x.data<const float>(), io.x.ld,
                                     w.values.data<const void>(), w.int8(), w.values.ld,
                                     w.indices.data<const uint8_t>(), w.indices.ld, w.scale, io.bias,
                                     io.y.data<float>(), io.y.ld, nthreads, variant);
        },
        py::arg("x"), py::arg("values"), py::arg("indices"), py::arg("scale"), py::arg("bias"), py::arg("y"),
        py::arg("n"), py::arg("m"), py::arg("nthreads"), py::arg("variant") = "", what);
  };
  def_sparse_nm(
      "sparse_nm_linear", llmaccel::SparseNMKernel::small_m,
      "y = x @ W^T + bias for an n:m-sparse W [N, K] packed as NMPackedWeight.  Views (csrc/tensor_view.h; 2-D "
      "ones with contiguous rows, 1-D ones contiguous): x float32 [M, K], values [N, ceil(K/m)*n] float32, or "
      "int8 with scale float32 [N] (else scale None), indices uint8 [N, ceil(ceil(K/m)*n*bits/8)] (bits: 1, 2, 4 "
      "or 8, the smallest that holds m - 1), bias None or float32 [N], y float32 [M, N] (written).  n:m, the "
      "pattern, is not a tensor property.  variant: '' = best, 'avx2', 'generic'.");

  m.def(
      "sparse_nm_i8_linear",
      [](const TensorViewTuple& x, const TensorViewTuple& values, const TensorViewTuple& indices,
         const TensorViewTuple& scale, const OptView& bias, const TensorViewTuple& y, int64_t n, int64_t m,
         int nthreads, const std::string& variant) {
        const char* op = "sparse_nm_i8_linear";
        const LinearIO io = linear_io(op, x, y, bias);
        const NMWeight w = nm_weight(op, values, indices, scale, n, m, io.N(), io.K(), {"int8"});
        py::gil_scoped_release release;
        llmaccel::sparse_nm_i8_linear(io.M(), io.N(), io.K(), n, m, io.x.data<const float>(), io.x.ld,
                                      w.values.data<const int8_t>(), w.values.ld, w.indices.data<const uint8_t>(),
                                      w.indices.ld, w.scale, io.bias, io.y.data<float>(), io.y.ld, nthreads, variant);
      },
      py::arg("x"), py::arg("values"), py::arg("indices"), py::arg("scale"), py::arg("bias"), py::arg("y"),
      py::arg("n"), py::arg("m"), py::arg("nthreads"), py::arg("variant") = "",
      "sparse_nm_linear with int8 activations (act='dynamic'): x quantized per token inside, values int8 in "
      "[-127, 127] with scale float32 [N] (required); y = float(sum xq*q) * sx[m] * scale[n] + bias[n] "
      "(csrc/sparse_nm.h).  Views as sparse_nm_linear's.  variant: '' = best, 'avx2', 'generic'.");

  // Dense expansion of the N:M and bitmap formats (the sparse_linear op's large-M route), see csrc/sparse_expand.h.
  m.def(
      "sparse_nm_expand",
      [](const TensorViewTuple& values, const TensorViewTuple& indices, const OptView& scale,
         const TensorViewTuple& out_, int64_t n, int64_t m, int nthreads) {
        const char* op = "sparse_nm_expand";
        const RowsView out = rows_view(op, "out", out_, {"float32"});
        const NMWeight w = nm_weight(op, values, indices, scale, n, m, out.rows, out.cols, {"float32", "int8"});
        py::gil_scoped_release release;
        llmaccel::sparse_nm_expand(out.rows, out.cols, n, m, w.values.data<const void>(), w.int8(), w.values.ld,
                                   w.indices.data<const uint8_t>(), w.indices.ld, w.scale, out.data<float>(), out.ld,
                                   nthreads);
      },
      py::arg("values"), py::arg("indices"), py::arg("scale"), py::arg("out"), py::arg("n"), py::arg("m"),
      py::arg("nthreads"),
      "out = the dense weight of an NMPackedWeight (int8 values times their row scale).  Views: out float32 "
      "[N, K] (rows contiguous, written); values, indices and scale as sparse_nm_linear's.");
  m.def(
      "sparse_bitmap_expand",
      [](const TensorViewTuple& bitmap, const TensorViewTuple& values, const TensorViewTuple& row_offsets,
         const OptView& scale, const TensorViewTuple& out_, int nthreads) {
        const char* op = "sparse_bitmap_expand";
        const RowsView out = rows_view(op, "out", out_, {"float32"});
        const RowsView b = bitmap_view(op, bitmap, out.rows, out.cols);
        const PackedRows w = packed_rows(op, values, row_offsets, scale, out.rows);
        py::gil_scoped_release release;
        llmaccel::sparse_bitmap_expand(out.rows, out.cols, b.data<const uint8_t>(), b.ld, w.values.data<const void>(),
                                       w.int8(), w.nnz(), w.row_offsets, w.scale, out.data<float>(), out.ld, nthreads);
      },
      py::arg("bitmap"), py::arg("values"), py::arg("row_offsets"), py::arg("scale"), py::arg("out"),
      py::arg("nthreads"),
      "out = the dense weight of a BitmapWeight (int8 values times their row scale).  Views: out float32 [N, K] "
      "(rows contiguous, written); bitmap, values, row_offsets and scale as sparse_bitmap_linear's.");

  // Unstructured-sparse linear (llmaccel.sparsity.BitmapWeight, float32 or int8 values), see csrc/sparse_bitmap.h.
  m.def(
      "sparse_bitmap_linear",
      [](const TensorViewTuple& x, const TensorViewTuple& values, const TensorViewTuple& bitmap,
         const TensorViewTuple& row_offsets, const OptView& scale, const OptView& bias, const TensorViewTuple& y,
         int nthreads, const std::string& variant) {
        const char* op = "sparse_bitmap_linear";
        const LinearIO io = linear_io(op, x, y, bias);
        const RowsView b = bitmap_view(op, bitmap, io.N(), io.K());
        const PackedRows w = packed_rows(op, values, row_offsets, scale, io.N());
        py::gil_scoped_release release;
        llmaccel::sparse_bitmap_linear(io.M(), io.N(), io.K(), io.x.data<const float>(), io.x.ld,
                                       w.values.data<const void>(), w.int8(), w.nnz(), b.data<const uint8_t>(), b.ld,
                                       w.row_offsets, w.scale, io.bias, io.y.data<float>(), io.y.ld, nthreads,
                                       variant);
      },
      py::arg("x"), py::arg("values"), py::arg("bitmap"), py::arg("row_offsets"), py::arg("scale"), py::arg("bias"),
      py::arg("y"), py::arg("nthreads"), py::arg("variant") = "",
      "y = x @ W^T + bias for an unstructured-sparse W [N, K] stored as BitmapWeight.  Views (csrc/tensor_view.h; "
      "2-D ones with contiguous rows, 1-D ones contiguous): x float32 [M, K], values [nnz] float32, or int8 with "
      "scale float32 [N] (else scale None), bitmap uint8 [N, ceil(K/8)] (LSB first), row_offsets int64 [N + 1], "
      "bias None or float32 [N], y float32 [M, N] (written).  ValueError if row_offsets and the bitmap disagree. "
      "variant: '' = best, 'avx2', 'generic'.");

  m.def(
      "sparse_bitmap_index_linear",
      [](const TensorViewTuple& x, const TensorViewTuple& values, const TensorViewTuple& cols,
         const TensorViewTuple& row_offsets, const OptView& scale, const OptView& bias, const TensorViewTuple& y,
         int nthreads, const std::string& variant) {
        const char* op = "sparse_bitmap_index_linear";
        const LinearIO io = linear_io(op, x, y, bias);
        const PackedRows w = packed_rows(op, values, row_offsets, scale, io.N());
        const uint16_t* c = vector_view(op, "cols", cols, {"uint16"}, w.nnz()).data<const uint16_t>();
        py::gil_scoped_release release;
        llmaccel::sparse_bitmap_index_linear(io.M(), io.N(), io.K(), io.x.data<const float>(), io.x.ld,
                                             w.values.data<const void>(), w.int8(), w.nnz(), c, w.row_offsets,
                                             w.scale, io.bias, io.y.data<float>(), io.y.ld, nthreads, variant);
      },
      py::arg("x"), py::arg("values"), py::arg("cols"), py::arg("row_offsets"), py::arg("scale"), py::arg("bias"),
      py::arg("y"), py::arg("nthreads"), py::arg("variant") = "",
      "sparse_bitmap_linear on the column-index form of the weight: cols uint16 [nnz] contiguous (the column of "
      "each value, from the bitmap; clamped to K-1 by the kernels), K <= 65536; the other views, and the result, "
      "as sparse_bitmap_linear's (csrc/sparse_bitmap.h).  variant: '' = best, 'avx2', 'generic'.");

  def_sparse_nm(
      "sparse_nm_large_linear", llmaccel::SparseNMKernel::large_m,
      "sparse_nm_linear for large M (x packed into transposed panels, the weight decoded once per call, n/m of "
      "a dense GEMM's FMAs); same views and result. variant: '' = best, 'avx2', 'generic'.");

  // Block-sparse linear (llmaccel.sparsity.BSRWeight, float32 or int8 tiles), see csrc/sparse_bsr.h.
  m.def(
      "sparse_bsr_linear",
      [](const TensorViewTuple& x, const TensorViewTuple& values_, const TensorViewTuple& crow_indices,
         const TensorViewTuple& col_indices, const OptView& scale, const OptView& bias, const TensorViewTuple& y,
         int nthreads, const std::string& variant) {
        const char* op = "sparse_bsr_linear";
        const LinearIO io = linear_io(op, x, y, bias);
        const TensorView values = tensor_view(op, "values", values_, 3, {"float32", "int8"});
        const int64_t nnzb = values.size(0), bh = values.size(1), bw = values.size(2);
        if (bh < 1 || bw < 1)
          llmaccel::fail(op, "values must hold tiles of at least 1 x 1, got " + std::to_string(bh) + " x " +
                                 std::to_string(bw));
        if (bw > 1 && values.stride(2) != 1)
          llmaccel::fail(op, "values must have contiguous tile rows (stride 1 in the last dimension), got " +
                                 std::to_string(values.stride(2)));
        const int64_t* crow = vector_view(op, "crow_indices", crow_indices, {"int64"},
                                          llmaccel::ceil_div(io.N(), bh) + 1).data<const int64_t>();
        const int32_t* col = vector_view(op, "col_indices", col_indices, {"int32"}, nnzb).data<const int32_t>();
        const float* s = row_scales(op, values, scale, io.N());
        py::gil_scoped_release release;
        llmaccel::sparse_bsr_linear(io.M(), io.N(), io.K(), bh, bw, nnzb, io.x.data<const float>(), io.x.ld,
                                    values.data<const void>(), values.dtype == "int8", values.stride(0),
                                    values.stride(1), crow, col, s, io.bias, io.y.data<float>(), io.y.ld, nthreads,
                                    variant);
      },
      py::arg("x"), py::arg("values"), py::arg("crow_indices"), py::arg("col_indices"), py::arg("scale"),
      py::arg("bias"), py::arg("y"), py::arg("nthreads"), py::arg("variant") = "",
      "y = x @ W^T + bias for a block-sparse W [N, K] stored as BSRWeight.  Views (csrc/tensor_view.h): x float32 "
      "[M, K] and y float32 [M, N] (rows contiguous; y written), values [nnzb, bh, bw] (the tile size from its "
      "shape; any tile and row strides, columns contiguous) float32, or int8 with scale float32 [N] (else scale "
      "None), crow_indices int64 [ceil(N/bh) + 1], col_indices int32 [nnzb], bias None or float32 [N] (1-D ones "
      "contiguous).  The index data is validated: a corrupt index raises ValueError.  variant: '' = best, "
      "'avx2', 'generic'.");
}
