// CPU implementations of the involution_mm operators: checks, allocation, and the choice of
// the kernel build (DEFAULT / AVX2 / AVX512) for this CPU, which ATEN_CPU_CAPABILITY can lower
// exactly as it does for PyTorch's own kernels.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdlib>
#include <optional>
#include <string>

#include "../common/involution_op.h"
#include "involution_cpu_kernels.h"

namespace involution_mm {
namespace cpu {
namespace {

struct KernelTable {
  decltype(&DEFAULT::forward) forward;
  decltype(&DEFAULT::grad_input) grad_input;
  decltype(&DEFAULT::grad_weight) grad_weight;
  const char* name;
};

KernelTable select_kernels() {
  const KernelTable fallback{DEFAULT::forward, DEFAULT::grad_input, DEFAULT::grad_weight, "default"};
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  std::string cap = "avx512";
  if (const char* env = std::getenv("ATEN_CPU_CAPABILITY")) cap = env;
  __builtin_cpu_init();
  const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                        __builtin_cpu_supports("f16c");
  const bool has_avx512 = has_avx2 && __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (cap == "avx512" && has_avx512)
    return {AVX512::forward, AVX512::grad_input, AVX512::grad_weight, "avx512"};
  if ((cap == "avx512" || cap == "avx2") && has_avx2)
    return {AVX2::forward, AVX2::grad_input, AVX2::grad_weight, "avx2"};
#endif
  return fallback;
}

const KernelTable& kernels() {
  static const KernelTable table = select_kernels();
  return table;
}

Strides4 strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

at::Tensor forward_epilogue(const at::Tensor& input, const at::Tensor& weight,
                            int64_t kernel_size, int64_t stride, int64_t dilation,
                            int64_t padding, const std::optional<at::Tensor>& scale,
                            const std::optional<at::Tensor>& shift, bool relu) {
  const InvolutionShape shape =
      check_forward_args(input, weight, kernel_size, stride, dilation, padding);
  check_channel_vector("involution_epilogue", scale, "scale", input, shape.C);
  check_channel_vector("involution_epilogue", shift, "shift", input, shape.C);
  at::Tensor output = empty_output(shape, input);
  if (output.numel() == 0) return output;
  const at::Tensor w = weight.contiguous();
  const at::Tensor s = scale ? scale->contiguous() : at::Tensor();
  const at::Tensor t = shift ? shift->contiguous() : at::Tensor();
  const OutputEpilogue epilogue{s.defined() ? s.const_data_ptr() : nullptr,
                                t.defined() ? t.const_data_ptr() : nullptr, relu};
  kernels().forward(shape, input.scalar_type(), input.const_data_ptr(), strides_of(input),
                    w.const_data_ptr(), output.mutable_data_ptr(), strides_of(output), epilogue);
  return output;
}

at::Tensor forward(const at::Tensor& input, const at::Tensor& weight, int64_t kernel_size,
                   int64_t stride, int64_t dilation, int64_t padding) {
  return forward_epilogue(input, weight, kernel_size, stride, dilation, padding, std::nullopt,
                          std::nullopt, false);
}

at::Tensor grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                      c10::IntArrayRef input_size, int64_t kernel_size, int64_t stride,
                      int64_t dilation, int64_t padding) {
  const InvolutionShape shape = check_grad_input_args(grad_output, weight, input_size,
                                                      kernel_size, stride, dilation, padding);
  at::Tensor grad = empty_grad_input(shape, grad_output);
  if (grad.numel() == 0) return grad;
  const at::Tensor w = weight.contiguous();
  kernels().grad_input(shape, grad_output.scalar_type(), grad_output.const_data_ptr(),
                       strides_of(grad_output), w.const_data_ptr(), grad.mutable_data_ptr(),
                       strides_of(grad));
  return grad;
}

at::Tensor grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                       int64_t kernel_size, int64_t stride, int64_t dilation, int64_t padding,
                       int64_t groups) {
  const InvolutionShape shape = check_grad_weight_args(grad_output, input, kernel_size, stride,
                                                       dilation, padding, groups);
  at::Tensor grad = empty_grad_weight(shape, input);
  if (grad.numel() == 0) return grad;
  kernels().grad_weight(shape, input.scalar_type(), grad_output.const_data_ptr(),
                        strides_of(grad_output), input.const_data_ptr(), strides_of(input),
                        grad.mutable_data_ptr());
  return grad;
}

std::string cpu_kernel_isa() { return kernels().name; }

}  // namespace

TORCH_LIBRARY_IMPL(involution_mm, CPU, m) {
  m.impl("involution", &forward);
  m.impl("involution_epilogue", &forward_epilogue);
  m.impl("involution_grad_input", &grad_input);
  m.impl("involution_grad_weight", &grad_weight);
}

// Which kernel build runs on this CPU; reported by the benchmark.
TORCH_LIBRARY_FRAGMENT(involution_mm, m) { m.def("cpu_kernel_isa() -> str", &cpu_kernel_isa); }

}  // namespace cpu
}  // namespace involution_mm
