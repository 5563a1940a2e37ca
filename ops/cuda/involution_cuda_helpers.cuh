// The per-thread work of the involution CUDA kernels, and the host-side planning of a launch.
//
// Everything here is plain C++ marked INVOLUTION_HOST_DEVICE (no __global__, no shared memory,
// no warp intrinsics), so the very same code that runs on the GPU also compiles with a host
// compiler: tests/cuda_kernel_emulator.cpp runs every work item on the CPU and compares it with
// a naive reference, which checks the index arithmetic on machines without a GPU.
//
// Layout of the work (NCHW-tuned, any strides accepted for the 4-d tensors; the weight and the
// weight gradient are contiguous (B, G, K, K, Ho, Wo)):
//  * forward: one item = one output pixel (i, j) of one group g and one chunk of that group's
//    channels. The K*K kernel values of the pixel are loaded once into registers and reused
//    for every channel of the chunk; items are ordered j fastest, so a warp reads and writes
//    consecutive addresses along W and the input rows it gathers overlap in L1.
//  * grad_input: the same gather with the roles swapped: one item = one input pixel (y, x) of
//    a group/chunk; it loads the (up to K*K) kernel values of the output positions that read
//    it, then loops over the chunk's channels. Every input-gradient element is written by
//    exactly one thread: no atomics.
//  * grad_weight: one item = one kernel row u of output pixel (i, j) of group g; it keeps the
//    K taps of that row in registers and sums grad_out * input over the group's channels,
//    reading grad_out once per channel. No atomics, deterministic.
// K in {1, 3, 5, 7} is a template parameter (register arrays, unrolled loops); any other K
// takes the generic items, which read the kernel values from global memory (L1-cached).
#pragma once

#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>

#include "../common/involution_shape.h"

#if defined(__CUDACC__)
#define INVOLUTION_UNROLL _Pragma("unroll")
#else
#define INVOLUTION_UNROLL
#endif

namespace involution_mm {
namespace cuda {

// Threads per block of every kernel (the kernels are compiled with __launch_bounds__ of it).
constexpr int kThreadsPerBlock = 256;
// The grid never has more than this many blocks per multiprocessor; grid-stride loops do the rest.
constexpr int64_t kMaxBlocksPerSM = 16;
// Splitting a group's channels for parallelism stops at about this many channels per item
// (see plan_channel_chunks), so each kernel value is read at most ceil(CG / 4) times.
constexpr int64_t kMinChunkChannels = 4;

// Element strides of a 4-d (B, C, H, W) tensor.
template <typename index_t>
struct Strides4 {
  index_t b, c, h, w;
};

// Sizes of a call in the kernels' index type. CG = C / G; the channels of group g are split
// into `chunks` chunks of `chunk_channels` (the last may be shorter).
template <typename index_t>
struct Sizes {
  index_t B, C, H, W, G, CG, K, Ho, Wo, stride, dilation, padding, chunks, chunk_channels;
};

struct ChunkPlan {
  int64_t chunks, chunk_channels;
};

template <typename T>
INVOLUTION_HOST_DEVICE T imin(T a, T b) {
  return a < b ? a : b;
}

// ---------------------------------------------------------------------------------------------
// Host-side planning (shared by the launchers and the emulator).

// Splits the CG channels of a group into chunks so that there are about `target_items` work
// items (items = B * G * pixels before splitting), with at most ceil(CG / kMinChunkChannels)
// chunks, so a chunk keeps about kMinChunkChannels channels or more.
inline ChunkPlan plan_channel_chunks(int64_t items, int64_t CG, int64_t target_items) {
  int64_t want = items > 0 ? ceil_div(target_items, items) : 1;
  const int64_t max_chunks = ceil_div(CG, kMinChunkChannels);
  if (want > max_chunks) want = max_chunks;
  if (want < 1) want = 1;
  const int64_t chunk_channels = ceil_div(CG, want);
  return {ceil_div(CG, chunk_channels), chunk_channels};
}

// Kernel sizes with a specialised (register-cached, unrolled) implementation; 0 = generic.
inline int specialised_kernel_size(int64_t K) {
  return (K == 1 || K == 3 || K == 5 || K == 7) ? static_cast<int>(K) : 0;
}

// Work items of each kernel.
inline int64_t forward_items(const InvolutionShape& s, const ChunkPlan& plan) {
  return s.B * s.G * plan.chunks * s.Ho * s.Wo;
}
inline int64_t grad_input_items(const InvolutionShape& s, const ChunkPlan& plan) {
  return s.B * s.G * plan.chunks * s.H * s.W;
}
inline int64_t grad_weight_items(const InvolutionShape& s) {
  // Specialised K: one item per kernel row u; generic: one item per weight element.
  const int64_t per_row = specialised_kernel_size(s.K) != 0 ? 1 : s.K;
  return s.B * s.G * s.K * per_row * s.Ho * s.Wo;
}

// Largest magnitude of the spatial coordinates the items compute (i*stride, y + padding, ...):
// every one lies in [-(padding + dilation*(K-1)), H + 2*padding + stride] (W alike).
inline int64_t coordinate_bound(const InvolutionShape& s) {
  const int64_t hw = s.H > s.W ? s.H : s.W;
  return hw + 2 * s.padding + s.stride + s.K * s.dilation + 1;
}

// True when all the given (non-negative) magnitudes fit a 32-bit signed index.
template <typename... Ts>
inline bool fits_int32(Ts... values) {
  const int64_t limit = std::numeric_limits<int32_t>::max();
  bool ok = true;
  ((ok = ok && values >= 0 && values <= limit), ...);
  return ok;
}

// Blocks for `items` grid-stride items: enough to fill the device, never above a small multiple
// of its multiprocessors (so gridDim.x stays far below every limit), at least one.
inline int64_t grid_blocks(int64_t items, int64_t sm_count) {
  int64_t blocks = ceil_div(items, kThreadsPerBlock);
  const int64_t cap = (sm_count > 0 ? sm_count : 1) * kMaxBlocksPerSM;
  if (blocks > cap) blocks = cap;
  return blocks < 1 ? 1 : blocks;
}

template <typename index_t>
inline Sizes<index_t> make_sizes(const InvolutionShape& s, const ChunkPlan& plan) {
  return {static_cast<index_t>(s.B),        static_cast<index_t>(s.C),
          static_cast<index_t>(s.H),        static_cast<index_t>(s.W),
          static_cast<index_t>(s.G),        static_cast<index_t>(s.C / s.G),
          static_cast<index_t>(s.K),        static_cast<index_t>(s.Ho),
          static_cast<index_t>(s.Wo),       static_cast<index_t>(s.stride),
          static_cast<index_t>(s.dilation), static_cast<index_t>(s.padding),
          static_cast<index_t>(plan.chunks), static_cast<index_t>(plan.chunk_channels)};
}

// Calls f(std::integral_constant<int, KT>{}) with KT = specialised_kernel_size(K).
template <typename F>
inline void dispatch_kernel_size(int64_t K, F&& f) {
  switch (specialised_kernel_size(K)) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    default: f(std::integral_constant<int, 0>{}); break;
  }
}

// ---------------------------------------------------------------------------------------------
// Work items. Item index n (0 <= n < *_items) is decomposed with the fastest dimension first.

// Channels [begin, end) of chunk `chunk` of group g.
template <typename index_t>
INVOLUTION_HOST_DEVICE void channel_range(const Sizes<index_t>& s, index_t g, index_t chunk,
                                          index_t& begin, index_t& end) {
  begin = g * s.CG + chunk * s.chunk_channels;
  end = imin<index_t>(begin + s.chunk_channels, (g + 1) * s.CG);
}

// A forward or grad-input item: pixel (row, col) of a height x width plane, group g, the
// channels [c_begin, c_end) of one chunk, batch b. Order: col, row, chunk, g, b.
template <typename index_t>
struct PixelItem {
  index_t col, row, g, b, c_begin, c_end;
};

template <typename index_t>
INVOLUTION_HOST_DEVICE PixelItem<index_t> pixel_item(const Sizes<index_t>& s, index_t n,
                                                     index_t height, index_t width) {
  PixelItem<index_t> item;
  item.col = n % width;
  n /= width;
  item.row = n % height;
  n /= height;
  const index_t chunk = n % s.chunks;
  n /= s.chunks;
  item.g = n % s.G;
  item.b = n / s.G;
  channel_range(s, item.g, chunk, item.c_begin, item.c_end);
  return item;
}

// Forward item: output pixel (i, j), group g, channel chunk. Order: j, i, chunk, g, b.
// out[b, c, i, j] = sum_{u,v} w[b, g, u, v, i, j] * x[b, c, i*s - p + u*d, j*s - p + v*d].
template <int KT, typename scalar_t, typename acc_t, typename index_t>
INVOLUTION_HOST_DEVICE void forward_item(const Sizes<index_t>& s, const scalar_t* __restrict__ x,
                                         const Strides4<index_t>& xs,
                                         const scalar_t* __restrict__ w,
                                         scalar_t* __restrict__ out,
                                         const Strides4<index_t>& os, index_t n) {
  const PixelItem<index_t> item = pixel_item(s, n, s.Ho, s.Wo);
  const index_t j = item.col, i = item.row, g = item.g, b = item.b;
  const index_t c_begin = item.c_begin, c_end = item.c_end;

  const index_t plane = s.Ho * s.Wo;
  const index_t y0 = i * s.stride - s.padding;
  const index_t x0 = j * s.stride - s.padding;
  const scalar_t* xb = x + b * xs.b;
  scalar_t* ob = out + b * os.b + i * os.h + j * os.w;

  if constexpr (KT > 0) {
    constexpr int K = KT;
    // The pixel's K*K kernel values, read once (coalesced along j) and kept in registers.
    const scalar_t* wp = w + (b * s.G + g) * (K * K * plane) + i * s.Wo + j;
    acc_t wk[K * K];
    INVOLUTION_UNROLL
    for (int t = 0; t < K * K; ++t) wk[t] = static_cast<acc_t>(wp[t * plane]);
    // Row/column offsets of the taps in the input and whether they fall inside it.
    index_t roff[K], coff[K];
    bool rok[K], cok[K];
    INVOLUTION_UNROLL
    for (int u = 0; u < K; ++u) {
      const index_t y = y0 + u * s.dilation;
      rok[u] = y >= 0 && y < s.H;
      roff[u] = rok[u] ? y * xs.h : 0;
    }
    INVOLUTION_UNROLL
    for (int v = 0; v < K; ++v) {
      const index_t xx = x0 + v * s.dilation;
      cok[v] = xx >= 0 && xx < s.W;
      coff[v] = cok[v] ? xx * xs.w : 0;
    }
    for (index_t c = c_begin; c < c_end; ++c) {
      const scalar_t* xc = xb + c * xs.c;
      acc_t acc = 0;
      INVOLUTION_UNROLL
      for (int u = 0; u < K; ++u) {
        if (!rok[u]) continue;
        const scalar_t* xr = xc + roff[u];
        INVOLUTION_UNROLL
        for (int v = 0; v < K; ++v) {
          if (cok[v]) acc += wk[u * K + v] * static_cast<acc_t>(xr[coff[v]]);
        }
      }
      ob[c * os.c] = static_cast<scalar_t>(acc);
    }
  } else {
    const index_t K = s.K;
    const scalar_t* wp = w + (b * s.G + g) * (K * K * plane) + i * s.Wo + j;
    for (index_t c = c_begin; c < c_end; ++c) {
      const scalar_t* xc = xb + c * xs.c;
      acc_t acc = 0;
      for (index_t u = 0; u < K; ++u) {
        const index_t y = y0 + u * s.dilation;
        if (y < 0 || y >= s.H) continue;
        const scalar_t* xr = xc + y * xs.h;
        const scalar_t* wr = wp + u * K * plane;
        for (index_t v = 0; v < K; ++v) {
          const index_t xx = x0 + v * s.dilation;
          if (xx < 0 || xx >= s.W) continue;
          acc += static_cast<acc_t>(wr[v * plane]) * static_cast<acc_t>(xr[xx * xs.w]);
        }
      }
      ob[c * os.c] = static_cast<scalar_t>(acc);
    }
  }
}

// The output index o (row or column) whose tap t reads input coordinate `in`:
// o * stride - padding + t * dilation == in, 0 <= o < out_size. Returns false if there is none.
template <typename index_t>
INVOLUTION_HOST_DEVICE bool source_index(index_t in, index_t t, const Sizes<index_t>& s,
                                         index_t out_size, index_t& o) {
  const index_t num = in + s.padding - t * s.dilation;
  if (num < 0) return false;
  o = num / s.stride;
  return o * s.stride == num && o < out_size;
}

// grad_input item: input pixel (y, x), group g, channel chunk. Order: x, y, chunk, g, b.
// gx[b, c, y, x] = sum over taps (u, v) and output pixels (i, j) with i*s - p + u*d == y and
// j*s - p + v*d == x of w[b, g, u, v, i, j] * go[b, c, i, j].
template <int KT, typename scalar_t, typename acc_t, typename index_t>
INVOLUTION_HOST_DEVICE void grad_input_item(const Sizes<index_t>& s,
                                            const scalar_t* __restrict__ go,
                                            const Strides4<index_t>& gs,
                                            const scalar_t* __restrict__ w,
                                            scalar_t* __restrict__ gx,
                                            const Strides4<index_t>& xs, index_t n) {
  const PixelItem<index_t> item = pixel_item(s, n, s.H, s.W);
  const index_t xx = item.col, yy = item.row, g = item.g, b = item.b;
  const index_t c_begin = item.c_begin, c_end = item.c_end;

  const index_t plane = s.Ho * s.Wo;
  const scalar_t* gb = go + b * gs.b;
  scalar_t* db = gx + b * xs.b + yy * xs.h + xx * xs.w;

  if constexpr (KT > 0) {
    constexpr int K = KT;
    const scalar_t* wb = w + (b * s.G + g) * (K * K * plane);
    index_t rows[K], cols[K];
    bool rok[K], cok[K];
    INVOLUTION_UNROLL
    for (int u = 0; u < K; ++u) {
      index_t o = 0;
      rok[u] = source_index<index_t>(yy, u, s, s.Ho, o);
      rows[u] = rok[u] ? o : 0;
    }
    INVOLUTION_UNROLL
    for (int v = 0; v < K; ++v) {
      index_t o = 0;
      cok[v] = source_index<index_t>(xx, v, s, s.Wo, o);
      cols[v] = cok[v] ? o : 0;
    }
    // Kernel values of the contributing taps, read once for all channels of the chunk.
    acc_t wk[K * K];
    INVOLUTION_UNROLL
    for (int u = 0; u < K; ++u) {
      INVOLUTION_UNROLL
      for (int v = 0; v < K; ++v) {
        wk[u * K + v] = (rok[u] && cok[v])
                            ? static_cast<acc_t>(
                                  wb[(u * K + v) * plane + rows[u] * s.Wo + cols[v]])
                            : acc_t(0);
      }
    }
    index_t roff[K], coff[K];
    INVOLUTION_UNROLL
    for (int u = 0; u < K; ++u) roff[u] = rows[u] * gs.h;
    INVOLUTION_UNROLL
    for (int v = 0; v < K; ++v) coff[v] = cols[v] * gs.w;
    for (index_t c = c_begin; c < c_end; ++c) {
      const scalar_t* gc = gb + c * gs.c;
      acc_t acc = 0;
      INVOLUTION_UNROLL
      for (int u = 0; u < K; ++u) {
        if (!rok[u]) continue;
        const scalar_t* gr = gc + roff[u];
        INVOLUTION_UNROLL
        for (int v = 0; v < K; ++v) {
          if (cok[v]) acc += wk[u * K + v] * static_cast<acc_t>(gr[coff[v]]);
        }
      }
      db[c * xs.c] = static_cast<scalar_t>(acc);
    }
  } else {
    const index_t K = s.K;
    const scalar_t* wb = w + (b * s.G + g) * (K * K * plane);
    for (index_t c = c_begin; c < c_end; ++c) {
      const scalar_t* gc = gb + c * gs.c;
      acc_t acc = 0;
      for (index_t u = 0; u < K; ++u) {
        index_t i = 0;
        if (!source_index<index_t>(yy, u, s, s.Ho, i)) continue;
        for (index_t v = 0; v < K; ++v) {
          index_t j = 0;
          if (!source_index<index_t>(xx, v, s, s.Wo, j)) continue;
          acc += static_cast<acc_t>(wb[(u * K + v) * plane + i * s.Wo + j]) *
                 static_cast<acc_t>(gc[i * gs.h + j * gs.w]);
        }
      }
      db[c * xs.c] = static_cast<scalar_t>(acc);
    }
  }
}

// grad_weight item (contiguous grad_weight (B, G, K, K, Ho, Wo)).
// Specialised K: kernel row u of output pixel (i, j) of group g, all K taps; order j, i, u, g, b.
// Generic K: one element (b, g, u, v, i, j); order j, i, v, u, g, b (the memory order).
// gw[b, g, u, v, i, j] = sum_{c in group g} go[b, c, i, j] * x[b, c, i*s - p + u*d, j*s - p + v*d].
template <int KT, typename scalar_t, typename acc_t, typename index_t>
INVOLUTION_HOST_DEVICE void grad_weight_item(const Sizes<index_t>& s,
                                             const scalar_t* __restrict__ go,
                                             const Strides4<index_t>& gs,
                                             const scalar_t* __restrict__ x,
                                             const Strides4<index_t>& xs,
                                             scalar_t* __restrict__ gw, index_t n) {
  const index_t j = n % s.Wo;
  n /= s.Wo;
  const index_t i = n % s.Ho;
  n /= s.Ho;
  const index_t plane = s.Ho * s.Wo;

  if constexpr (KT > 0) {
    constexpr int K = KT;
    const index_t u = n % K;
    n /= K;
    const index_t g = n % s.G;
    const index_t b = n / s.G;
    scalar_t* gwp = gw + ((b * s.G + g) * K + u) * (K * plane) + i * s.Wo + j;
    const index_t y = i * s.stride - s.padding + u * s.dilation;
    if (y < 0 || y >= s.H) {
      INVOLUTION_UNROLL
      for (int v = 0; v < K; ++v) gwp[v * plane] = static_cast<scalar_t>(acc_t(0));
      return;
    }
    const index_t x0 = j * s.stride - s.padding;
    index_t coff[K];
    bool cok[K];
    INVOLUTION_UNROLL
    for (int v = 0; v < K; ++v) {
      const index_t xx = x0 + v * s.dilation;
      cok[v] = xx >= 0 && xx < s.W;
      coff[v] = cok[v] ? xx * xs.w : 0;
    }
    acc_t acc[K];
    INVOLUTION_UNROLL
    for (int v = 0; v < K; ++v) acc[v] = 0;
    const scalar_t* gp = go + b * gs.b + i * gs.h + j * gs.w;
    const scalar_t* xr = x + b * xs.b + y * xs.h;
    const index_t c_end = (g + 1) * s.CG;
    for (index_t c = g * s.CG; c < c_end; ++c) {
      const acc_t gval = static_cast<acc_t>(gp[c * gs.c]);
      const scalar_t* xc = xr + c * xs.c;
      INVOLUTION_UNROLL
      for (int v = 0; v < K; ++v) {
        if (cok[v]) acc[v] += gval * static_cast<acc_t>(xc[coff[v]]);
      }
    }
    INVOLUTION_UNROLL
    for (int v = 0; v < K; ++v) gwp[v * plane] = static_cast<scalar_t>(acc[v]);
  } else {
    const index_t K = s.K;
    const index_t v = n % K;
    n /= K;
    const index_t u = n % K;
    n /= K;
    const index_t g = n % s.G;
    const index_t b = n / s.G;
    scalar_t* gwp = gw + (((b * s.G + g) * K + u) * K + v) * plane + i * s.Wo + j;
    const index_t y = i * s.stride - s.padding + u * s.dilation;
    const index_t xx = j * s.stride - s.padding + v * s.dilation;
    acc_t acc = 0;
    if (y >= 0 && y < s.H && xx >= 0 && xx < s.W) {
      const scalar_t* gp = go + b * gs.b + i * gs.h + j * gs.w;
      const scalar_t* xp = x + b * xs.b + y * xs.h + xx * xs.w;
      const index_t c_end = (g + 1) * s.CG;
      for (index_t c = g * s.CG; c < c_end; ++c)
        acc += static_cast<acc_t>(gp[c * gs.c]) * static_cast<acc_t>(xp[c * xs.c]);
    }
    *gwp = static_cast<scalar_t>(acc);
  }
}

}  // namespace cuda
}  // namespace involution_mm

// ---------------------------------------------------------------------------------------------
// Launch utilities for the .cu files (they need ATen and the CUDA runtime, which the host-only
// emulator does not have).
#if defined(__CUDACC__)
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime_api.h>

#include <vector>

namespace involution_mm {
namespace cuda {

template <typename index_t>
inline Strides4<index_t> strides_of(const at::Tensor& t) {
  return {static_cast<index_t>(t.stride(0)), static_cast<index_t>(t.stride(1)),
          static_cast<index_t>(t.stride(2)), static_cast<index_t>(t.stride(3))};
}

// One past the largest element offset of a non-empty tensor (its numel() when dense).
inline int64_t extent_of(const at::Tensor& t) {
  int64_t extent = 1;
  for (int64_t d = 0; d < t.dim(); ++d) extent += (t.size(d) - 1) * t.stride(d);
  return extent;
}

// Multiprocessors of the current device. Queried once per process for every device (thread-safe
// static initialisation), so no CUDA runtime query happens during CUDA graph capture.
inline int64_t current_sm_count() {
  static const std::vector<int> counts = [] {
    std::vector<int> sms(static_cast<size_t>(c10::cuda::device_count()), 1);
    for (size_t d = 0; d < sms.size(); ++d) {
      int n = 0;
      C10_CUDA_CHECK(
          cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, static_cast<int>(d)));
      sms[d] = n > 0 ? n : 1;
    }
    return sms;
  }();
  const auto device = static_cast<size_t>(c10::cuda::current_device());
  return device < counts.size() ? counts[device] : 1;
}

// Work items wanted for a memory-bound kernel: two full waves of resident threads (2048 per SM).
inline int64_t target_items(int64_t sm_count) { return sm_count * 2048 * 2; }

}  // namespace cuda
}  // namespace involution_mm
#endif  // __CUDACC__
