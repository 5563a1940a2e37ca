// Entry points of the CPU kernels, compiled once per instruction set (involution_cpu_dispatch.h).
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "../common/involution_shape.h"

namespace involution_mm {
namespace cpu {

// Element strides of a 4-d (B, C, H, W) tensor; any memory format.
struct Strides4 {
  int64_t b, c, h, w;
};

// What forward applies to each output channel c before a task's rows leave it, while they are
// in cache: y * scale[c] + shift[c], then max(., 0) with `relu` (NaN stays NaN). scale and
// shift have the output's dtype; null stands for 1 and 0. With all three unset it does
// nothing. The inference form of a BN (or bias) and a ReLU after the op.
struct OutputEpilogue {
  const void* scale = nullptr;
  const void* shift = nullptr;
  bool relu = false;
};

// weight and grad_weight are contiguous (B, G, K, K, Ho, Wo); everything else is strided.
#define INVOLUTION_DECLARE_CPU_KERNELS(CAP)                                                     \
  namespace CAP {                                                                               \
  void forward(const InvolutionShape& shape, c10::ScalarType dtype, const void* input,          \
               const Strides4& input_strides, const void* weight, void* output,                 \
               const Strides4& output_strides, const OutputEpilogue& epilogue);                 \
  void grad_input(const InvolutionShape& shape, c10::ScalarType dtype, const void* grad_output, \
                  const Strides4& grad_output_strides, const void* weight, void* grad_input,    \
                  const Strides4& grad_input_strides);                                          \
  void grad_weight(const InvolutionShape& shape, c10::ScalarType dtype,                         \
                   const void* grad_output, const Strides4& grad_output_strides,                \
                   const void* input, const Strides4& input_strides, void* grad_weight);        \
  }

INVOLUTION_DECLARE_CPU_KERNELS(DEFAULT)
INVOLUTION_DECLARE_CPU_KERNELS(AVX2)
INVOLUTION_DECLARE_CPU_KERNELS(AVX512)

#undef INVOLUTION_DECLARE_CPU_KERNELS

}  // namespace cpu
}  // namespace involution_mm
