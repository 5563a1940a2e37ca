// What the CPU kernel families share: vector helpers, channel blocking, the task grid, the
// layout conversions and the tap bookkeeping of grad_input. Like every header of the kernels
// it is compiled once per instruction set by involution_cpu_{default,avx2,avx512}.cpp, which
// define CPU_CAPABILITY first (as ATen's kernels do), so at::vec::Vectorized<float> holds 8
// floats (DEFAULT: an array, AVX2: a register) or 16 (AVX512); involution_cpu.cpp picks a
// build at run time, involution_cpu_dispatch.h a kernel family within it.
//
// Every family splits the work into tasks of (batch, group, block of rows) (TaskGrid); every
// output element is written by exactly one task, in a fixed order: no atomics, and results do
// not depend on the number of threads.
#pragma once

#ifndef CPU_CAPABILITY
#error "define CPU_CAPABILITY (DEFAULT, AVX2 or AVX512) before including the CPU kernel headers"
#endif

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "involution_cpu_kernels.h"

// at::parallel_for is a header template: in a file compiled without -fopenmp (setup.py passes
// it) it runs every task on the calling thread, although ATen itself uses OpenMP.
#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#error "compile the CPU kernels with -fopenmp, or at::parallel_for runs serially"
#endif

// Register blocks (arrays of Vec indexed by compile-time loops) stay in registers only when
// those loops are unrolled completely: the longest has RB + K - 1 = 18 trips (the dense
// kernels with AVX2 and 8-channel groups, 12 pixels, K = 7). INVOLUTION_NO_UNROLL keeps a loop
// whose body is such a block.
#if defined(__clang__)
#define INVOLUTION_UNROLL _Pragma("unroll")
#define INVOLUTION_NO_UNROLL _Pragma("nounroll")
#elif defined(__GNUC__)
#define INVOLUTION_UNROLL _Pragma("GCC unroll 32")
#define INVOLUTION_NO_UNROLL _Pragma("GCC unroll 1")
#else
#define INVOLUTION_UNROLL
#define INVOLUTION_NO_UNROLL
#endif

namespace involution_mm {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

template <typename T>
using Vec = at::vec::Vectorized<T>;

// Calls body(j, n) over [0, len) in vector-sized pieces; n < Vec::size() only for the tail.
template <typename acc_t, typename Body>
inline void for_each_vector(int64_t len, const Body& body) {
  constexpr int64_t vs = Vec<acc_t>::size();
  int64_t j = 0;
  for (; j + vs <= len; j += vs) body(j, vs);
  if (j < len) body(j, len - j);
}

template <typename acc_t>
inline Vec<acc_t> load(const acc_t* p, int64_t n) {
  return n == Vec<acc_t>::size() ? Vec<acc_t>::loadu(p) : Vec<acc_t>::loadu(p, n);
}

// dst[e] = src[e] for e < n, converting to acc_t (a memcpy when the types agree).
template <typename scalar_t, typename acc_t>
inline void convert_copy(const scalar_t* src, acc_t* dst, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    std::copy(src, src + n, dst);
  } else {
    for (int64_t e = 0; e < n; ++e) dst[e] = static_cast<acc_t>(src[e]);
  }
}

// dst[j * stride] = src[j] for j < n, converting to scalar_t.
template <typename scalar_t, typename acc_t>
inline void store_row(scalar_t* dst, int64_t stride, const acc_t* src, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (stride == 1) {
      std::copy(src, src + n, dst);
      return;
    }
  }
  for (int64_t j = 0; j < n; ++j) dst[j * stride] = static_cast<scalar_t>(src[j]);
}

// An OutputEpilogue for scalar_t outputs, applied by each forward kernel to the block of rows
// a task has just written.
template <typename scalar_t>
class ChannelEpilogue {
 public:
  using acc_t = at::opmath_type<scalar_t>;

  explicit ChannelEpilogue(const OutputEpilogue& e)
      : scale_(static_cast<const scalar_t*>(e.scale)),
        shift_(static_cast<const scalar_t*>(e.shift)), relu_(e.relu) {}

  // Channels [c0, c0 + channels), rows [r0, r0 + rows) of width `width` of item b of `out`.
  void apply(scalar_t* out, const Strides4& os, int64_t b, int64_t c0, int64_t channels,
             int64_t r0, int64_t rows, int64_t width) const {
    if (!scale_ && !shift_ && !relu_) return;
    if (relu_) apply_block<true>(out, os, b, c0, channels, r0, rows, width);
    else apply_block<false>(out, os, b, c0, channels, r0, rows, width);
  }

 private:
  template <bool kRelu>
  void apply_block(scalar_t* out, const Strides4& os, int64_t b, int64_t c0, int64_t channels,
                   int64_t r0, int64_t rows, int64_t width) const {
    scalar_t* first = out + b * os.b + c0 * os.c + r0 * os.h;
    if (os.c == 1) {  // channels_last: the channels of a pixel are one run
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < width; ++j)
          apply_run<kRelu, true>(first + r * os.h + j * os.w, 1, channels, c0);
      return;
    }
    // Rows contiguous in each channel (NCHW): one run per channel.
    const bool contiguous = os.w == 1 && os.h == width;
    const int64_t runs = contiguous ? 1 : rows, run_len = contiguous ? rows * width : width;
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t r = 0; r < runs; ++r)
        apply_run<kRelu, false>(first + c * os.c + r * os.h, os.w, run_len, c0 + c);
  }

  // p[e * stride] for e < n, of channel c + e (kAcrossChannels) or c. Multiply, then add (not
  // one FMA), as ATen's eval-mode batch norm computes it.
  template <bool kRelu, bool kAcrossChannels>
  void apply_run(scalar_t* p, int64_t stride, int64_t n, int64_t c) const {
    auto vec_of = [&](const scalar_t* v, int64_t e, acc_t none) {
      if (!v) return Vec<acc_t>(none);
      return kAcrossChannels ? Vec<acc_t>::loadu(v + c + e) : Vec<acc_t>(v[c]);
    };
    auto scalar_of = [&](const scalar_t* v, int64_t e, acc_t none) {
      return v ? static_cast<acc_t>(v[kAcrossChannels ? c + e : c]) : none;
    };
    int64_t e = 0;
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      if (stride == 1) {
        for (; e + Vec<acc_t>::size() <= n; e += Vec<acc_t>::size()) {
          Vec<acc_t> v = Vec<acc_t>::loadu(p + e) * vec_of(scale_, e, 1) + vec_of(shift_, e, 0);
          if constexpr (kRelu) v = at::vec::maximum(v, Vec<acc_t>(acc_t(0)));
          v.store(p + e);
        }
      }
    }
    for (; e < n; ++e) {
      acc_t v = static_cast<acc_t>(p[e * stride]) * scalar_of(scale_, e, 1) +
                scalar_of(shift_, e, 0);
      if constexpr (kRelu) v = std::max(v, acc_t(0));  // NaN < 0 is false: NaN stays
      p[e * stride] = static_cast<scalar_t>(v);
    }
  }

  const scalar_t* scale_;
  const scalar_t* shift_;
  bool relu_;
};

// ---- Tasks ------------------------------------------------------------------------------

// One task of a TaskGrid: rows [r0, r0 + rows) of batch item b, group g (bg = b * G + g).
struct Task {
  int64_t bg, b, g, r0, rows;
};

// The tasks of a kernel, (batch, group, block of rows) in that order, over `rows` rows (output
// rows, or input rows for grad_input). Blocks are big enough to amortise a task's halo, small
// enough to give every thread several tasks.
class TaskGrid {
 public:
  TaskGrid(const InvolutionShape& sh, int64_t rows)
      : G_(sh.G), rows_(rows), batch_groups_(sh.B * sh.G),
        rb_(rows_per_block(rows, batch_groups_)), blocks_(ceil_div(rows, rb_)) {}

  // Rows per task; only a grid's last block of rows may have fewer.
  int64_t block_rows() const { return rb_; }
  int64_t count() const { return batch_groups_ * blocks_; }

  Task operator()(int64_t task) const {
    const int64_t bg = task / blocks_, r0 = (task % blocks_) * rb_;
    return {bg, bg / G_, bg % G_, r0, std::min(rb_, rows_ - r0)};
  }

 private:
  static int64_t rows_per_block(int64_t rows, int64_t batch_groups) {
    const int64_t want_tasks = 4 * static_cast<int64_t>(at::get_num_threads());
    const int64_t blocks = std::max<int64_t>(1, (want_tasks + batch_groups - 1) / batch_groups);
    return std::clamp<int64_t>((rows + blocks - 1) / blocks, 1, 16);
  }

  int64_t G_, rows_, batch_groups_, rb_, blocks_;
};

// ---- Channel and pixel blocks -----------------------------------------------------------

// Vector registers of the build: 32 with AVX-512, 16 with AVX2 (and the DEFAULT build's arrays
// of 8 floats, which the compiler maps onto SSE register pairs).
constexpr int64_t kVectorRegisters = Vec<float>::size() >= 16 ? 32 : 16;

// Channels of one group computed together (panel and flat kernels): each weight vector is
// loaded once and used for up to kMaxChannelBlock channels, whose accumulators stay in
// registers.
constexpr int64_t kMaxChannelBlock = kVectorRegisters / 2;

template <int64_t N>
using BlockSize = std::integral_constant<int64_t, N>;

// Calls fn(c0, BlockSize<NC>) over [0, channels) in blocks of 16/8/4/2/1 channels.
template <typename Fn>
inline void for_each_channel_block(int64_t channels, const Fn& fn) {
  int64_t c0 = 0;
  auto run = [&](auto block) {
    for (; channels - c0 >= decltype(block)::value; c0 += decltype(block)::value) fn(c0, block);
  };
  if constexpr (kMaxChannelBlock >= 16) run(BlockSize<16>{});
  run(BlockSize<8>{});
  run(BlockSize<4>{});
  run(BlockSize<2>{});
  run(BlockSize<1>{});
}

// Calls block(j, BlockSize<RB>) over [0, n): RB = R, then 4, 2 and 1 for the tail.
template <int64_t R, typename Block>
inline void for_each_pixel_block(int64_t n, const Block& block) {
  int64_t j = 0;
  for (; j + R <= n; j += R) block(j, BlockSize<R>{});
  if constexpr (R > 4) {
    if (j + 4 <= n) block(j, BlockSize<4>{}), j += 4;
  }
  if constexpr (R > 2) {
    if (j + 2 <= n) block(j, BlockSize<2>{}), j += 2;
  }
  for (; j < n; ++j) block(j, BlockSize<1>{});
}

// ---- Layout conversions -----------------------------------------------------------------

#if defined(CPU_CAPABILITY_AVX2)
// 8x8 floats with in-lane unpacks and shuffles and one 128-bit lane exchange per row: 24
// shuffles, where three rounds of interleave2 take 48 lane-crossing permutes.
inline void transpose_8x8(Vec<float>* rows) {
  __m256 pairs[8], quads[8];
  INVOLUTION_UNROLL
  for (int k = 0; k < 4; ++k) {
    pairs[2 * k] = _mm256_unpacklo_ps(rows[2 * k], rows[2 * k + 1]);
    pairs[2 * k + 1] = _mm256_unpackhi_ps(rows[2 * k], rows[2 * k + 1]);
  }
  INVOLUTION_UNROLL
  for (int h = 0; h < 2; ++h) {
    const __m256* p = pairs + 4 * h;
    quads[4 * h + 0] = _mm256_shuffle_ps(p[0], p[2], _MM_SHUFFLE(1, 0, 1, 0));
    quads[4 * h + 1] = _mm256_shuffle_ps(p[0], p[2], _MM_SHUFFLE(3, 2, 3, 2));
    quads[4 * h + 2] = _mm256_shuffle_ps(p[1], p[3], _MM_SHUFFLE(1, 0, 1, 0));
    quads[4 * h + 3] = _mm256_shuffle_ps(p[1], p[3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  INVOLUTION_UNROLL
  for (int k = 0; k < 4; ++k) {
    rows[k] = _mm256_permute2f128_ps(quads[k], quads[k + 4], 0x20);
    rows[k + 4] = _mm256_permute2f128_ps(quads[k], quads[k + 4], 0x31);
  }
}
#endif

// Transposes a square block of N = Vec::size() vectors in registers (transpose_8x8 for AVX2
// floats, else log2(N) rounds of interleaving rows i and i + N/2): afterwards rows[k] holds
// what was column k.
template <typename acc_t>
inline void transpose_block(Vec<acc_t>* rows) {
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<acc_t, float>) return transpose_8x8(rows);
#endif
  constexpr int64_t N = Vec<acc_t>::size();
  INVOLUTION_UNROLL
  for (int64_t round = 1; round < N; round *= 2) {
    Vec<acc_t> next[N];
    INVOLUTION_UNROLL
    for (int64_t k = 0; k < N / 2; ++k) {
      auto pair = at::vec::interleave2(rows[k], rows[k + N / 2]);
      next[2 * k] = pair.first;
      next[2 * k + 1] = pair.second;
    }
    INVOLUTION_UNROLL
    for (int64_t k = 0; k < N; ++k) rows[k] = next[k];
  }
}

// dst[cg * dst_c + col * dst_w] = src[cg * src_c + col * src_w] for cg < CG, col < n, converting
// to dst_t: between NCHW rows (unit column stride) and pixel-major panels (unit channel
// stride), blocks of N = Vec::size() channels x up to N columns go through transpose_block
// (a last, partial block is the one ending at column n, overlapping the block before it and
// rewriting its values, or with masked loads and stores when n < N: masked stores are
// microcoded and slow on AMD's Zen cores); between two channel-contiguous layouts
// (channels_last) it copies pixels.
template <typename dst_t, typename src_t>
void copy_channels(dst_t* dst, int64_t dst_c, int64_t dst_w, const src_t* src, int64_t src_c,
                   int64_t src_w, int64_t CG, int64_t n) {
  if (src_c == 1 && dst_c == 1) {
    for (int64_t col = 0; col < n; ++col) convert_copy(src + col * src_w, dst + col * dst_w, CG);
    return;
  }
  if constexpr (std::is_same_v<dst_t, src_t>) {
    constexpr int64_t N = Vec<dst_t>::size();
    const bool rows_in = src_w == 1 && dst_c == 1;   // NCHW rows -> pixel-major
    const bool rows_out = src_c == 1 && dst_w == 1;  // pixel-major -> NCHW rows
    if (CG % N == 0 && (rows_in || rows_out)) {
      for (int64_t col = 0; col < n; col += N) {
        if (n - col < N && n >= N) col = n - N;
        const int64_t m = std::min(N, n - col);
        for (int64_t c0 = 0; c0 < CG; c0 += N) {
          Vec<dst_t> rows[N];
          if (rows_in) {
            INVOLUTION_UNROLL
            for (int64_t k = 0; k < N; ++k) rows[k] = load(src + (c0 + k) * src_c + col, m);
            transpose_block(rows);
            INVOLUTION_UNROLL
            for (int64_t k = 0; k < N; ++k)
              if (k < m) rows[k].store(dst + (col + k) * dst_w + c0);
          } else {
            INVOLUTION_UNROLL
            for (int64_t k = 0; k < N; ++k)
              rows[k] = k < m ? Vec<dst_t>::loadu(src + (col + k) * src_w + c0) : Vec<dst_t>(dst_t(0));
            transpose_block(rows);
            INVOLUTION_UNROLL
            for (int64_t k = 0; k < N; ++k) rows[k].store(dst + (c0 + k) * dst_c + col, m);
          }
        }
      }
      return;
    }
  }
  for (int64_t cg = 0; cg < CG; ++cg)
    for (int64_t col = 0; col < n; ++col)
      dst[cg * dst_c + col * dst_w] = static_cast<dst_t>(src[cg * src_c + col * src_w]);
}

// ---- Taps of grad_input (panel and channel-vectorised kernels) --------------------------

// Rows [lo, lo + n).
struct RowRange {
  int64_t lo, n;
};

// Which (u, v, i, j) feed an input pixel in grad_input. Rows: h = i*s - p + u*d, so row h reads
// the output rows i = (h + p - u*d) / s that divide exactly. Columns by phase phi = w % s: for
// w = m*s + phi the tap v reads j = m + jofs with jofs = (phi + p - v*d) / s when exact, so j
// is contiguous in m. Panels indexed by j cover [j_lo, j_hi], zero outside [0, Wo).
struct InputTaps {
  struct Tap {
    int64_t v, jofs;
  };
  const InvolutionShape& sh;
  std::vector<std::vector<Tap>> by_phase;
  std::vector<int64_t> phase_len;
  int64_t j_lo = 0, j_hi;

  explicit InputTaps(const InvolutionShape& shape)
      : sh(shape), by_phase(shape.stride), phase_len(shape.stride), j_hi(shape.Wo - 1) {
    const int64_t s = sh.stride;
    for (int64_t phi = 0; phi < s; ++phi) {
      phase_len[phi] = std::max<int64_t>(0, ceil_div(sh.W - phi, s));
      for (int64_t v = 0; v < sh.K; ++v) {
        const int64_t t = phi + sh.padding - v * sh.dilation;
        if (t - floor_div(t, s) * s != 0) continue;
        const int64_t jofs = floor_div(t, s);
        by_phase[phi].push_back({v, jofs});
        j_lo = std::min(j_lo, jofs);
        j_hi = std::max(j_hi, jofs + phase_len[phi] - 1);
      }
    }
  }

  int64_t row_len() const { return j_hi - j_lo + 1; }

  // The output rows [lo, lo + n) that input rows [h0, h1) read.
  RowRange output_rows(int64_t h0, int64_t h1) const {
    const int64_t K = sh.K, s = sh.stride, d = sh.dilation, p = sh.padding;
    const int64_t i_lo = std::max<int64_t>(0, ceil_div(h0 + p - (K - 1) * d, s));
    const int64_t i_hi = std::min<int64_t>(sh.Ho - 1, floor_div(h1 - 1 + p, s));
    return {i_lo, std::max<int64_t>(0, i_hi - i_lo + 1)};
  }

  // An upper bound of output_rows(...).second for tasks of `block_rows` input rows.
  int64_t max_output_rows(int64_t block_rows) const {
    return ((block_rows - 1) + (sh.K - 1) * sh.dilation) / sh.stride + 2;
  }

  // (u, panel row) pairs of the output rows that input row h reads.
  void rows_of(int64_t h, int64_t i_lo, std::vector<std::pair<int64_t, int64_t>>& out) const {
    out.clear();
    for (int64_t u = 0; u < sh.K; ++u) {
      const int64_t t = h + sh.padding - u * sh.dilation;
      if (t < 0 || t % sh.stride != 0 || t / sh.stride >= sh.Ho) continue;
      out.emplace_back(u, t / sh.stride - i_lo);
    }
  }

  // panel[(uv * n_i + ii) * row_len + j - j_lo] = w[uv, i_lo + ii, j], zero-padded.
  template <typename scalar_t, typename acc_t>
  void fill_weight_panel(acc_t* panel, const scalar_t* w_bg, int64_t i_lo, int64_t n_i) const {
    for (int64_t uv = 0; uv < sh.kk(); ++uv)
      for (int64_t ii = 0; ii < n_i; ++ii) {
        acc_t* dst = panel + (uv * n_i + ii) * row_len();
        std::fill(dst, dst - j_lo, acc_t(0));
        convert_copy(w_bg + (uv * sh.Ho + i_lo + ii) * sh.Wo, dst - j_lo, sh.Wo);
        std::fill(dst - j_lo + sh.Wo, dst + row_len(), acc_t(0));
      }
  }
};

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace involution_mm
