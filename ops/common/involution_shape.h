// Shape arithmetic of the involution op, shared by the CPU and CUDA kernels.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define INVOLUTION_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define INVOLUTION_HOST_DEVICE inline
#endif

namespace involution_mm {

// Sizes of one call. x: (B, C, H, W), weight: (B, G, K, K, Ho, Wo), out: (B, C, Ho, Wo).
struct InvolutionShape {
  int64_t B, C, H, W, G, K, stride, dilation, padding, Ho, Wo;
  INVOLUTION_HOST_DEVICE int64_t channels_per_group() const { return C / G; }
  INVOLUTION_HOST_DEVICE int64_t kk() const { return K * K; }
};

// PyTorch's convolution output-size rule; with odd K and padding = dilation*(K-1)/2
// it is ceil(size / stride), which AvgPool2d(stride, stride, ceil_mode=True) also gives.
INVOLUTION_HOST_DEVICE int64_t involution_out_size(int64_t in, int64_t k, int64_t s, int64_t d,
                                                   int64_t p) {
  const int64_t span = in + 2 * p - d * (k - 1) - 1;
  return span < 0 ? 0 : span / s + 1;
}

INVOLUTION_HOST_DEVICE int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

INVOLUTION_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }

}  // namespace involution_mm
