// CUDA forward kernel of involution: out[b, c, i, j] = sum_{u,v} w[b, g, u, v, i, j] *
// x[b, c, i*s - p + u*d, j*s - p + v*d]. The per-thread work is forward_item in
// involution_cuda_helpers.cuh; this file holds the kernel and its launcher.
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
    involution_forward_kernel(const Sizes<index_t> s, const scalar_t* __restrict__ x,
                              const Strides4<index_t> xs, const scalar_t* __restrict__ w,
                              scalar_t* __restrict__ out, const Strides4<index_t> os,
                              const int64_t items) {
  using acc_t = at::opmath_type<scalar_t>;
  // 64-bit loop counter: n + step cannot wrap even when items is close to 2^31.
  const int64_t step = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < items;
       n += step) {
    forward_item<KT, scalar_t, acc_t, index_t>(s, x, xs, w, out, os, static_cast<index_t>(n));
  }
}

template <typename scalar_t, typename index_t>
void launch_forward(const InvolutionShape& shape, const ChunkPlan& plan, int64_t items,
                    int64_t sms, const at::Tensor& input, const at::Tensor& weight,
                    const at::Tensor& output) {
  const Sizes<index_t> s = make_sizes<index_t>(shape, plan);
  const Strides4<index_t> xs = strides_of<index_t>(input);
  const Strides4<index_t> os = strides_of<index_t>(output);
  const scalar_t* x = input.const_data_ptr<scalar_t>();
  const scalar_t* w = weight.const_data_ptr<scalar_t>();
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  const dim3 grid(static_cast<unsigned int>(grid_blocks(items, sms)));
  const dim3 block(kThreadsPerBlock);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  dispatch_kernel_size(shape.K, [&](auto kt) {
    constexpr int KT = decltype(kt)::value;
    involution_forward_kernel<KT, scalar_t, index_t>
        <<<grid, block, 0, stream>>>(s, x, xs, w, out, os, items);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

void forward_cuda(const InvolutionShape& shape, const at::Tensor& input,
                  const at::Tensor& weight, const at::Tensor& output) {
  const int64_t sms = current_sm_count();
  const ChunkPlan plan = plan_channel_chunks(shape.B * shape.G * shape.Ho * shape.Wo,
                                             shape.channels_per_group(), target_items(sms));
  const int64_t items = forward_items(shape, plan);
  const bool int32 = fits_int32(extent_of(input), extent_of(output), weight.numel(), items,
                                2 * shape.C, coordinate_bound(shape));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "involution_forward_cuda", [&] {
        if (int32) {
          launch_forward<scalar_t, int32_t>(shape, plan, items, sms, input, weight, output);
        } else {
          launch_forward<scalar_t, int64_t>(shape, plan, items, sms, input, weight, output);
        }
      });
}

}  // namespace cuda
}  // namespace involution_mm
