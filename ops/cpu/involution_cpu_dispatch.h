// The entry points of one kernel build: which kernel family runs for a call.
#pragma once

#include <tuple>

#include "involution_cpu_channel_vec.h"
#include "involution_cpu_common.h"
#include "involution_cpu_flat_avx512.h"
#include "involution_cpu_panel.h"

namespace involution_mm {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

// The forward's dense channel-vectorised kernel (K = 7) beats the flat one where a group is
// one vector of channels and an output row fills its register block of pixels: aligned loads
// and broadcast weights, against shifted loads that straddle cache lines. Measured at 1 thread
// on RedNet-50's shapes: 0.64-0.86x the flat kernel's time from 14x14 to 56x56 in float32,
// 0.87-0.98x in bfloat16; 7x7 rows fill less than a block, and there it took 1.15x.
template <typename acc_t>
inline bool dense_forward_preferred(const InvolutionShape& sh) {
  return sh.channels_per_group() == Vec<acc_t>::size() && sh.stride == 1 && sh.dilation == 1 &&
         sh.K == 7 && sh.Wo >= dense_pixel_block<1>();
}

// The forward_cv_impl instance for this geometry: dense ones for K = 3 and 7 (RedNet's stems
// and blocks), the general one otherwise.
template <typename scalar_t, int64_t NV>
inline auto forward_cv_kernel(const InvolutionShape& sh) {
  if (sh.stride == 1 && sh.dilation == 1 && sh.K == 7) return &forward_cv_impl<scalar_t, NV, 7>;
  if (sh.stride == 1 && sh.dilation == 1 && sh.K == 3) return &forward_cv_impl<scalar_t, NV, 3>;
  return &forward_cv_impl<scalar_t, NV, 0>;
}

template <typename scalar_t, int64_t NV>
inline auto grad_input_cv_kernel(const InvolutionShape& sh) {
  if (sh.stride == 1 && sh.dilation == 1 && sh.K == 7) return &grad_input_cv_impl<scalar_t, NV, 7>;
  if (sh.stride == 1 && sh.dilation == 1 && sh.K == 3) return &grad_input_cv_impl<scalar_t, NV, 3>;
  return &grad_input_cv_impl<scalar_t, NV, 0>;
}

// Runs the channel-vectorised kernel when C/G is 1 or 2 vectors, else the general one.
template <typename acc_t, typename CV1, typename CV2, typename General>
inline void choose_kernel(int64_t channels_per_group, const CV1& cv1, const CV2& cv2,
                          const General& general) {
  constexpr int64_t VS = Vec<acc_t>::size();
  if (channels_per_group == VS) return cv1();
  if (channels_per_group == 2 * VS) return cv2();
  general();
}

template <typename Fn>
void dispatch_dtype(c10::ScalarType dtype, const Fn& fn) {
  switch (dtype) {
    case c10::ScalarType::Float: return fn(float{});
    case c10::ScalarType::Double: return fn(double{});
    case c10::ScalarType::Half: return fn(c10::Half{});
    case c10::ScalarType::BFloat16: return fn(c10::BFloat16{});
    default: TORCH_CHECK(false, "involution: unsupported dtype ", dtype);
  }
}

}  // namespace

void forward(const InvolutionShape& shape, c10::ScalarType dtype, const void* input,
             const Strides4& input_strides, const void* weight, void* output,
             const Strides4& output_strides) {
  dispatch_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto args = std::make_tuple(shape, static_cast<const scalar_t*>(input), input_strides,
                                      static_cast<const scalar_t*>(weight),
                                      static_cast<scalar_t*>(output), output_strides);
#if defined(CPU_CAPABILITY_AVX512)
    if (flat_kernels_apply(shape) && !dense_forward_preferred<at::opmath_type<scalar_t>>(shape))
      return std::apply(gather_flat_impl<scalar_t, false>, args);
#endif
    choose_kernel<at::opmath_type<scalar_t>>(
        shape.channels_per_group(),
        [&] { std::apply(forward_cv_kernel<scalar_t, 1>(shape), args); },
        [&] { std::apply(forward_cv_kernel<scalar_t, 2>(shape), args); },
        [&] { std::apply(forward_impl<scalar_t>, args); });
  });
}

void grad_input(const InvolutionShape& shape, c10::ScalarType dtype, const void* grad_output,
                const Strides4& grad_output_strides, const void* weight, void* grad_input,
                const Strides4& grad_input_strides) {
  dispatch_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto args = std::make_tuple(shape, static_cast<const scalar_t*>(grad_output),
                                      grad_output_strides, static_cast<const scalar_t*>(weight),
                                      static_cast<scalar_t*>(grad_input), grad_input_strides);
#if defined(CPU_CAPABILITY_AVX512)
    if (flat_kernels_apply(shape)) return std::apply(gather_flat_impl<scalar_t, true>, args);
#endif
    choose_kernel<at::opmath_type<scalar_t>>(
        shape.channels_per_group(),
        [&] { std::apply(grad_input_cv_kernel<scalar_t, 1>(shape), args); },
        [&] { std::apply(grad_input_cv_kernel<scalar_t, 2>(shape), args); },
        [&] { std::apply(grad_input_impl<scalar_t>, args); });
  });
}

void grad_weight(const InvolutionShape& shape, c10::ScalarType dtype, const void* grad_output,
                 const Strides4& grad_output_strides, const void* input,
                 const Strides4& input_strides, void* grad_weight) {
  dispatch_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto args = std::make_tuple(shape, static_cast<const scalar_t*>(grad_output),
                                      grad_output_strides, static_cast<const scalar_t*>(input),
                                      input_strides, static_cast<scalar_t*>(grad_weight));
#if defined(CPU_CAPABILITY_AVX512)
    if (flat_kernels_apply(shape)) return std::apply(grad_weight_flat_impl<scalar_t>, args);
#endif
    std::apply(grad_weight_impl<scalar_t>, args);
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace involution_mm
