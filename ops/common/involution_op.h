// What the CPU and CUDA implementations share: argument checks, which run before any kernel
// so that a bad call raises a Python ValueError naming the problem instead of reading out of
// bounds, and the allocation of the outputs.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <optional>

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

// An optional per-channel vector of an epilogue (`name`: scale, shift): 1-d with `channels`
// elements, of the dtype and device of `like`; `op` names the operator in the message.
void check_channel_vector(const char* op, const std::optional<at::Tensor>& v, const char* name,
                          const at::Tensor& like, int64_t channels);

// The outputs: out and grad_input take the memory format of the input they follow (so a
// channels_last input gives channels_last results), grad_weight is a contiguous
// (B, G, K, K, Ho, Wo).
at::Tensor empty_output(const InvolutionShape& shape, const at::Tensor& input);
at::Tensor empty_grad_input(const InvolutionShape& shape, const at::Tensor& grad_output);
at::Tensor empty_grad_weight(const InvolutionShape& shape, const at::Tensor& input);

}  // namespace involution_mm
