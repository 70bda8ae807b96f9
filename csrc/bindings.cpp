// PYBIND11_MODULE(_C): one m.def per csrc/api.h function Python calls; the CPU linear drivers
// (int8, static, intx, sparse and codebook linears) are reached through LinearPlan, the prepared-layer
// object (bind_plans). Tensors cross as integer addresses (torch's data_ptr()) plus sizes; every
// call releases the GIL. fastq::Error becomes fastq._C.NativeError (a RuntimeError),
// fastq::BufferError a ValueError. Only fastq/_native.py imports this module.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "api.h"
#include "common/error.h"
#include "common/thread_pool.h"
#include "cpu/wo_bf16.h"

namespace py = pybind11;
using fastq::DType;

namespace {

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

fastq::QuantizeArgs quantize_args(uintptr_t x, int x_dtype, uintptr_t codes, uintptr_t scale, uintptr_t zero_point,
                                  int64_t rows, int64_t cols, int64_t scale_stride, bool symmetric, bool dynamic,
                                  int num_threads) {
  fastq::QuantizeArgs a;
  a.x = ptr<const void>(x);
  a.x_dtype = static_cast<DType>(x_dtype);
  a.codes = ptr<void>(codes);
  a.scale = ptr<float>(scale);
  a.zero_point = ptr<int32_t>(zero_point);
  a.rows = rows;
  a.cols = cols;
  a.scale_stride = scale_stride;
  a.symmetric = symmetric;
  a.dynamic = dynamic;
  a.num_threads = num_threads;
  return a;
}

fastq::DequantizeArgs dequantize_args(uintptr_t codes, bool symmetric, uintptr_t scale, uintptr_t zero_point,
                                      uintptr_t y, int y_dtype, int64_t rows, int64_t cols, int64_t scale_stride,
                                      int num_threads) {
  fastq::DequantizeArgs a;
  a.codes = ptr<const void>(codes);
  a.symmetric = symmetric;
  a.scale = ptr<const float>(scale);
  a.zero_point = ptr<const int32_t>(zero_point);
  a.y = ptr<void>(y);
  a.y_dtype = static_cast<DType>(y_dtype);
  a.rows = rows;
  a.cols = cols;
  a.scale_stride = scale_stride;
  a.num_threads = num_threads;
  return a;
}

py::dict build_info() {
  py::dict d;
#ifdef FASTQ_VERSION
  d["version"] = FASTQ_VERSION;
#endif
  d["compiler"] = FASTQ_COMPILER;
  d["cpu_isas_compiled"] = std::vector<std::string>{"scalar", "avx2", "avx512"
#ifdef FASTQ_WITH_AMX
                                                      , "amx"
#endif
  };
  d["openmp"] = _OPENMP;
#ifdef FASTQ_WITH_CUDA
  d["cuda"] = true;
  d["cuda_version"] = FASTQ_CUDA_VERSION;
  d["cuda_archs"] = FASTQ_CUDA_ARCHS;
#else
  d["cuda"] = false;
#endif
  return d;
}

// ---- argument structs of the CUDA linear ops (the CPU ones run through LinearPlan) ----
#ifdef FASTQ_WITH_CUDA
fastq::Int8LinearArgs linear_args(uintptr_t x, int x_dtype, uintptr_t w_packed, uintptr_t w_scale,
                                  int64_t scale_groups, uintptr_t bias, uintptr_t y, int y_dtype, int64_t m,
                                  int64_t n, int64_t k, bool act_symmetric, uintptr_t workspace,
                                  int64_t workspace_bytes, int num_threads) {
  fastq::Int8LinearArgs a;
  a.x = ptr<const void>(x);
  a.x_dtype = static_cast<DType>(x_dtype);
  a.w_packed = ptr<const int8_t>(w_packed);
  a.w_scale = ptr<const float>(w_scale);
  a.scale_groups = scale_groups;
  a.bias = ptr<const float>(bias);
  a.y = ptr<void>(y);
  a.y_dtype = static_cast<DType>(y_dtype);
  a.m = m;
  a.n = n;
  a.k = k;
  a.act_symmetric = act_symmetric;
  a.workspace = ptr<void>(workspace);
  a.workspace_bytes = workspace_bytes;
  a.num_threads = num_threads;
  return a;
}

fastq::SparseLinearArgs sparse_args(uintptr_t x, bool x_transposed, int64_t ld_xt, int64_t m, int64_t n, int64_t k,
                                    uintptr_t values, uintptr_t scale, uintptr_t cols, uintptr_t row_ptr,
                                    uintptr_t meta, int block_rows, int block_cols, uintptr_t bias, uintptr_t y,
                                    int num_threads) {
  fastq::SparseLinearArgs a;
  a.x = ptr<const float>(x);
  a.x_transposed = x_transposed;
  a.ld_xt = ld_xt;
  a.m = m;
  a.n = n;
  a.k = k;
  a.values = ptr<const void>(values);
  a.scale = ptr<const float>(scale);
  a.cols = ptr<const uint16_t>(cols);
  a.row_ptr = ptr<const int64_t>(row_ptr);
  a.meta = ptr<const uint8_t>(meta);
  a.block_rows = block_rows;
  a.block_cols = block_cols;
  a.bias = ptr<const float>(bias);
  a.y = ptr<float>(y);
  a.num_threads = num_threads;
  return a;
}
#endif

// ---- prepared layers: LinearPlan (csrc/api.h). Pointers cross as integers; Python keeps the
// tensors alive and builds a new plan whenever a buffer changes. ----
void bind_plans(py::module_& m) {
  using fastq::LinearPlan;
  py::class_<LinearPlan>(m, "LinearPlan")
      .def(py::init([](int op, int64_t n, int64_t k) {
             FASTQ_CHECK(op >= 0 && op < static_cast<int>(fastq::PlanOp::count), "unknown plan op ", op);
             FASTQ_CHECK(n > 0 && k > 0, "plan sizes must be positive: n=", n, " k=", k);
             LinearPlan p;
             p.op = static_cast<fastq::PlanOp>(op);
             p.n = n;
             p.k = k;
             return p;
           }),
           py::arg("op"), py::arg("n"), py::arg("k"))
      .def("set_gemm",
           [](LinearPlan& p, uintptr_t w_packed, uintptr_t w_scale, int64_t scale_groups, bool act_symmetric) {
             FASTQ_CHECK(w_packed && w_scale && scale_groups >= 1, "set_gemm: null buffer or bad scale_groups");
             p.w_packed = ptr<const int8_t>(w_packed);
             p.w_scale = ptr<const float>(w_scale);
             p.scale_groups = scale_groups;
             p.act_symmetric = act_symmetric;
           })
      .def("set_sparse",
           [](LinearPlan& p, uintptr_t values, uintptr_t scale, uintptr_t cols, uintptr_t row_ptr, int64_t entries,
              uintptr_t meta, int block_rows, int block_cols) {
             FASTQ_CHECK(values && entries >= 0, "set_sparse: null values or negative entries");
             p.values = ptr<const void>(values);
             p.scale = ptr<const float>(scale);
             p.cols = ptr<const uint16_t>(cols);
             p.row_ptr = ptr<const int64_t>(row_ptr);
             p.entries = entries;
             p.meta = ptr<const uint8_t>(meta);
             p.block_rows = block_rows;
             p.block_cols = block_cols;
           })
      .def("set_ell",
           [](LinearPlan& p, uintptr_t values, bool int8, uintptr_t offsets, uintptr_t steps, uintptr_t group_ptr,
              int64_t total_steps, uintptr_t scale) {
             FASTQ_CHECK(values && offsets && steps && group_ptr && total_steps >= 0 && (!int8 || scale),
                         "set_ell: null buffer or negative step count");
             p.values = ptr<const void>(values);
             p.int8 = int8;
             p.offsets = ptr<const uint8_t>(offsets);
             p.steps = ptr<const uint8_t>(steps);
             p.group_ptr = ptr<const int64_t>(group_ptr);
             p.entries = total_steps;
             p.scale = ptr<const float>(scale);
           })
      .def("set_static",
           [](LinearPlan& p, uintptr_t act_scale, uintptr_t act_zero_point, uintptr_t act_smooth) {
             FASTQ_CHECK(act_scale && (p.act_symmetric || act_zero_point),
                         "set_static: null activation scale, or no zero point for asymmetric activations");
             p.act_scale = ptr<const float>(act_scale);
             p.act_zero_point = ptr<const int32_t>(act_zero_point);
             p.act_smooth = ptr<const float>(act_smooth);
           })
      .def("set_intx",
           [](LinearPlan& p, uintptr_t packed, int bits, bool asymmetric, int64_t groups) {
             FASTQ_CHECK(packed && bits >= 2 && bits <= 8 && groups >= 1 && p.k % groups == 0,
                         "set_intx: null buffer, bits outside 2..8 or groups not dividing k");
             p.codes = ptr<const uint8_t>(packed);
             p.bits = bits;
             p.asymmetric = asymmetric;
             p.groups = groups;
           })
      .def("set_codebook",
           [](LinearPlan& p, uintptr_t codes, int bits, bool lut, uintptr_t codebook, int64_t cb_rows,
              int64_t cb_groups, uintptr_t scale) {
             FASTQ_CHECK(codes && codebook && cb_rows >= 1 && cb_groups >= 1 && p.k % cb_groups == 0,
                         "set_codebook: null buffer or bad codebook shape");
             p.codes = ptr<const uint8_t>(codes);
             p.bits = bits;
             p.lut = lut;
             p.codebook = ptr<const float>(codebook);
             p.cb_rows = cb_rows;
             p.cb_groups = cb_groups;
             p.scale = ptr<const float>(scale);
           })
      .def("set_bias", [](LinearPlan& p, uintptr_t bias) { p.bias = ptr<const float>(bias); })
      .def("set_routes",
           [](LinearPlan& p, const std::vector<std::tuple<int64_t, int, int>>& routes) {
             FASTQ_CHECK(routes.size() <= static_cast<size_t>(fastq::kPlanMaxRoutes), "at most ",
                         fastq::kPlanMaxRoutes, " routes");
             p.n_routes = static_cast<int>(routes.size());
             for (size_t i = 0; i < routes.size(); ++i) {
               const auto& [m_max, isa, path] = routes[i];
               FASTQ_CHECK(path == fastq::kPlanPathDriver || path == fastq::kPlanPathBf16Dot, "unknown path ", path);
               p.routes[i] = {m_max, isa, path};
             }
           })
      .def_property_readonly("op", [](const LinearPlan& p) { return std::string(fastq::plan_op_name(p.op)); })
      .def_readonly("n", &LinearPlan::n)
      .def_readonly("k", &LinearPlan::k)
      .def(
          "run",
          [](const LinearPlan& p, uintptr_t x, int x_dtype, int64_t mm, uintptr_t y, int y_dtype, int num_threads) {
            fastq::PlanCall c;
            c.x = ptr<const void>(x);
            c.x_dtype = static_cast<DType>(x_dtype);
            c.m = mm;
            c.y = ptr<void>(y);
            c.y_dtype = static_cast<DType>(y_dtype);
            c.num_threads = num_threads;
            fastq::linear_plan_run_cpu(p, c);
          },
          py::call_guard<py::gil_scoped_release>());
  m.def("plan_op_names", [] {
    std::vector<std::string> names;
    for (int i = 0; i < static_cast<int>(fastq::PlanOp::count); ++i)
      names.emplace_back(fastq::plan_op_name(static_cast<fastq::PlanOp>(i)));
    return names;
  });
  m.def("plan_calls", [](int op, int device) { return fastq::plan_calls(static_cast<fastq::PlanOp>(op), device); });
  m.def("plan_run_ns", &fastq::plan_run_ns);
  m.def("wo_bf16_available", &fastq::wo_bf16_available);
  m.def("pool_workers", &fastq::pool_workers);
  m.def("parallel_backend", &fastq::parallel_backend);
  m.def("set_parallel_backend", &fastq::set_parallel_backend);
}

#ifdef FASTQ_WITH_CUDA
// ---- sub-8-bit integer weights (intx family, CUDA): (x, x_dtype, packed, bits, asymmetric, groups,
// bias, y, y_dtype, m, n, k, workspace, workspace_bytes, stream) ----
fastq::IntxLinearArgs intx_args(uintptr_t x, int x_dtype, uintptr_t packed, int bits, bool asymmetric,
                                int64_t groups, uintptr_t bias, uintptr_t y, int y_dtype, int64_t m, int64_t n,
                                int64_t k, uintptr_t workspace, int64_t workspace_bytes, int num_threads) {
  fastq::IntxLinearArgs a;
  a.x = ptr<const void>(x);
  a.x_dtype = static_cast<DType>(x_dtype);
  a.packed = ptr<const uint8_t>(packed);
  a.bits = bits;
  a.asymmetric = asymmetric;
  a.groups = groups;
  a.bias = ptr<const float>(bias);
  a.y = ptr<void>(y);
  a.y_dtype = static_cast<DType>(y_dtype);
  a.m = m;
  a.n = n;
  a.k = k;
  a.workspace = ptr<void>(workspace);
  a.workspace_bytes = workspace_bytes;
  a.num_threads = num_threads;
  return a;
}
#endif

}  // namespace

void fastq_bind_codebook(py::module_& m);  // codebook (weight sharing) section, at the end of this file
void fastq_bind_intx(py::module_& m);  // sub-8-bit integer weights, at the end of this file
// ---- static W8A8 linear on CUDA (accuracy toolkit): linear_args(...) plus act_scale,
// act_zero_point, act_smooth pointers ----
#ifdef FASTQ_WITH_CUDA
namespace {

fastq::Int8StaticLinearArgs static_args(uintptr_t x, int x_dtype, uintptr_t w_packed, uintptr_t w_scale,
                                        uintptr_t bias, uintptr_t y, int y_dtype, int64_t m, int64_t n, int64_t k,
                                        bool act_symmetric, uintptr_t act_scale, uintptr_t act_zero_point,
                                        uintptr_t act_smooth, uintptr_t workspace, int64_t workspace_bytes,
                                        int num_threads) {
  fastq::Int8StaticLinearArgs s;
  s.lin = linear_args(x, x_dtype, w_packed, w_scale, 1, bias, y, y_dtype, m, n, k, act_symmetric, workspace,
                      workspace_bytes, num_threads);
  s.act_scale = ptr<const float>(act_scale);
  s.act_zero_point = ptr<const int32_t>(act_zero_point);
  s.act_smooth = ptr<const float>(act_smooth);
  return s;
}

}  // namespace

#endif

void fastq_bind_static_linear([[maybe_unused]] py::module_& m) {
#ifdef FASTQ_WITH_CUDA
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("int8_linear_static_workspace_bytes_cuda", &fastq::int8_linear_static_workspace_bytes_cuda);
  m.def(
      "int8_linear_static_cuda",
      [](uintptr_t x, int x_dtype, uintptr_t w_packed, uintptr_t w_scale, uintptr_t bias, uintptr_t y, int y_dtype,
         int64_t m_, int64_t n, int64_t k, bool act_symmetric, uintptr_t act_scale, uintptr_t act_zero_point,
         uintptr_t act_smooth, uintptr_t workspace, int64_t workspace_bytes, uintptr_t stream) {
        fastq::int8_linear_static_cuda(static_args(x, x_dtype, w_packed, w_scale, bias, y, y_dtype, m_, n, k,
                                                   act_symmetric, act_scale, act_zero_point, act_smooth, workspace,
                                                   workspace_bytes, 1),
                                       ptr<void>(stream));
      },
      nogil);
#endif
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastq native kernels (torch-free; see csrc/api.h)";
  static py::exception<fastq::Error> native_error(m, "NativeError", PyExc_RuntimeError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const fastq::BufferError& e) {
      py::set_error(PyExc_ValueError, e.what());
    } catch (const fastq::Error& e) {
      py::set_error(native_error, e.what());
    }
  });
  const auto nogil = py::call_guard<py::gil_scoped_release>();

  m.def("build_info", &build_info);
  m.def("cpu_isa_detected", &fastq::cpu_isa_detected);
  m.def("cpu_isa_active", &fastq::cpu_isa_active);
  m.def("set_cpu_isa", &fastq::set_cpu_isa, nogil);
  m.def("cpu_isa_name", [](int level) { return std::string(fastq::cpu_isa_name(level)); });
  // ---- AMX tier ----
  m.def("cpu_amx_status", [] { return std::string(fastq::cpu_amx_status()); });
  m.def("cpu_amx_emulated", &fastq::cpu_amx_emulated);
  m.def("cpu_amx_min_m", &fastq::cpu_amx_min_m);
  m.def("set_cpu_amx_min_m", &fastq::set_cpu_amx_min_m);
  m.def("cpu_amx_calls", &fastq::cpu_amx_calls);
  // ---- end AMX tier ----

  m.def(
      "quantize_int8_cpu",
      [](uintptr_t x, int x_dtype, uintptr_t codes, uintptr_t scale, uintptr_t zero_point, int64_t rows, int64_t cols,
         int64_t scale_stride, bool symmetric, bool dynamic, int num_threads) {
        fastq::quantize_int8_cpu(quantize_args(x, x_dtype, codes, scale, zero_point, rows, cols, scale_stride,
                                               symmetric, dynamic, num_threads));
      },
      nogil);
  m.def(
      "dequantize_int8_cpu",
      [](uintptr_t codes, bool symmetric, uintptr_t scale, uintptr_t zero_point, uintptr_t y, int y_dtype,
         int64_t rows, int64_t cols, int64_t scale_stride, int num_threads) {
        fastq::dequantize_int8_cpu(
            dequantize_args(codes, symmetric, scale, zero_point, y, y_dtype, rows, cols, scale_stride, num_threads));
      },
      nogil);

#ifdef FASTQ_WITH_CUDA
  m.def(
      "quantize_int8_cuda",
      [](uintptr_t x, int x_dtype, uintptr_t codes, uintptr_t scale, uintptr_t zero_point, int64_t rows, int64_t cols,
         int64_t scale_stride, bool symmetric, bool dynamic, uintptr_t workspace, uintptr_t stream) {
        fastq::quantize_int8_cuda(
            quantize_args(x, x_dtype, codes, scale, zero_point, rows, cols, scale_stride, symmetric, dynamic, 1),
            ptr<int32_t>(workspace), ptr<void>(stream));
      },
      nogil);
  m.def(
      "dequantize_int8_cuda",
      [](uintptr_t codes, bool symmetric, uintptr_t scale, uintptr_t zero_point, uintptr_t y, int y_dtype,
         int64_t rows, int64_t cols, int64_t scale_stride, uintptr_t stream) {
        fastq::dequantize_int8_cuda(
            dequantize_args(codes, symmetric, scale, zero_point, y, y_dtype, rows, cols, scale_stride, 1),
            ptr<void>(stream));
      },
      nogil);

  // ---- int8 GEMM family, CUDA (csrc/cuda/gemm.cu) ----
  m.def(
      "int8_gemm_cuda",
      [](uintptr_t a, uintptr_t b, uintptr_t c, int64_t m, int64_t n, int64_t k, uintptr_t stream) {
        fastq::int8_gemm_cuda(ptr<const int8_t>(a), ptr<const int8_t>(b), ptr<int32_t>(c), m, n, k, ptr<void>(stream));
      },
      nogil);
  m.def("int8_linear_dynamic_workspace_bytes_cuda", &fastq::int8_linear_dynamic_workspace_bytes_cuda);
  m.def(
      "int8_linear_dynamic_cuda",
      [](uintptr_t x, int x_dtype, uintptr_t w_packed, uintptr_t w_scale, uintptr_t bias, uintptr_t y, int y_dtype,
         int64_t m, int64_t n, int64_t k, bool act_symmetric, uintptr_t workspace, int64_t workspace_bytes,
         uintptr_t stream) {
        fastq::int8_linear_dynamic_cuda(linear_args(x, x_dtype, w_packed, w_scale, 1, bias, y, y_dtype, m, n, k,
                                                    act_symmetric, workspace, workspace_bytes, 1),
                                        ptr<void>(stream));
      },
      nogil);
  m.def(
      "int8_weight_only_linear_cuda",
      [](uintptr_t x, int x_dtype, uintptr_t w_packed, uintptr_t w_scale, int64_t scale_groups, uintptr_t bias,
         uintptr_t y, int y_dtype, int64_t m, int64_t n, int64_t k, uintptr_t stream) {
        fastq::int8_weight_only_linear_cuda(
            linear_args(x, x_dtype, w_packed, w_scale, scale_groups, bias, y, y_dtype, m, n, k, true, 0, 0, 1),
            ptr<void>(stream));
      },
      nogil);
#endif

  // ---- int8 GEMM family, CPU (csrc/cpu/gemm.cpp) ----
  m.def(
      "int8_gemm_cpu",
      [](uintptr_t a, uintptr_t b, uintptr_t c, int64_t m_, int64_t n, int64_t k, int num_threads) {
        fastq::int8_gemm_cpu(ptr<const int8_t>(a), ptr<const int8_t>(b), ptr<int32_t>(c), m_, n, k, num_threads);
      },
      nogil);
  m.def("cpu_peak_int8_gops", &fastq::cpu_peak_int8_gops, nogil);
  m.def("cpu_peak_fp32_gflops", &fastq::cpu_peak_fp32_gflops, nogil);

  bind_plans(m);
#ifdef FASTQ_WITH_CUDA
  m.def(
      "sparse_csr_linear_cuda",
      [](uintptr_t x, int64_t mm, int64_t n, int64_t k, uintptr_t values, uintptr_t cols, uintptr_t row_ptr,
         uintptr_t bias, uintptr_t y, uintptr_t stream) {
        fastq::sparse_csr_linear_cuda(sparse_args(x, false, 0, mm, n, k, values, 0, cols, row_ptr, 0, 1, 1, bias, y, 1),
                                      ptr<void>(stream));
      },
      nogil);
  m.def(
      "sparse_24_linear_cuda",
      [](uintptr_t x, int64_t mm, int64_t n, int64_t k, uintptr_t values, uintptr_t meta, uintptr_t bias, uintptr_t y,
         uintptr_t stream) {
        fastq::sparse_24_linear_cuda(sparse_args(x, false, 0, mm, n, k, values, 0, 0, 0, meta, 1, 1, bias, y, 1),
                                     ptr<void>(stream));
      },
      nogil);
  m.def(
      "sparse_24_linear_tc_cuda",
      [](uintptr_t x, int64_t mm, int64_t n, int64_t k, uintptr_t values, uintptr_t meta, uintptr_t bias, uintptr_t y,
         uintptr_t stream) {
        fastq::sparse_24_linear_tc_cuda(ptr<const void>(x), mm, n, k, ptr<const float>(values),
                                        ptr<const uint8_t>(meta), ptr<const float>(bias), ptr<float>(y),
                                        ptr<void>(stream));
      },
      nogil);
#endif
  fastq_bind_codebook(m);
  fastq_bind_static_linear(m);
  fastq_bind_intx(m);
}

// ---- codebook (weight sharing) linear: (x, m, n, k, codes, bits, lut, codebook, cb_rows, cb_groups,
// scale, bias, y, workspace, workspace_bytes, num_threads, lut_path | stream) ----
namespace {

fastq::CodebookLinearArgs codebook_args(uintptr_t x, int64_t m, int64_t n, int64_t k, uintptr_t codes, int bits,
                                        bool lut, uintptr_t codebook, int64_t cb_rows, int64_t cb_groups,
                                        uintptr_t scale, uintptr_t bias, uintptr_t y) {
  fastq::CodebookLinearArgs a;
  a.x = ptr<const float>(x);
  a.m = m;
  a.n = n;
  a.k = k;
  a.codes = ptr<const uint8_t>(codes);
  a.bits = bits;
  a.lut = lut;
  a.codebook = ptr<const float>(codebook);
  a.cb_rows = cb_rows;
  a.cb_groups = cb_groups;
  a.scale = ptr<const float>(scale);
  a.bias = ptr<const float>(bias);
  a.y = ptr<float>(y);
  return a;
}

}  // namespace

void fastq_bind_codebook(py::module_& m) {
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("codebook_linear_workspace_bytes_cpu", &fastq::codebook_linear_workspace_bytes_cpu);
  m.def(
      "codebook_linear_cpu",
      [](uintptr_t x, int64_t mm, int64_t n, int64_t k, uintptr_t codes, int bits, bool lut, uintptr_t codebook,
         int64_t cb_rows, int64_t cb_groups, uintptr_t scale, uintptr_t bias, uintptr_t y, uintptr_t workspace,
         int64_t workspace_bytes, int num_threads, int lut_path) {
        fastq::CodebookLinearArgs a =
            codebook_args(x, mm, n, k, codes, bits, lut, codebook, cb_rows, cb_groups, scale, bias, y);
        a.workspace = ptr<float>(workspace);
        a.workspace_bytes = workspace_bytes;
        a.num_threads = num_threads;
        a.lut_path = lut_path;
        fastq::codebook_linear_cpu(a);
      },
      nogil);
#ifdef FASTQ_WITH_CUDA
  m.def(
      "codebook_linear_cuda",
      [](uintptr_t x, int64_t mm, int64_t n, int64_t k, uintptr_t codes, int bits, bool lut, uintptr_t codebook,
         int64_t cb_rows, int64_t cb_groups, uintptr_t scale, uintptr_t bias, uintptr_t y, uintptr_t stream) {
        fastq::codebook_linear_cuda(
            codebook_args(x, mm, n, k, codes, bits, lut, codebook, cb_rows, cb_groups, scale, bias, y),
            ptr<void>(stream));
      },
      nogil);
#endif
}

// ---- sub-8-bit integer weights (intx family; csrc/cpu/intx.cpp, csrc/cuda/intx.cu) ----
void fastq_bind_intx([[maybe_unused]] py::module_& m) {
#ifdef FASTQ_WITH_CUDA
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("intx_linear_workspace_bytes_cuda", &fastq::intx_linear_workspace_bytes_cuda);
  m.def(
      "intx_weight_only_linear_cuda",
      [](uintptr_t x, int x_dtype, uintptr_t packed, int bits, bool asymmetric, int64_t groups, uintptr_t bias,
         uintptr_t y, int y_dtype, int64_t mm, int64_t n, int64_t k, uintptr_t workspace, int64_t ws_bytes,
         uintptr_t stream) {
        fastq::intx_weight_only_linear_cuda(
            intx_args(x, x_dtype, packed, bits, asymmetric, groups, bias, y, y_dtype, mm, n, k, workspace, ws_bytes, 1),
            ptr<void>(stream));
      },
      nogil);
  m.def(
      "intx_linear_dynamic_cuda",
      [](uintptr_t x, int x_dtype, uintptr_t packed, int bits, bool asymmetric, int64_t groups, uintptr_t bias,
         uintptr_t y, int y_dtype, int64_t mm, int64_t n, int64_t k, uintptr_t workspace, int64_t ws_bytes,
         uintptr_t stream) {
        fastq::intx_linear_dynamic_cuda(
            intx_args(x, x_dtype, packed, bits, asymmetric, groups, bias, y, y_dtype, mm, n, k, workspace, ws_bytes, 1),
            ptr<void>(stream));
      },
      nogil);
#endif
}
