// Host entry points of the involution CUDA kernels (defined in involution_forward.cu and
// involution_backward.cu, called by involution_cuda.cpp).
//
// Preconditions, established by the callers in involution_cuda.cpp: the arguments passed the
// checks of common/involution_op.h, every tensor is on the current CUDA device (a
// CUDAGuard is active), the result tensor has numel() > 0, `weight` and `grad_weight` are
// contiguous (B, G, K, K, Ho, Wo); the 4-d tensors may have any strides. The kernels run on
// the current CUDA stream.
#pragma once

#include <ATen/core/Tensor.h>

#include "../common/involution_shape.h"

namespace involution_mm {
namespace cuda {

void forward_cuda(const InvolutionShape& shape, const at::Tensor& input,
                  const at::Tensor& weight, const at::Tensor& output);

void grad_input_cuda(const InvolutionShape& shape, const at::Tensor& grad_output,
                     const at::Tensor& weight, const at::Tensor& grad_input);

void grad_weight_cuda(const InvolutionShape& shape, const at::Tensor& grad_output,
                      const at::Tensor& input, const at::Tensor& grad_weight);

}  // namespace cuda
}  // namespace involution_mm
