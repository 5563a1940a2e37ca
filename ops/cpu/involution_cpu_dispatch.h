// The entry points of one kernel build (involution_cpu_kernels.h) and the one place that
// decides which kernel family runs for a call.
#pragma once

#include <tuple>

#include "involution_cpu_channel_vec.h"
#include "involution_cpu_common.h"
#include "involution_cpu_flat.h"
#include "involution_cpu_panel.h"

namespace involution_mm {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

// Which kernel family runs, for every build and dtype (acc_t: the accumulation type):
//  1. stride 1 with same padding (Ho = H, Wo = W), AVX-512 and AVX2 builds: the row-flattened
//     kernels, whose vector loop over flat pixel indices keeps every lane busy whatever W is
//     (the DEFAULT build has no masked loads and stores for them), except where a
//     channel-vectorised kernel is faster: with AVX2 wherever one exists (broadcast weights
//     and aligned loads against loads that straddle cache lines, which cost twice); with
//     AVX-512, whose masked loads and FMAs cost what plain ones do, only the dense forward
//     (groups of exactly one vector of channels, K = 7, stride 1, dilation 1, rows of at least
//     a register block of pixels).
//  2. forward and grad_input with C/G of one or two vectors: the channel-vectorised kernels.
//  3. Everything else: the panel kernels (grad_weight has no channel-vectorised kernel).
enum class Op { kForward, kGradInput, kGradWeight };
enum class Family { kPanel, kChannelVec, kFlat };

template <typename acc_t>
inline Family kernel_family(Op op, const InvolutionShape& sh) {
  const int64_t CG = sh.channels_per_group(), VS = Vec<acc_t>::size();
  const bool channel_vec = op != Op::kGradWeight && (CG == VS || CG == 2 * VS);
#if defined(INVOLUTION_CPU_FLAT_KERNELS)
  const bool same_stride1 = sh.stride == 1 && sh.Ho == sh.H && sh.Wo == sh.W;
#if defined(CPU_CAPABILITY_AVX512)
  const bool channel_vec_first = op == Op::kForward && CG == VS && sh.stride == 1 &&
                                 sh.dilation == 1 && sh.K == 7 &&
                                 sh.Wo >= dense_pixel_block<1>();
#else
  const bool channel_vec_first = channel_vec;
#endif
  if (same_stride1 && !channel_vec_first) return Family::kFlat;
#endif
  if (channel_vec) return Family::kChannelVec;
  return Family::kPanel;
}

// The instance of a channel-vectorised kernel for a call of that family: instance(NV, DenseK)
// returns kernel<scalar_t, NV, DenseK> for NV = C/G in vectors and, as BlockSize constants,
// DenseK = K for K = 3 and 7 at stride 1 and dilation 1 (RedNet's stems and blocks), else 0
// (any geometry).
template <typename acc_t, typename Instance>
inline auto channel_vec_kernel(const InvolutionShape& sh, const Instance& instance) {
  auto with_vectors = [&](auto nv) {
    if (sh.stride == 1 && sh.dilation == 1 && sh.K == 7) return instance(nv, BlockSize<7>{});
    if (sh.stride == 1 && sh.dilation == 1 && sh.K == 3) return instance(nv, BlockSize<3>{});
    return instance(nv, BlockSize<0>{});
  };
  if (sh.channels_per_group() == Vec<acc_t>::size()) return with_vectors(BlockSize<1>{});
  return with_vectors(BlockSize<2>{});
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

// Each entry point runs the kernel of the family that kernel_family names; `default` is the
// panel family (builds without the flat kernels never get Family::kFlat).

void forward(const InvolutionShape& shape, c10::ScalarType dtype, const void* input,
             const Strides4& input_strides, const void* weight, void* output,
             const Strides4& output_strides, const OutputEpilogue& epilogue) {
  dispatch_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto args = std::make_tuple(shape, static_cast<const scalar_t*>(input), input_strides,
                                      static_cast<const scalar_t*>(weight),
                                      static_cast<scalar_t*>(output), output_strides, epilogue);
    using acc_t = at::opmath_type<scalar_t>;
    switch (kernel_family<acc_t>(Op::kForward, shape)) {
#if defined(INVOLUTION_CPU_FLAT_KERNELS)
      case Family::kFlat: return std::apply(gather_flat_impl<scalar_t, false>, args);
#endif
      case Family::kChannelVec: {
        const auto kernel = channel_vec_kernel<acc_t>(shape, [](auto nv, auto dense) {
          return &forward_cv_impl<scalar_t, decltype(nv)::value, decltype(dense)::value>;
        });
        return std::apply(kernel, args);
      }
      default: return std::apply(forward_impl<scalar_t>, args);
    }
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
    using acc_t = at::opmath_type<scalar_t>;
    switch (kernel_family<acc_t>(Op::kGradInput, shape)) {
#if defined(INVOLUTION_CPU_FLAT_KERNELS)
      case Family::kFlat:  // the forward's gather, with no epilogue
        return std::apply([](const auto&... a) {
          return gather_flat_impl<scalar_t, true>(a..., OutputEpilogue{});
        }, args);
#endif
      case Family::kChannelVec: {
        const auto kernel = channel_vec_kernel<acc_t>(shape, [](auto nv, auto dense) {
          return &grad_input_cv_impl<scalar_t, decltype(nv)::value, decltype(dense)::value>;
        });
        return std::apply(kernel, args);
      }
      default: return std::apply(grad_input_impl<scalar_t>, args);
    }
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
    using acc_t = at::opmath_type<scalar_t>;
    switch (kernel_family<acc_t>(Op::kGradWeight, shape)) {
#if defined(INVOLUTION_CPU_FLAT_KERNELS)
      case Family::kFlat: return std::apply(grad_weight_flat_impl<scalar_t>, args);
#endif
      default: return std::apply(grad_weight_impl<scalar_t>, args);
    }
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace involution_mm
