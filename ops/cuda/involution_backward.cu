// CUDA backward kernels of involution, both in gather form (no atomics, deterministic):
//  grad_input[b, c, y, x] = sum of w[b, g, u, v, i, j] * grad_out[b, c, i, j] over the output
//      pixels (i, j) and taps (u, v) that read input pixel (y, x);
//  grad_weight[b, g, u, v, i, j] = sum over the channels c of group g of
//      grad_out[b, c, i, j] * x[b, c, i*s - p + u*d, j*s - p + v*d].
// The per-thread work is grad_input_item / grad_weight_item in involution_cuda_helpers.cuh.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "involution_cuda.h"
#include "involution_cuda_helpers.cuh"

namespace involution_mm {
namespace cuda {
namespace {

template <int KT, typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    involution_grad_input_kernel(const Sizes<index_t> s, const scalar_t* __restrict__ go,
                                 const Strides4<index_t> gs, const scalar_t* __restrict__ w,
                                 scalar_t* __restrict__ gx, const Strides4<index_t> xs,
                                 const int64_t items) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t step = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < items;
       n += step) {
    grad_input_item<KT, scalar_t, acc_t, index_t>(s, go, gs, w, gx, xs,
                                                  static_cast<index_t>(n));
  }
}

template <int KT, typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    involution_grad_weight_kernel(const Sizes<index_t> s, const scalar_t* __restrict__ go,
                                  const Strides4<index_t> gs, const scalar_t* __restrict__ x,
                                  const Strides4<index_t> xs, scalar_t* __restrict__ gw,
                                  const int64_t items) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t step = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < items;
       n += step) {
    grad_weight_item<KT, scalar_t, acc_t, index_t>(s, go, gs, x, xs, gw,
                                                   static_cast<index_t>(n));
  }
}

template <typename scalar_t, typename index_t>
void launch_grad_input(const InvolutionShape& shape, const ChunkPlan& plan, int64_t items,
                       int64_t sms, const at::Tensor& grad_output, const at::Tensor& weight,
                       const at::Tensor& grad_input) {
  const Sizes<index_t> s = make_sizes<index_t>(shape, plan);
  const Strides4<index_t> gs = strides_of<index_t>(grad_output);
  const Strides4<index_t> xs = strides_of<index_t>(grad_input);
  const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
  const scalar_t* w = weight.const_data_ptr<scalar_t>();
  scalar_t* gx = grad_input.mutable_data_ptr<scalar_t>();
  const dim3 grid(static_cast<unsigned int>(grid_blocks(items, sms)));
  const dim3 block(kThreadsPerBlock);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  dispatch_kernel_size(shape.K, [&](auto kt) {
    constexpr int KT = decltype(kt)::value;
    involution_grad_input_kernel<KT, scalar_t, index_t>
        <<<grid, block, 0, stream>>>(s, go, gs, w, gx, xs, items);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

template <typename scalar_t, typename index_t>
void launch_grad_weight(const InvolutionShape& shape, int64_t items, int64_t sms,
                        const at::Tensor& grad_output, const at::Tensor& input,
                        const at::Tensor& grad_weight) {
  // grad_weight does not split groups into chunks: every item sums over all the group's channels.
  const Sizes<index_t> s = make_sizes<index_t>(shape, ChunkPlan{1, shape.channels_per_group()});
  const Strides4<index_t> gs = strides_of<index_t>(grad_output);
  const Strides4<index_t> xs = strides_of<index_t>(input);
  const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
  const scalar_t* x = input.const_data_ptr<scalar_t>();
  scalar_t* gw = grad_weight.mutable_data_ptr<scalar_t>();
  const dim3 grid(static_cast<unsigned int>(grid_blocks(items, sms)));
  const dim3 block(kThreadsPerBlock);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  dispatch_kernel_size(shape.K, [&](auto kt) {
    constexpr int KT = decltype(kt)::value;
    involution_grad_weight_kernel<KT, scalar_t, index_t>
        <<<grid, block, 0, stream>>>(s, go, gs, x, xs, gw, items);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

void grad_input_cuda(const InvolutionShape& shape, const at::Tensor& grad_output,
                     const at::Tensor& weight, const at::Tensor& grad_input) {
  const int64_t sms = current_sm_count();
  const ChunkPlan plan = plan_channel_chunks(shape.B * shape.G * shape.H * shape.W,
                                             shape.channels_per_group(), target_items(sms));
  const int64_t items = grad_input_items(shape, plan);
  const bool int32 = fits_int32(extent_of(grad_output), extent_of(grad_input), weight.numel(),
                                items, 2 * shape.C, coordinate_bound(shape));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_output.scalar_type(), "involution_grad_input_cuda", [&] {
        if (int32) {
          launch_grad_input<scalar_t, int32_t>(shape, plan, items, sms, grad_output, weight,
                                               grad_input);
        } else {
          launch_grad_input<scalar_t, int64_t>(shape, plan, items, sms, grad_output, weight,
                                               grad_input);
        }
      });
}

void grad_weight_cuda(const InvolutionShape& shape, const at::Tensor& grad_output,
                      const at::Tensor& input, const at::Tensor& grad_weight) {
  const int64_t sms = current_sm_count();
  const int64_t items = grad_weight_items(shape);
  const bool int32 = fits_int32(extent_of(grad_output), extent_of(input), grad_weight.numel(),
                                items, 2 * shape.C, coordinate_bound(shape));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "involution_grad_weight_cuda", [&] {
        if (int32) {
          launch_grad_weight<scalar_t, int32_t>(shape, items, sms, grad_output, input,
                                                grad_weight);
        } else {
          launch_grad_weight<scalar_t, int64_t>(shape, items, sms, grad_output, input,
                                                grad_weight);
        }
      });
}

}  // namespace cuda
}  // namespace involution_mm
