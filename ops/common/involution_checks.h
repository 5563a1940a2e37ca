// Argument checks shared by the CPU and CUDA implementations. They run before any kernel,
// so a bad call raises a Python ValueError/TypeError naming the problem instead of reading
// out of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include "involution_shape.h"

namespace involution_mm {

InvolutionShape check_forward_args(const at::Tensor& input, const at::Tensor& weight,
                                   int64_t kernel_size, int64_t stride, int64_t dilation,
                                   int64_t padding);

InvolutionShape check_grad_input_args(const at::Tensor& grad_output, const at::Tensor& weight,
                                      c10::IntArrayRef input_size, int64_t kernel_size,
                                      int64_t stride, int64_t dilation, int64_t padding);

InvolutionShape check_grad_weight_args(const at::Tensor& grad_output, const at::Tensor& input,
                                       int64_t kernel_size, int64_t stride, int64_t dilation,
                                       int64_t padding, int64_t groups);

}  // namespace involution_mm
