// pybind11 module llmaccel._C.  Python validates tensors and passes raw
// addresses, sizes and strides (in elements); the C++ layer validates again
// and runs with the GIL released.  Attention's entry points take each tensor
// as one view (address, dtype, sizes, strides: tensor_view.h) and derive the
// problem's sizes from them; the int8 and sparse entry points still take
// positional sizes and strides.
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
  m.doc() = "llmaccel C++/OpenMP CPU kernels (raw pointers + sizes + strides)";

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
      [](int64_t M, int64_t N, int64_t K, uintptr_t a, int64_t a_sm, int64_t a_sk, uintptr_t b, int64_t b_sk,
         int64_t b_sn, uintptr_t c, int64_t c_sm, int64_t c_sn, int nthreads, const std::string& variant) {
        py::gil_scoped_release release;
        llmaccel::int8_mm(M, N, K, ptr<const int8_t>(a), a_sm, a_sk, ptr<const int8_t>(b), b_sk, b_sn,
                          ptr<int32_t>(c), c_sm, c_sn, nthreads, variant);
      },
      py::arg("M"), py::arg("N"), py::arg("K"), py::arg("a"), py::arg("a_sm"), py::arg("a_sk"), py::arg("b"),
      py::arg("b_sk"), py::arg("b_sn"), py::arg("c"), py::arg("c_sm"), py::arg("c_sn"), py::arg("nthreads"),
      py::arg("variant") = "",
      "C[M,N] int32 = A[M,K] int8 @ B[K,N] int8 (exact). Addresses are data_ptr()s; strides in elements.");

  m.def(
      "int8_linear_dynamic",
      [](int64_t M, int64_t N, int64_t K, uintptr_t x, int64_t x_sm, uintptr_t w, int64_t ldw, uintptr_t w_packed,
         uintptr_t w_scale, uintptr_t bias, uintptr_t y, int64_t y_sm, int nthreads, const std::string& variant,
         uintptr_t smooth, const std::string& activation) {
        py::gil_scoped_release release;
        llmaccel::int8_linear_dynamic(M, N, K, ptr<const float>(x), x_sm, ptr<const int8_t>(w), ldw,
                                      ptr<const int8_t>(w_packed), ptr<const float>(w_scale), ptr<const float>(bias),
                                      ptr<float>(y), y_sm, nthreads, variant, ptr<const float>(smooth), activation);
      },
      py::arg("M"), py::arg("N"), py::arg("K"), py::arg("x"), py::arg("x_sm"), py::arg("w"), py::arg("ldw"),
      py::arg("w_packed"), py::arg("w_scale"), py::arg("bias"), py::arg("y"), py::arg("y_sm"), py::arg("nthreads"),
      py::arg("variant") = "", py::arg("smooth") = 0, py::arg("activation") = "",
      "y[M,N] fp32 = act(dequant(quantize_per_token(x[M,K] fp32 * (1 / smooth[K])) @ W[N,K]^T) * w_scale + bias), "
      "fused. bias, w_packed and smooth may be 0 (smooth 0: no smoothing); w_packed must come from int8_mm_pack_b "
      "with the same variant; activation '' / 'none', 'gelu' (erf), 'gelu_tanh' or 'relu'.");
  m.def("int8_mm_packed_size", &llmaccel::int8_mm_packed_size, py::arg("variant"), py::arg("N"), py::arg("K"),
        "Bytes of the packed panel layout of an [N, K] weight for `variant` ('' = best).");
  m.def(
      "int8_mm_pack_b",
      [](const std::string& variant, int64_t N, int64_t K, uintptr_t w, int64_t ldw, uintptr_t out, int nthreads) {
        py::gil_scoped_release release;
        llmaccel::int8_mm_pack_b(variant, N, K, ptr<const int8_t>(w), ldw, ptr<int8_t>(out), nthreads);
      },
      py::arg("variant"), py::arg("N"), py::arg("K"), py::arg("w"), py::arg("ldw"), py::arg("out"),
      py::arg("nthreads"), "Writes W [N, K] in the packed panel layout of `variant`.");
  m.def(
      "quantize_per_token",
      [](int64_t M, int64_t K, uintptr_t x, int64_t x_sm, uintptr_t q, int64_t q_sm, uintptr_t scale, int nthreads,
         const std::string& variant) {
        py::gil_scoped_release release;
        llmaccel::quantize_per_token(M, K, ptr<const float>(x), x_sm, ptr<int8_t>(q), q_sm, ptr<float>(scale),
                                     nthreads, variant);
      },
      py::arg("M"), py::arg("K"), py::arg("x"), py::arg("x_sm"), py::arg("q"), py::arg("q_sm"), py::arg("scale"),
      py::arg("nthreads"), py::arg("variant") = "",
      "Per-row symmetric absmax int8 quantization of fp32 x (rows contiguous in k). variant: '' = best, "
      "'avx512', 'avx2', 'generic'.");
  m.def(
      "int8_linear_weight_only",
      [](int64_t M, int64_t N, int64_t K, uintptr_t x, int64_t x_sm, uintptr_t w, int64_t ldw, uintptr_t w_scale,
         uintptr_t bias, uintptr_t y, int64_t y_sm, int nthreads, const std::string& variant) {
        py::gil_scoped_release release;
        llmaccel::int8_linear_weight_only(M, N, K, ptr<const float>(x), x_sm, ptr<const int8_t>(w), ldw,
                                          ptr<const float>(w_scale), ptr<const float>(bias), ptr<float>(y), y_sm,
                                          nthreads, variant);
      },
      py::arg("M"), py::arg("N"), py::arg("K"), py::arg("x"), py::arg("x_sm"), py::arg("w"), py::arg("ldw"),
      py::arg("w_scale"), py::arg("bias"), py::arg("y"), py::arg("y_sm"), py::arg("nthreads"),
      py::arg("variant") = "",
      "y[M,N] fp32 = x[M,K] fp32 @ (W[N,K] int8 * w_scale[:,None])^T + bias; weight converted in registers.");

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

  // N:M-sparse linear (llmaccel.sparsity.NMPackedWeight, fp32 or int8 values), see csrc/sparse_nm.h: the
  // small-M kernel and the large-M one (csrc/sparse_nm_large.h) take the same arguments.
  const auto def_sparse_nm = [&m](const char* name, llmaccel::SparseNMKernel kernel, const char* what) {
    m.def(
        name,
        [kernel](int64_t M, int64_t N, int64_t K, int64_t n, int64_t m, uintptr_t x, int64_t x_sm, uintptr_t values,
                 bool values_int8, int64_t values_sn, uintptr_t indices, int64_t indices_sn, uintptr_t scale,
                 uintptr_t bias, uintptr_t y, int64_t y_sm, int nthreads, const std::string& variant) {
          py::gil_scoped_release release;
          llmaccel::sparse_nm_linear(kernel, M, N, K, n, m, ptr<const float>(x), x_sm, ptr<const void>(values),
                                     values_int8, values_sn, ptr<const uint8_t>(indices), indices_sn,
                                     ptr<const float>(scale), ptr<const float>(bias), ptr<float>(y), y_sm, nthreads,
                                     variant);
        },
        py::arg("M"), py::arg("N"), py::arg("K"), py::arg("n"), py::arg("m"), py::arg("x"), py::arg("x_sm"),
        py::arg("values"), py::arg("values_int8"), py::arg("values_sn"), py::arg("indices"), py::arg("indices_sn"),
        py::arg("scale"), py::arg("bias"), py::arg("y"), py::arg("y_sm"), py::arg("nthreads"),
        py::arg("variant") = "", what);
  };
  def_sparse_nm(
      "sparse_nm_linear", llmaccel::SparseNMKernel::small_m,
      "y[M,N] fp32 = x[M,K] fp32 @ W^T + bias for an n:m-sparse W [N, K] packed as NMPackedWeight: values "
      "[N, ceil(K/m)*n] (row stride values_sn elements), fp32, or int8 (values_int8) with fp32 per-row scale [N] "
      "(else scale = 0); indices uint8 (row stride indices_sn bytes). bias may be 0. "
      "variant: '' = best, 'avx2', 'generic'.");

  m.def(
      "sparse_nm_i8_linear",
      [](int64_t M, int64_t N, int64_t K, int64_t n, int64_t m, uintptr_t x, int64_t x_sm, uintptr_t values,
         int64_t values_sn, uintptr_t indices, int64_t indices_sn, uintptr_t scale, uintptr_t bias, uintptr_t y,
         int64_t y_sm, int nthreads, const std::string& variant) {
        py::gil_scoped_release release;
        llmaccel::sparse_nm_i8_linear(M, N, K, n, m, ptr<const float>(x), x_sm, ptr<const int8_t>(values), values_sn,
                                      ptr<const uint8_t>(indices), indices_sn, ptr<const float>(scale),
                                      ptr<const float>(bias), ptr<float>(y), y_sm, nthreads, variant);
      },
      py::arg("M"), py::arg("N"), py::arg("K"), py::arg("n"), py::arg("m"), py::arg("x"), py::arg("x_sm"),
      py::arg("values"), py::arg("values_sn"), py::arg("indices"), py::arg("indices_sn"), py::arg("scale"),
      py::arg("bias"), py::arg("y"), py::arg("y_sm"), py::arg("nthreads"), py::arg("variant") = "",
      "sparse_nm_linear with int8 activations (act='dynamic'): x [M,K] fp32 quantized per token inside, "
      "int8 values in [-127, 127] with fp32 per-row scale [N]; y = float(sum xq*q) * sx[m] * scale[n] + bias[n] "
      "(csrc/sparse_nm.h). variant: '' = best, 'avx2', 'generic'.");

  // Dense expansion of the N:M and bitmap formats (the sparse_linear op's large-M route), see csrc/sparse_expand.h.
  m.def(
      "sparse_nm_expand",
      [](int64_t N, int64_t K, int64_t n, int64_t m, uintptr_t values, bool values_int8, int64_t values_sn,
         uintptr_t indices, int64_t indices_sn, uintptr_t scale, uintptr_t out, int64_t out_sn, int nthreads) {
        py::gil_scoped_release release;
        llmaccel::sparse_nm_expand(N, K, n, m, ptr<const void>(values), values_int8, values_sn,
                                   ptr<const uint8_t>(indices), indices_sn, ptr<const float>(scale), ptr<float>(out),
                                   out_sn, nthreads);
      },
      py::arg("N"), py::arg("K"), py::arg("n"), py::arg("m"), py::arg("values"), py::arg("values_int8"),
      py::arg("values_sn"), py::arg("indices"), py::arg("indices_sn"), py::arg("scale"), py::arg("out"),
      py::arg("out_sn"), py::arg("nthreads"),
      "out[N,K] fp32 = the dense weight of an NMPackedWeight (int8 values times their row scale).");
  m.def(
      "sparse_bitmap_expand",
      [](int64_t N, int64_t K, uintptr_t bitmap, int64_t bitmap_sn, uintptr_t values, bool values_int8, int64_t nnz,
         uintptr_t row_offsets, uintptr_t scale, uintptr_t out, int64_t out_sn, int nthreads) {
        py::gil_scoped_release release;
        llmaccel::sparse_bitmap_expand(N, K, ptr<const uint8_t>(bitmap), bitmap_sn, ptr<const void>(values),
                                       values_int8, nnz, ptr<const int64_t>(row_offsets), ptr<const float>(scale),
                                       ptr<float>(out), out_sn, nthreads);
      },
      py::arg("N"), py::arg("K"), py::arg("bitmap"), py::arg("bitmap_sn"), py::arg("values"), py::arg("values_int8"),
      py::arg("nnz"), py::arg("row_offsets"), py::arg("scale"), py::arg("out"), py::arg("out_sn"), py::arg("nthreads"),
      "out[N,K] fp32 = the dense weight of a BitmapWeight (int8 values times their row scale).");

  // Unstructured-sparse linear (llmaccel.sparsity.BitmapWeight, fp32 or int8 values), see csrc/sparse_bitmap.h.
  m.def(
      "sparse_bitmap_linear",
      [](int64_t M, int64_t N, int64_t K, uintptr_t x, int64_t x_sm, uintptr_t values, bool values_int8, int64_t nnz,
         uintptr_t bitmap, int64_t bitmap_sn, uintptr_t row_offsets, uintptr_t scale, uintptr_t bias, uintptr_t y,
         int64_t y_sm, int nthreads, const std::string& variant) {
        py::gil_scoped_release release;
        llmaccel::sparse_bitmap_linear(M, N, K, ptr<const float>(x), x_sm, ptr<const void>(values), values_int8, nnz,
                                       ptr<const uint8_t>(bitmap), bitmap_sn, ptr<const int64_t>(row_offsets),
                                       ptr<const float>(scale), ptr<const float>(bias), ptr<float>(y), y_sm, nthreads,
                                       variant);
      },
      py::arg("M"), py::arg("N"), py::arg("K"), py::arg("x"), py::arg("x_sm"), py::arg("values"),
      py::arg("values_int8"), py::arg("nnz"), py::arg("bitmap"), py::arg("bitmap_sn"), py::arg("row_offsets"),
      py::arg("scale"), py::arg("bias"), py::arg("y"), py::arg("y_sm"), py::arg("nthreads"), py::arg("variant") = "",
      "y[M,N] fp32 = x[M,K] fp32 @ W^T + bias for an unstructured-sparse W [N, K] stored as BitmapWeight: bitmap "
      "uint8 [N, ceil(K/8)] (row stride bitmap_sn bytes, LSB first), values [nnz] contiguous, fp32, or int8 "
      "(values_int8) with fp32 per-row scale [N] (else scale = 0), row_offsets int64 [N+1]. bias may be 0. "
      "ValueError if row_offsets and the bitmap disagree. variant: '' = best, 'avx2', 'generic'.");

  m.def(
      "sparse_bitmap_index_linear",
      [](int64_t M, int64_t N, int64_t K, uintptr_t x, int64_t x_sm, uintptr_t values, bool values_int8, int64_t nnz,
         uintptr_t cols, uintptr_t row_offsets, uintptr_t scale, uintptr_t bias, uintptr_t y, int64_t y_sm,
         int nthreads, const std::string& variant) {
        py::gil_scoped_release release;
        llmaccel::sparse_bitmap_index_linear(M, N, K, ptr<const float>(x), x_sm, ptr<const void>(values), values_int8,
                                             nnz, ptr<const uint16_t>(cols), ptr<const int64_t>(row_offsets),
                                             ptr<const float>(scale), ptr<const float>(bias), ptr<float>(y), y_sm,
                                             nthreads, variant);
      },
      py::arg("M"), py::arg("N"), py::arg("K"), py::arg("x"), py::arg("x_sm"), py::arg("values"),
      py::arg("values_int8"), py::arg("nnz"), py::arg("cols"), py::arg("row_offsets"), py::arg("scale"),
      py::arg("bias"), py::arg("y"), py::arg("y_sm"), py::arg("nthreads"), py::arg("variant") = "",
      "sparse_bitmap_linear on the column-index form of the weight: cols uint16 [nnz] (the column of each "
      "value, from the bitmap; clamped to K-1 by the kernels), K <= 65536; same values, row_offsets, scale, "
      "bias and result (csrc/sparse_bitmap.h). variant: '' = best, 'avx2', 'generic'.");

  def_sparse_nm(
      "sparse_nm_large_linear", llmaccel::SparseNMKernel::large_m,
      "sparse_nm_linear for large M (x packed into transposed panels, the weight decoded once per call, n/m of "
      "a dense GEMM's FMAs); same arguments and result. variant: '' = best, 'avx2', 'generic'.");

  // Block-sparse linear (llmaccel.sparsity.BSRWeight, fp32 or int8 tiles), see csrc/sparse_bsr.h.
  m.def(
      "sparse_bsr_linear",
      [](int64_t M, int64_t N, int64_t K, int64_t bh, int64_t bw, int64_t nnzb, uintptr_t x, int64_t x_sm,
         uintptr_t values, bool values_int8, int64_t values_st, int64_t values_sr, uintptr_t crow, uintptr_t col,
         uintptr_t scale, uintptr_t bias, uintptr_t y, int64_t y_sm, int nthreads, const std::string& variant) {
        py::gil_scoped_release release;
        llmaccel::sparse_bsr_linear(M, N, K, bh, bw, nnzb, ptr<const float>(x), x_sm, ptr<const void>(values),
                                    values_int8, values_st, values_sr, ptr<const int64_t>(crow),
                                    ptr<const int32_t>(col), ptr<const float>(scale), ptr<const float>(bias),
                                    ptr<float>(y), y_sm, nthreads, variant);
      },
      py::arg("M"), py::arg("N"), py::arg("K"), py::arg("bh"), py::arg("bw"), py::arg("nnzb"), py::arg("x"),
      py::arg("x_sm"), py::arg("values"), py::arg("values_int8"), py::arg("values_st"), py::arg("values_sr"),
      py::arg("crow_indices"), py::arg("col_indices"), py::arg("scale"), py::arg("bias"), py::arg("y"),
      py::arg("y_sm"), py::arg("nthreads"), py::arg("variant") = "",
      "y[M,N] fp32 = x[M,K] fp32 @ W^T + bias for a block-sparse W [N, K] stored as BSRWeight: values "
      "[nnzb, bh, bw] (tile stride values_st, row stride values_sr, columns contiguous), fp32, or int8 "
      "(values_int8) with fp32 per-row scale [N] (else scale = 0); crow_indices int64 [ceil(N/bh) + 1], "
      "col_indices int32 [nnzb] (validated: a corrupt index raises ValueError). bias may be 0. "
      "variant: '' = best, 'avx2', 'generic'.");
}
