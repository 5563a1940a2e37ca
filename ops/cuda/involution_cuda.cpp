// CUDA implementations of the involution_mm operators (checks, device guard, allocation; the
// kernels are in involution_forward.cu and involution_backward.cu). Autocast is registered
// for every device in ../involution.cpp.
//
// Only c10/cuda headers are used (not ATen/cuda/CUDAContext.h), so these sources also
// compile against a CPU build of torch for the compile-only check (tools/check_cuda_compile.sh).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common/involution_op.h"
#include "involution_cuda.h"

namespace involution_mm {
namespace cuda {
namespace {

at::Tensor forward(const at::Tensor& input, const at::Tensor& weight, int64_t kernel_size,
                   int64_t stride, int64_t dilation, int64_t padding) {
  const InvolutionShape shape =
      check_forward_args(input, weight, kernel_size, stride, dilation, padding);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor output = empty_output(shape, input);
  if (output.numel() == 0) return output;
  const at::Tensor w = weight.contiguous();
  forward_cuda(shape, input, w, output);
  return output;
}

at::Tensor grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                      c10::IntArrayRef input_size, int64_t kernel_size, int64_t stride,
                      int64_t dilation, int64_t padding) {
  const InvolutionShape shape = check_grad_input_args(grad_output, weight, input_size,
                                                      kernel_size, stride, dilation, padding);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  at::Tensor grad = empty_grad_input(shape, grad_output);
  if (grad.numel() == 0) return grad;
  const at::Tensor w = weight.contiguous();
  grad_input_cuda(shape, grad_output, w, grad);
  return grad;
}

at::Tensor grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                       int64_t kernel_size, int64_t stride, int64_t dilation, int64_t padding,
                       int64_t groups) {
  const InvolutionShape shape = check_grad_weight_args(grad_output, input, kernel_size, stride,
                                                       dilation, padding, groups);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor grad = empty_grad_weight(shape, input);
  if (grad.numel() == 0) return grad;
  grad_weight_cuda(shape, grad_output, input, grad);
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(involution_mm, CUDA, m) {
  m.impl("involution", &forward);
  m.impl("involution_grad_input", &grad_input);
  m.impl("involution_grad_weight", &grad_weight);
}

}  // namespace cuda
}  // namespace involution_mm
