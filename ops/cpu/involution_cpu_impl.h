// The CPU kernels of involution. This header is compiled once per instruction set by
// involution_cpu_{default,avx2,avx512}.cpp, which define CPU_CAPABILITY first (as ATen's
// kernels do), so at::vec::Vectorized is 1, 8 or 16 floats wide; involution_cpu.cpp picks
// one at run time.
//
// Layout of the work: tasks are (batch, group, block of rows); each task copies the rows
// it reads into a small zero-padded panel in the accumulation type (float for half/bfloat16),
// so the inner loops have no bounds checks and vectorise along W. Panels are split into
// `stride` phases (column q*stride + ph stored at [ph][q]), which makes strided reads
// contiguous too. Every output element is written by exactly one task: no atomics, and
// results do not depend on the number of threads. The AVX-512 build runs stride 1 with same
// padding (RedNet's involutions but the first of stages 2-4) through row-flattened kernels
// instead, without transposes or zero padding (see "Row-flattened kernels"), except the
// forward of 16-channel groups with rows of 8 pixels or more (dense_forward_preferred).
#pragma once

#ifndef CPU_CAPABILITY
#error "define CPU_CAPABILITY (DEFAULT, AVX2 or AVX512) before including involution_cpu_impl.h"
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
#include <tuple>
#include <type_traits>
#include <vector>

#include "involution_cpu_kernels.h"

// at::parallel_for is a header template: in a file compiled without -fopenmp (setup.py passes
// it) it runs every task on the calling thread, although ATen itself uses OpenMP.
#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#error "compile the CPU kernels with -fopenmp, or at::parallel_for runs serially"
#endif

namespace involution_mm {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

template <typename T>
using Vec = at::vec::Vectorized<T>;

// Register blocks (arrays of Vec indexed by compile-time loops) stay in registers only when
// those loops are unrolled completely.
#if defined(__clang__)
#define INVOLUTION_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define INVOLUTION_UNROLL _Pragma("GCC unroll 16")
#else
#define INVOLUTION_UNROLL
#endif

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

// Rows per task: big enough to amortise the panel halo, small enough to give every thread
// several tasks.
inline int64_t rows_per_task(int64_t rows, int64_t batch_groups) {
  const int64_t want_tasks = 4 * static_cast<int64_t>(at::get_num_threads());
  const int64_t blocks = std::max<int64_t>(1, (want_tasks + batch_groups - 1) / batch_groups);
  return std::clamp<int64_t>((rows + blocks - 1) / blocks, 1, 16);
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

// panel[(pr * s + ph) * Q + q] = x[r0 + pr, q * s + ph - pad], zero outside the image.
template <typename scalar_t, typename acc_t>
void fill_input_panel(acc_t* panel, const scalar_t* x_c, int64_t stride_h, int64_t stride_w,
                      int64_t H, int64_t W, int64_t r0, int64_t rows, int64_t s, int64_t Q,
                      int64_t pad) {
  for (int64_t pr = 0; pr < rows; ++pr) {
    const int64_t r = r0 + pr;
    acc_t* dst_row = panel + pr * s * Q;
    if (r < 0 || r >= H) {
      std::fill(dst_row, dst_row + s * Q, acc_t(0));
      continue;
    }
    const scalar_t* src = x_c + r * stride_h;
    for (int64_t ph = 0; ph < s; ++ph) {
      acc_t* dst = dst_row + ph * Q;
      const int64_t q_lo = std::clamp<int64_t>(ceil_div(pad - ph, s), 0, Q);
      const int64_t q_hi = std::clamp<int64_t>(ceil_div(W + pad - ph, s), q_lo, Q);
      std::fill(dst, dst + q_lo, acc_t(0));
      const scalar_t* src_q = src + (q_lo * s + ph - pad) * stride_w;
      const int64_t step = s * stride_w;
      if (step == 1) {
        convert_copy(src_q, dst + q_lo, q_hi - q_lo);
      } else {
        for (int64_t q = q_lo; q < q_hi; ++q) dst[q] = static_cast<acc_t>(src_q[(q - q_lo) * step]);
      }
      std::fill(dst + q_hi, dst + Q, acc_t(0));
    }
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

// Per kernel column v: the panel phase and the offset in that phase of x[.., j*s - p + v*d].
struct ColumnTaps {
  std::vector<int64_t> phase, offset;
  ColumnTaps(int64_t K, int64_t s, int64_t d) : phase(K), offset(K) {
    for (int64_t v = 0; v < K; ++v) {
      phase[v] = (v * d) % s;
      offset[v] = (v * d) / s;
    }
  }
};

// Channels of one group computed together: each weight vector is loaded once and used for
// kBlock channels, whose accumulators stay in registers (32 vector registers with AVX-512,
// 16 otherwise).
constexpr int64_t kMaxChannelBlock = Vec<float>::size() >= 16 ? 16 : 8;

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

// out[b, c, i, j] = sum_{u,v} w[b, g, u, v, i, j] * x[b, c, i*s - p + u*d, j*s - p + v*d]
template <typename scalar_t>
void forward_impl(const InvolutionShape& sh, const scalar_t* x, const Strides4& xs,
                  const scalar_t* w, scalar_t* out, const Strides4& os) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t K = sh.K, s = sh.stride, d = sh.dilation, p = sh.padding;
  const int64_t Ho = sh.Ho, Wo = sh.Wo, KK = sh.kk(), CG = sh.channels_per_group();
  const int64_t Q = Wo + ((K - 1) * d) / s;
  const int64_t rb = rows_per_task(Ho, sh.B * sh.G);
  const int64_t blocks = (Ho + rb - 1) / rb;
  const int64_t panel_size = ((rb - 1) * s + (K - 1) * d + 1) * s * Q;
  const ColumnTaps taps(K, s, d);

  at::parallel_for(0, sh.B * sh.G * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> panels(kMaxChannelBlock * panel_size);
    std::vector<acc_t> weight_rows(KK * rb * Wo);
    std::vector<acc_t> out_rows(kMaxChannelBlock * Wo);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bg = task / blocks, b = bg / sh.G, g = bg % sh.G;
      const int64_t i0 = (task % blocks) * rb, rows = std::min(rb, Ho - i0);
      // The task's weight rows, copied as K*K sequential pieces: read in place, the inner
      // loop would walk K*K rows Ho*Wo apart, more streams than the prefetcher follows.
      const scalar_t* w_bg = w + bg * KK * Ho * Wo;
      const int64_t uv_stride = rows * Wo;
      for (int64_t uv = 0; uv < KK; ++uv)
        convert_copy(w_bg + (uv * Ho + i0) * Wo, weight_rows.data() + uv * uv_stride, uv_stride);
      const acc_t* w_rows = weight_rows.data();
      const int64_t panel_rows = (rows - 1) * s + (K - 1) * d + 1;
      for_each_channel_block(CG, [&](int64_t c0, auto block) {
        constexpr int64_t NC = decltype(block)::value;
        const int64_t c_first = g * CG + c0;
        INVOLUTION_UNROLL
        for (int64_t cc = 0; cc < NC; ++cc)
          fill_input_panel(panels.data() + cc * panel_size, x + b * xs.b + (c_first + cc) * xs.c,
                           xs.h, xs.w, sh.H, sh.W, i0 * s - p, panel_rows, s, Q, p);
        for (int64_t i = 0; i < rows; ++i) {
          for_each_vector<acc_t>(Wo, [&](int64_t j, int64_t n) {
            Vec<acc_t> acc[NC];
            INVOLUTION_UNROLL
            for (int64_t cc = 0; cc < NC; ++cc) acc[cc] = Vec<acc_t>(acc_t(0));
            for (int64_t u = 0; u < K; ++u) {
              const acc_t* x_u = panels.data() + (i * s + u * d) * s * Q + j;
              const acc_t* w_u = w_rows + u * K * uv_stride + i * Wo + j;
              for (int64_t v = 0; v < K; ++v) {
                const Vec<acc_t> wv = load(w_u + v * uv_stride, n);
                const acc_t* x_uv = x_u + taps.phase[v] * Q + taps.offset[v];
                INVOLUTION_UNROLL
                for (int64_t cc = 0; cc < NC; ++cc)
                  acc[cc] = at::vec::fmadd(wv, load(x_uv + cc * panel_size, n), acc[cc]);
              }
            }
            INVOLUTION_UNROLL
            for (int64_t cc = 0; cc < NC; ++cc) acc[cc].store(out_rows.data() + cc * Wo + j, n);
          });
          INVOLUTION_UNROLL
          for (int64_t cc = 0; cc < NC; ++cc)
            store_row(out + b * os.b + (c_first + cc) * os.c + (i0 + i) * os.h, os.w,
                      out_rows.data() + cc * Wo, Wo);
        }
      });
    }
  });
}

// grad_w[b, g, u, v, i, j] = sum_{c in g} grad_out[b, c, i, j] * x[b, c, i*s - p + u*d, j*s - p + v*d]
template <typename scalar_t>
void grad_weight_impl(const InvolutionShape& sh, const scalar_t* go, const Strides4& gs,
                      const scalar_t* x, const Strides4& xs, scalar_t* gw) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t K = sh.K, s = sh.stride, d = sh.dilation, p = sh.padding;
  const int64_t Ho = sh.Ho, Wo = sh.Wo, KK = sh.kk(), CG = sh.channels_per_group();
  const int64_t Q = Wo + ((K - 1) * d) / s;
  const int64_t rb = rows_per_task(Ho, sh.B * sh.G);
  const int64_t blocks = (Ho + rb - 1) / rb;
  const int64_t panel_size = ((rb - 1) * s + (K - 1) * d + 1) * s * Q;
  const ColumnTaps taps(K, s, d);

  at::parallel_for(0, sh.B * sh.G * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> panels(kMaxChannelBlock * panel_size);
    std::vector<acc_t> go_rows(kMaxChannelBlock * rb * Wo);
    std::vector<acc_t> gw_rows(KK * rb * Wo);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bg = task / blocks, b = bg / sh.G, g = bg % sh.G;
      const int64_t i0 = (task % blocks) * rb, rows = std::min(rb, Ho - i0);
      const int64_t panel_rows = (rows - 1) * s + (K - 1) * d + 1;
      // Accumulated in a task-local block, written out as K*K sequential pieces (see forward).
      acc_t* gw_out = gw_rows.data();
      const int64_t uv_stride = rows * Wo;
      for_each_channel_block(CG, [&](int64_t c0, auto block) {
        constexpr int64_t NC = decltype(block)::value;
        const bool first_block = c0 == 0;
        INVOLUTION_UNROLL
        for (int64_t cc = 0; cc < NC; ++cc) {
          const int64_t c = g * CG + c0 + cc;
          fill_input_panel(panels.data() + cc * panel_size, x + b * xs.b + c * xs.c, xs.h, xs.w,
                           sh.H, sh.W, i0 * s - p, panel_rows, s, Q, p);
          const scalar_t* go_c = go + b * gs.b + c * gs.c;
          for (int64_t i = 0; i < rows; ++i)
            for (int64_t j = 0; j < Wo; ++j)
              go_rows[(cc * rb + i) * Wo + j] = static_cast<acc_t>(go_c[(i0 + i) * gs.h + j * gs.w]);
        }
        for (int64_t i = 0; i < rows; ++i) {
          for_each_vector<acc_t>(Wo, [&](int64_t j, int64_t n) {
            Vec<acc_t> gov[NC];
            INVOLUTION_UNROLL
            for (int64_t cc = 0; cc < NC; ++cc) gov[cc] = load(go_rows.data() + (cc * rb + i) * Wo + j, n);
            for (int64_t u = 0; u < K; ++u) {
              const acc_t* x_u = panels.data() + (i * s + u * d) * s * Q + j;
              acc_t* dst_u = gw_out + u * K * uv_stride + i * Wo + j;
              for (int64_t v = 0; v < K; ++v) {
                acc_t* dst = dst_u + v * uv_stride;
                const acc_t* x_uv = x_u + taps.phase[v] * Q + taps.offset[v];
                Vec<acc_t> acc = first_block ? Vec<acc_t>(acc_t(0)) : load(dst, n);
                INVOLUTION_UNROLL
                for (int64_t cc = 0; cc < NC; ++cc)
                  acc = at::vec::fmadd(gov[cc], load(x_uv + cc * panel_size, n), acc);
                acc.store(dst, n);
              }
            }
          });
        }
      });
      scalar_t* gw_bg = gw + bg * KK * Ho * Wo;
      for (int64_t uv = 0; uv < KK; ++uv)
        store_row(gw_bg + (uv * Ho + i0) * Wo, 1, gw_out + uv * uv_stride, uv_stride);
    }
  });
}

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
    const int64_t row_len = j_hi - j_lo + 1;
    for (int64_t uv = 0; uv < sh.kk(); ++uv)
      for (int64_t ii = 0; ii < n_i; ++ii) {
        acc_t* dst = panel + (uv * n_i + ii) * row_len;
        std::fill(dst, dst + row_len, acc_t(0));
        convert_copy(w_bg + (uv * sh.Ho + i_lo + ii) * sh.Wo, dst - j_lo, sh.Wo);
      }
  }
};

// grad_x[b, c, h, w] = sum over the (u, v, i, j) with h = i*s - p + u*d, w = j*s - p + v*d of
// w[b, g, u, v, i, j] * grad_out[b, c, i, j]: a gather (InputTaps), one task per block of
// input rows.
template <typename scalar_t>
void grad_input_impl(const InvolutionShape& sh, const scalar_t* go, const Strides4& gs,
                     const scalar_t* w, scalar_t* gx, const Strides4& gxs) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t K = sh.K, s = sh.stride, d = sh.dilation, p = sh.padding;
  const int64_t H = sh.H, W = sh.W, Ho = sh.Ho, Wo = sh.Wo, KK = sh.kk();
  const int64_t CG = sh.channels_per_group();

  const InputTaps taps(sh);
  const int64_t j_lo = taps.j_lo, row_len = taps.j_hi - taps.j_lo + 1;

  const int64_t hb = rows_per_task(H, sh.B * sh.G);
  const int64_t blocks = (H + hb - 1) / hb;
  const int64_t max_i_rows = ((hb - 1) + (K - 1) * d) / s + 2;
  const int64_t go_panel_size = max_i_rows * row_len;

  at::parallel_for(0, sh.B * sh.G * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> w_panel(KK * max_i_rows * row_len);
    std::vector<acc_t> go_panels(kMaxChannelBlock * go_panel_size);
    std::vector<acc_t> gx_rows(kMaxChannelBlock * W), phase_rows(s > 1 ? kMaxChannelBlock * W : 0);
    std::vector<std::pair<int64_t, int64_t>> rows_u;  // (u, panel row) of the taps of row h
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bg = task / blocks, b = bg / sh.G, g = bg % sh.G;
      const int64_t h0 = (task % blocks) * hb, h1 = std::min(H, h0 + hb);
      const int64_t i_lo = std::max<int64_t>(0, ceil_div(h0 + p - (K - 1) * d, s));
      const int64_t i_hi = std::min<int64_t>(Ho - 1, floor_div(h1 - 1 + p, s));
      const int64_t n_i = std::max<int64_t>(0, i_hi - i_lo + 1);
      taps.fill_weight_panel(w_panel.data(), w + bg * KK * Ho * Wo, i_lo, n_i);
      for_each_channel_block(CG, [&](int64_t c0, auto block) {
        constexpr int64_t NC = decltype(block)::value;
        const int64_t c_first = g * CG + c0;
        INVOLUTION_UNROLL
        for (int64_t cc = 0; cc < NC; ++cc) {
          const scalar_t* go_c = go + b * gs.b + (c_first + cc) * gs.c;
          for (int64_t ii = 0; ii < n_i; ++ii) {
            const scalar_t* src = go_c + (i_lo + ii) * gs.h;
            acc_t* dst = go_panels.data() + cc * go_panel_size + ii * row_len;
            std::fill(dst, dst + row_len, acc_t(0));
            for (int64_t j = 0; j < Wo; ++j) dst[j - j_lo] = static_cast<acc_t>(src[j * gs.w]);
          }
        }
        for (int64_t h = h0; h < h1; ++h) {
          taps.rows_of(h, i_lo, rows_u);
          for (int64_t phi = 0; phi < s; ++phi) {
            acc_t* dst = s == 1 ? gx_rows.data() : phase_rows.data();
            for_each_vector<acc_t>(taps.phase_len[phi], [&](int64_t m, int64_t n) {
              Vec<acc_t> acc[NC];
              INVOLUTION_UNROLL
              for (int64_t cc = 0; cc < NC; ++cc) acc[cc] = Vec<acc_t>(acc_t(0));
              for (const auto& [u, ii] : rows_u) {
                const acc_t* go_r = go_panels.data() + ii * row_len - j_lo + m;
                const acc_t* w_r = w_panel.data() + (u * K * n_i + ii) * row_len - j_lo + m;
                for (const auto& tap : taps.by_phase[phi]) {
                  const Vec<acc_t> wv = load(w_r + tap.v * n_i * row_len + tap.jofs, n);
                  INVOLUTION_UNROLL
                  for (int64_t cc = 0; cc < NC; ++cc)
                    acc[cc] = at::vec::fmadd(wv, load(go_r + cc * go_panel_size + tap.jofs, n),
                                             acc[cc]);
                }
              }
              INVOLUTION_UNROLL
              for (int64_t cc = 0; cc < NC; ++cc) acc[cc].store(dst + cc * W + m, n);
            });
            if (s > 1)
              INVOLUTION_UNROLL
              for (int64_t cc = 0; cc < NC; ++cc)
                for (int64_t m = 0; m < taps.phase_len[phi]; ++m)
                  gx_rows[cc * W + m * s + phi] = phase_rows[cc * W + m];
          }
          INVOLUTION_UNROLL
          for (int64_t cc = 0; cc < NC; ++cc)
            store_row(gx + b * gxs.b + (c_first + cc) * gxs.c + h * gxs.h, gxs.w,
                      gx_rows.data() + cc * W, W);
        }
      });
    }
  });
}

// ---- Channel-vectorised kernels -------------------------------------------------------
// When the channels of a group fill whole vectors (C/G a multiple of the vector width, e.g.
// 16 with AVX-512), the group's channels of one pixel form aligned vectors and the pixel's
// kernel value is one broadcast: one weight serves a whole vector, and no load straddles
// the shifted windows of the taps. The panels hold the rows in pixel-major order
// ([row][column][channel]); outputs are accumulated per pixel and transposed back.

// Zero-initialised scratch whose data() is 64-byte aligned: with AVX-512 floats a pixel of a
// pixel-major panel is then one whole cache line, and no vector load straddles two.
template <typename T>
class AlignedBuffer {
 public:
  explicit AlignedBuffer(int64_t n) : storage_(n + kSlack) {}
  T* data() {
    const auto p = reinterpret_cast<uintptr_t>(storage_.data());
    return reinterpret_cast<T*>((p + kAlign - 1) & ~uintptr_t(kAlign - 1));
  }

 private:
  static constexpr int64_t kAlign = 64, kSlack = kAlign / sizeof(T);
  std::vector<T> storage_;
};

// Output pixels per register block: R pixels x NV vectors of accumulators stay in registers.
template <int64_t NV>
constexpr int64_t pixel_block() {
  return kMaxChannelBlock >= 16 ? (NV == 1 ? 8 : 4) : (NV == 1 ? 6 : 3);
}

// Transposes a square block of N = Vec::size() vectors in registers (log2(N) rounds of
// interleaving rows i and i + N/2): afterwards rows[k] holds what was column k.
template <typename acc_t>
inline void transpose_block(Vec<acc_t>* rows) {
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
// (masked loads and stores for a last, partial block); between two channel-contiguous
// layouts (channels_last) it copies pixels.
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

// With a dense kernel row in registers too (RB + K - 1 more vectors, K <= 7).
template <int64_t NV>
constexpr int64_t dense_pixel_block() {
  return kMaxChannelBlock >= 16 ? (NV == 1 ? 8 : 4) : (NV == 1 ? 4 : 2);
}

// panel[(pr * Wp + pc) * CG + cg] = x[c0 + cg, r0 + pr, pc - pad], zero outside the image.
template <typename scalar_t, typename acc_t>
void fill_pixel_panel(acc_t* panel, const scalar_t* x_c0, const Strides4& xs, int64_t CG,
                      int64_t H, int64_t W, int64_t r0, int64_t rows, int64_t Wp, int64_t pad) {
  const int64_t pc_lo = std::clamp<int64_t>(pad, 0, Wp);
  const int64_t pc_hi = std::clamp<int64_t>(W + pad, pc_lo, Wp);
  for (int64_t pr = 0; pr < rows; ++pr) {
    const int64_t r = r0 + pr;
    acc_t* dst = panel + pr * Wp * CG;
    if (r < 0 || r >= H) {
      std::fill(dst, dst + Wp * CG, acc_t(0));
      continue;
    }
    std::fill(dst, dst + pc_lo * CG, acc_t(0));
    std::fill(dst + pc_hi * CG, dst + Wp * CG, acc_t(0));
    copy_channels(dst + pc_lo * CG, 1, CG, x_c0 + r * xs.h + (pc_lo - pad) * xs.w, xs.c, xs.w, CG,
                  pc_hi - pc_lo);
  }
}

// out[c0 + cg, (row), j] = pixels[j * CG + cg] for j < n: the transpose back.
template <typename scalar_t, typename acc_t>
inline void store_pixel_row(scalar_t* out_c0_row, const Strides4& os, const acc_t* pixels,
                            int64_t CG, int64_t n) {
  copy_channels(out_c0_row, os.c, os.w, pixels, 1, CG, CG, n);
}

// DenseK = K > 0 for stride 1, dilation 1 and a K the kernel is built for: tap v of pixel
// j + r then reads column j + r + v, so one row of RB + K - 1 input vectors in registers serves
// all RB x K taps of a kernel row. DenseK = 0: any geometry, one load per tap.
template <typename scalar_t, int64_t NV, int64_t DenseK>
void forward_cv_impl(const InvolutionShape& sh, const scalar_t* x, const Strides4& xs,
                     const scalar_t* w, scalar_t* out, const Strides4& os) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t VS = Vec<acc_t>::size(), CG = NV * VS;
  constexpr int64_t R = DenseK > 0 ? dense_pixel_block<NV>() : pixel_block<NV>();
  const int64_t K = sh.K, s = sh.stride, d = sh.dilation, p = sh.padding;
  const int64_t Ho = sh.Ho, Wo = sh.Wo, KK = sh.kk();
  const int64_t Wp = (Wo - 1) * s + (K - 1) * d + 1;
  const int64_t rb = rows_per_task(Ho, sh.B * sh.G);
  const int64_t blocks = (Ho + rb - 1) / rb;
  const int64_t max_panel_rows = (rb - 1) * s + (K - 1) * d + 1;

  constexpr bool direct_weight = std::is_same_v<scalar_t, acc_t>;

  at::parallel_for(0, sh.B * sh.G * blocks, 1, [&](int64_t begin, int64_t end) {
    AlignedBuffer<acc_t> panel(max_panel_rows * Wp * CG);
    std::vector<acc_t> weight_rows(direct_weight ? 0 : KK * rb * Wo);
    AlignedBuffer<acc_t> pixels(Wo * CG);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bg = task / blocks, b = bg / sh.G, g = bg % sh.G;
      const int64_t i0 = (task % blocks) * rb, rows = std::min(rb, Ho - i0);
      const scalar_t* w_bg = w + bg * KK * Ho * Wo;
      // Weight row (u, v, i0 + i) at w_rows + uv * uv_stride + i * Wo: read in place when no
      // conversion is needed (the next row is prefetched below), else converted once.
      const acc_t* w_rows;
      int64_t uv_stride;
      if constexpr (direct_weight) {
        w_rows = w_bg + i0 * Wo;
        uv_stride = Ho * Wo;
      } else {
        uv_stride = rows * Wo;
        for (int64_t uv = 0; uv < KK; ++uv)
          convert_copy(w_bg + (uv * Ho + i0) * Wo, weight_rows.data() + uv * uv_stride, uv_stride);
        w_rows = weight_rows.data();
      }
      fill_pixel_panel(panel.data(), x + b * xs.b + g * CG * xs.c, xs, CG, sh.H, sh.W, i0 * s - p,
                       (rows - 1) * s + (K - 1) * d + 1, Wp, p);
      for (int64_t i = 0; i < rows; ++i) {
        if constexpr (direct_weight) {
          // The K*K weight rows of the next output row are Ho*Wo apart: more streams than the
          // hardware prefetcher follows, so fetch them while this row computes.
          if (i0 + i + 1 < Ho)
            for (int64_t uv = 0; uv < KK; ++uv)
              for (int64_t e = 0; e < Wo; e += 64 / static_cast<int64_t>(sizeof(acc_t)))
                __builtin_prefetch(w_rows + uv * uv_stride + (i + 1) * Wo + e);
        }
        // acc[r][nv] += w[u, v, i, j + r] * panel[i*s + u*d, (j + r)*s + v*d, nv-th vector]
        auto block = [&](int64_t j, auto pixels_in_block) {
          constexpr int64_t RB = decltype(pixels_in_block)::value;
          Vec<acc_t> acc[RB][NV];
          INVOLUTION_UNROLL
          for (int64_t r = 0; r < RB; ++r)
            INVOLUTION_UNROLL
            for (int64_t nv = 0; nv < NV; ++nv) acc[r][nv] = Vec<acc_t>(acc_t(0));
          // Unrolled for a dense K too, or the register blocks live on the stack.
          INVOLUTION_UNROLL
          for (int64_t u = 0; u < (DenseK > 0 ? DenseK : K); ++u) {
            const acc_t* x_u = panel.data() + ((i * s + u * d) * Wp + j * s) * CG;
            const acc_t* w_u = w_rows + u * K * uv_stride + i * Wo + j;
            if constexpr (DenseK > 0) {
              // RB + K - 1 input vectors of the kernel row serve all RB x K taps.
              Vec<acc_t> xv[RB + DenseK - 1][NV];
              INVOLUTION_UNROLL
              for (int64_t k = 0; k < RB + DenseK - 1; ++k)
                INVOLUTION_UNROLL
                for (int64_t nv = 0; nv < NV; ++nv) xv[k][nv] = Vec<acc_t>::loadu(x_u + k * CG + nv * VS);
              INVOLUTION_UNROLL
              for (int64_t v = 0; v < DenseK; ++v) {
                const acc_t* w_uv = w_u + v * uv_stride;
                INVOLUTION_UNROLL
                for (int64_t r = 0; r < RB; ++r) {
                  const Vec<acc_t> wv(w_uv[r]);
                  INVOLUTION_UNROLL
                  for (int64_t nv = 0; nv < NV; ++nv)
                    acc[r][nv] = at::vec::fmadd(wv, xv[r + v][nv], acc[r][nv]);
                }
              }
              continue;
            }
            for (int64_t v = 0; v < K; ++v) {
              const acc_t* x_uv = x_u + v * d * CG;
              const acc_t* w_uv = w_u + v * uv_stride;
              INVOLUTION_UNROLL
              for (int64_t r = 0; r < RB; ++r) {
                const Vec<acc_t> wv(w_uv[r]);
                INVOLUTION_UNROLL
                for (int64_t nv = 0; nv < NV; ++nv)
                  acc[r][nv] = at::vec::fmadd(wv, Vec<acc_t>::loadu(x_uv + r * s * CG + nv * VS),
                                              acc[r][nv]);
              }
            }
          }
          INVOLUTION_UNROLL
          for (int64_t r = 0; r < RB; ++r)
            INVOLUTION_UNROLL
            for (int64_t nv = 0; nv < NV; ++nv) acc[r][nv].store(pixels.data() + (j + r) * CG + nv * VS);
        };
        for_each_pixel_block<R>(Wo, block);
        store_pixel_row(out + b * os.b + g * CG * os.c + (i0 + i) * os.h, os, pixels.data(), CG, Wo);
      }
    }
  });
}

// grad_input with pixel-major panels; same tap bookkeeping as grad_input_impl. DenseK as in
// forward_cv_impl: with stride 1 and dilation 1, tap v of pixel m + r reads grad_out column
// m + r + p - v, so RB + K - 1 vectors in registers serve a kernel row.
template <typename scalar_t, int64_t NV, int64_t DenseK>
void grad_input_cv_impl(const InvolutionShape& sh, const scalar_t* go, const Strides4& gs,
                        const scalar_t* w, scalar_t* gx, const Strides4& gxs) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t VS = Vec<acc_t>::size(), CG = NV * VS;
  constexpr int64_t R = DenseK > 0 ? dense_pixel_block<NV>() : pixel_block<NV>();
  const int64_t K = sh.K, s = sh.stride, d = sh.dilation, p = sh.padding;
  const int64_t H = sh.H, W = sh.W, Ho = sh.Ho, Wo = sh.Wo, KK = sh.kk();
  const InputTaps taps(sh);
  const int64_t row_len = taps.j_hi - taps.j_lo + 1;
  const int64_t hb = rows_per_task(H, sh.B * sh.G);
  const int64_t blocks = (H + hb - 1) / hb;
  const int64_t max_i_rows = ((hb - 1) + (K - 1) * d) / s + 2;

  at::parallel_for(0, sh.B * sh.G * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> w_panel(KK * max_i_rows * row_len);
    AlignedBuffer<acc_t> go_panel(max_i_rows * row_len * CG);
    AlignedBuffer<acc_t> pixels(W * CG);
    std::vector<std::pair<int64_t, int64_t>> rows_u;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bg = task / blocks, b = bg / sh.G, g = bg % sh.G;
      const int64_t h0 = (task % blocks) * hb, h1 = std::min(H, h0 + hb);
      const int64_t i_lo = std::max<int64_t>(0, ceil_div(h0 + p - (K - 1) * d, s));
      const int64_t i_hi = std::min<int64_t>(Ho - 1, floor_div(h1 - 1 + p, s));
      const int64_t n_i = std::max<int64_t>(0, i_hi - i_lo + 1);
      taps.fill_weight_panel(w_panel.data(), w + bg * KK * Ho * Wo, i_lo, n_i);
      // go_panel[(ii * row_len + j - j_lo) * CG + cg] = grad_out[c0 + cg, i_lo + ii, j]
      fill_pixel_panel(go_panel.data(), go + b * gs.b + g * CG * gs.c, gs, CG, Ho, Wo, i_lo, n_i,
                       row_len, -taps.j_lo);
      for (int64_t h = h0; h < h1; ++h) {
        taps.rows_of(h, i_lo, rows_u);
        for (int64_t phi = 0; phi < s; ++phi) {
          auto block = [&](int64_t m, auto pixels_in_block) {
            constexpr int64_t RB = decltype(pixels_in_block)::value;
            Vec<acc_t> acc[RB][NV];
            INVOLUTION_UNROLL
            for (int64_t r = 0; r < RB; ++r)
              INVOLUTION_UNROLL
              for (int64_t nv = 0; nv < NV; ++nv) acc[r][nv] = Vec<acc_t>(acc_t(0));
            for (const auto& [u, ii] : rows_u) {
              const acc_t* go_r = go_panel.data() + (ii * row_len - taps.j_lo + m) * CG;
              const acc_t* w_r = w_panel.data() + (u * K * n_i + ii) * row_len - taps.j_lo + m;
              if constexpr (DenseK > 0) {
                Vec<acc_t> gv[RB + DenseK - 1][NV];  // gv[k]: column m + p - (K - 1) + k
                const acc_t* go_first = go_r + (p - (DenseK - 1)) * CG;
                INVOLUTION_UNROLL
                for (int64_t k = 0; k < RB + DenseK - 1; ++k)
                  INVOLUTION_UNROLL
                  for (int64_t nv = 0; nv < NV; ++nv)
                    gv[k][nv] = Vec<acc_t>::loadu(go_first + k * CG + nv * VS);
                INVOLUTION_UNROLL
                for (int64_t v = 0; v < DenseK; ++v) {
                  const acc_t* w_t = w_r + v * n_i * row_len + p - v;
                  INVOLUTION_UNROLL
                  for (int64_t r = 0; r < RB; ++r) {
                    const Vec<acc_t> wv(w_t[r]);
                    INVOLUTION_UNROLL
                    for (int64_t nv = 0; nv < NV; ++nv)
                      acc[r][nv] = at::vec::fmadd(wv, gv[r - v + DenseK - 1][nv], acc[r][nv]);
                  }
                }
                continue;
              }
              for (const auto& tap : taps.by_phase[phi]) {
                const acc_t* w_t = w_r + tap.v * n_i * row_len + tap.jofs;
                const acc_t* go_t = go_r + tap.jofs * CG;
                INVOLUTION_UNROLL
                for (int64_t r = 0; r < RB; ++r) {
                  const Vec<acc_t> wv(w_t[r]);
                  INVOLUTION_UNROLL
                  for (int64_t nv = 0; nv < NV; ++nv)
                    acc[r][nv] = at::vec::fmadd(wv, Vec<acc_t>::loadu(go_t + r * CG + nv * VS),
                                                acc[r][nv]);
                }
              }
            }
            INVOLUTION_UNROLL
            for (int64_t r = 0; r < RB; ++r)
              INVOLUTION_UNROLL
              for (int64_t nv = 0; nv < NV; ++nv)
                acc[r][nv].store(pixels.data() + ((m + r) * s + phi) * CG + nv * VS);
          };
          for_each_pixel_block<R>(taps.phase_len[phi], block);
        }
        store_pixel_row(gx + b * gxs.b + g * CG * gxs.c + h * gxs.h, gxs, pixels.data(), CG, W);
      }
    }
  });
}

// ---- Row-flattened kernels ------------------------------------------------------------
// With stride 1 and "same" padding (Ho = H, Wo = W, so 2p = (K-1)d) an output pixel and the
// input pixel it centres on have the same flat index q = i*W + j, and tap (u, v) of every pixel
// sits at the fixed offset (u*d - p)*W + v*d - p. A block of rows is then one vector loop over
// q with every lane in use, whatever W is (7x7 rows fill 7 of 16 lanes in the kernels above),
// with the weight planes, grad_output and the results in their NCHW places: no transposes,
// and a plain copy of the rows each task reads for the other operand. Taps that leave the
// image (above/below, or across the left/right edge, where the flat index wraps into the
// neighbouring row) are dropped by lane masks. Each output element is still written by one
// task, in a fixed order: deterministic, no atomics.

inline bool flat_kernels_apply(const InvolutionShape& sh) {
  return sh.stride == 1 && sh.Ho == sh.H && sh.Wo == sh.W;
}

// They are built for AVX-512 only, whose masked FMAs cost what plain ones do and whose 32
// registers hold their register blocks; with AVX2 and DEFAULT they measured slower than the
// panel kernels at 28x28 and up, so those run there.
#if defined(CPU_CAPABILITY_AVX512)

// The lanes l of a vector with bit l of `bits` set.
template <typename acc_t>
struct LaneMask {
  static_assert(Vec<acc_t>::size() <= 32, "lane bits are a uint32_t");
  std::conditional_t<sizeof(acc_t) == 4, __mmask16, __mmask8> k;
  LaneMask() = default;
  explicit LaneMask(uint32_t bits) : k(static_cast<decltype(k)>(bits)) {}
  // acc + a * b on the lanes, acc elsewhere (whatever b holds there).
  Vec<acc_t> fmadd(const Vec<acc_t>& a, const Vec<acc_t>& b, const Vec<acc_t>& acc) const {
    if constexpr (sizeof(acc_t) == 4) return _mm512_mask3_fmadd_ps(a, b, acc, k);
    else return _mm512_mask3_fmadd_pd(a, b, acc, k);
  }
  // v on the lanes, 0 elsewhere.
  Vec<acc_t> select(const Vec<acc_t>& v) const {
    if constexpr (sizeof(acc_t) == 4) return _mm512_maskz_mov_ps(k, v);
    else return _mm512_maskz_mov_pd(k, v);
  }
  // p[l] on the lanes, 0 elsewhere; the other lanes are not read, so p may run off the buffer.
  Vec<acc_t> load(const acc_t* p) const {
    if constexpr (sizeof(acc_t) == 4) return _mm512_maskz_loadu_ps(k, p);
    else return _mm512_maskz_loadu_pd(k, p);
  }
  // p[l] = v[l] on the lanes only.
  void store(acc_t* p, const Vec<acc_t>& v) const {
    if constexpr (sizeof(acc_t) == 4) _mm512_mask_storeu_ps(p, k, v);
    else _mm512_mask_storeu_pd(p, k, v);
  }
};

// Bits of the lanes l < k.
inline uint32_t low_lanes(int64_t k) { return k >= 32 ? ~0u : (1u << k) - 1u; }

// Bits of the lanes l < n with lo <= q + l < hi.
inline uint32_t lane_range(int64_t q, int64_t lo, int64_t hi, int64_t n) {
  const int64_t a = std::clamp<int64_t>(lo - q, 0, n), b = std::clamp<int64_t>(hi - q, 0, n);
  return a < b ? low_lanes(b) & ~low_lanes(a) : 0u;
}

// Stores the first n lanes of v.
template <typename acc_t>
inline void store_first(acc_t* p, const Vec<acc_t>& v, int64_t n) {
  if (n == Vec<acc_t>::size()) v.store(p);
  else LaneMask<acc_t>(low_lanes(n)).store(p, v);
}

// Tap offsets and lane masks of the flat kernels, for tasks of up to `max_rows` rows that
// start at a row start. Tap t = u*K + v of pixel q reads q + offset[t]; it is inside the image
// for the lanes of row_bits(u, ...) & col_bits(q, v).
struct FlatTaps {
  int64_t K, H, W, VS;
  std::vector<int64_t> offset;
  std::vector<int64_t> row_lo, row_hi;  // per u: the output rows whose tap row is inside
  std::vector<uint32_t> cols;           // [(q / VS) * K + v]

  FlatTaps(const InvolutionShape& sh, int64_t max_rows, int64_t vs)
      : K(sh.K), H(sh.H), W(sh.W), VS(vs), offset(sh.kk()), row_lo(sh.K), row_hi(sh.K) {
    const int64_t d = sh.dilation, p = sh.padding;
    for (int64_t u = 0; u < K; ++u) {
      row_lo[u] = std::clamp<int64_t>(p - u * d, 0, H);
      row_hi[u] = std::clamp<int64_t>(H + p - u * d, row_lo[u], H);
      for (int64_t v = 0; v < K; ++v) offset[u * K + v] = (u * d - p) * W + v * d - p;
    }
    const int64_t vectors = ceil_div(max_rows * W, VS);
    cols.assign(vectors * K, 0u);
    for (int64_t v = 0; v < K; ++v) {
      // Row r's pixels with column tap v inside the image: [r*W + lo, r*W + hi).
      const int64_t lo = std::clamp<int64_t>(p - v * d, 0, W);
      const int64_t hi = std::clamp<int64_t>(W + p - v * d, lo, W);
      for (int64_t r = 0; r * W < vectors * VS; ++r)
        for (int64_t qv = (r * W + lo) / VS; qv < vectors && qv * VS < r * W + hi; ++qv)
          cols[qv * K + v] |= lane_range(qv * VS, r * W + lo, r * W + hi, VS);
    }
  }

  // Lanes of the vector at task pixel q (task rows i0.. i0 + rows) whose tap row u is inside.
  uint32_t row_bits(int64_t u, int64_t q, int64_t i0, int64_t rows) const {
    const int64_t lo = (std::max(row_lo[u], i0) - i0) * W;
    const int64_t hi = (std::min(row_hi[u], i0 + rows) - i0) * W;
    return lane_range(q, lo, hi, VS);
  }
  uint32_t col_bits(int64_t q, int64_t v) const { return cols[(q / VS) * K + v]; }
};

// Element strides of a contiguous (N, planes, H, W) tensor: the weight and its gradient.
inline Strides4 plane_strides(const InvolutionShape& sh) {
  return {sh.kk() * sh.H * sh.W, sh.H * sh.W, sh.W, 1};
}

// `channels` planes of one item of a (N, C, H, W) tensor around a task's rows: plane(c) + q is
// pixel q of the task (row i0 + q / W), valid for task rows widened by `halo` rows each side.
// Read in place where the tensor already is acc_t with contiguous rows; otherwise (or with
// `always_copy`, for kernels that read lanes outside the image) copied into a buffer with a
// guard of `halo` rows plus `guard` elements on each side, so that those reads stay inside it.
template <typename scalar_t, typename acc_t>
class FlatPlanes {
 public:
  FlatPlanes(const scalar_t* t, const Strides4& ts, int64_t channels, int64_t H, int64_t W,
             int64_t max_rows, int64_t halo, int64_t guard, bool always_copy)
      : t_(t), ts_(ts), channels_(channels), H_(H), W_(W), halo_(halo), guard_(guard),
        in_place_(!always_copy && std::is_same_v<scalar_t, acc_t> && ts.w == 1 && ts.h == W),
        stride_(in_place_ ? ts.c : (max_rows + 2 * halo) * W + 2 * guard),
        buffer_(in_place_ ? 0 : channels * stride_) {}

  void load(int64_t n, int64_t c0, int64_t i0, int64_t rows) {
    const scalar_t* src = t_ + n * ts_.b + c0 * ts_.c;
    offset_ = n * ts_.b + c0 * ts_.c + i0 * W_;
    if (in_place_) {
      origin_ = reinterpret_cast<const acc_t*>(t_) + offset_;
      return;
    }
    origin_ = buffer_.data() + guard_ + halo_ * W_;
    const int64_t r0 = std::max<int64_t>(0, i0 - halo_), r1 = std::min(H_, i0 + rows + halo_);
    acc_t* dst = buffer_.data() + guard_ + (r0 - i0 + halo_) * W_;
    if (ts_.w == 1 && ts_.h == W_) {  // rows contiguous: one piece per plane
      for (int64_t c = 0; c < channels_; ++c)
        convert_copy(src + c * ts_.c + r0 * W_, dst + c * stride_, (r1 - r0) * W_);
      return;
    }
    for (int64_t r = r0; r < r1; ++r)
      copy_channels(dst + (r - r0) * W_, stride_, 1, src + r * ts_.h, ts_.c, ts_.w, channels_, W_);
  }

  const acc_t* plane(int64_t c) const { return origin_ + c * stride_; }
  int64_t stride() const { return stride_; }

  // Elements from a pixel of the loaded task to the same pixel of task (n, c0, i0), to
  // prefetch that task's planes; 0 (nothing to prefetch) for a copy.
  int64_t ahead(int64_t n, int64_t c0, int64_t i0) const {
    return in_place_ ? n * ts_.b + c0 * ts_.c + i0 * W_ - offset_ : 0;
  }

 private:
  const scalar_t* t_;
  Strides4 ts_;
  int64_t channels_, H_, W_, halo_, guard_;
  bool in_place_;
  int64_t stride_;
  std::vector<acc_t> buffer_;
  const acc_t* origin_ = nullptr;
  int64_t offset_ = 0;
};

// `channels` output planes of one item of a (N, C, H, W) tensor for a task's rows: written in
// place where the tensor is acc_t with contiguous rows, else into a buffer that flush() copies.
template <typename scalar_t, typename acc_t>
class FlatOutput {
 public:
  FlatOutput(scalar_t* t, const Strides4& ts, int64_t channels, int64_t W, int64_t max_rows)
      : t_(t), ts_(ts), channels_(channels), W_(W),
        in_place_(std::is_same_v<scalar_t, acc_t> && ts.w == 1 && ts.h == W),
        stride_(in_place_ ? ts.c : max_rows * W), buffer_(in_place_ ? 0 : channels * stride_) {}

  void start(int64_t n, int64_t c0, int64_t i0) {
    offset_ = n * ts_.b + c0 * ts_.c + i0 * ts_.h;
    dst_ = t_ + offset_;
    origin_ = in_place_ ? reinterpret_cast<acc_t*>(dst_) : buffer_.data();
  }

  acc_t* plane(int64_t c) const { return origin_ + c * stride_; }

  // As FlatPlanes::ahead.
  int64_t ahead(int64_t n, int64_t c0, int64_t i0) const {
    return in_place_ ? n * ts_.b + c0 * ts_.c + i0 * ts_.h - offset_ : 0;
  }

  void flush(int64_t rows) {
    if (in_place_) return;
    for (int64_t r = 0; r < rows; ++r)
      copy_channels(dst_ + r * ts_.h, ts_.c, ts_.w, buffer_.data() + r * W_, stride_, 1,
                    channels_, W_);
  }

 private:
  scalar_t* t_;
  Strides4 ts_;
  int64_t channels_, W_;
  bool in_place_;
  int64_t stride_;
  std::vector<acc_t> buffer_;
  scalar_t* dst_ = nullptr;
  acc_t* origin_ = nullptr;
  int64_t offset_ = 0;
};

// Distance in elements from pixel q of a task to the pixel to prefetch: 4 vectors ahead,
// carrying on into the next task (`next` elements on from this one, 0 if none) near the end.
// Cold, the K*K weight planes and the outputs stall on memory otherwise: they are more
// streams than the hardware prefetcher follows.
inline int64_t prefetch_distance(int64_t q, int64_t pixels, int64_t next, int64_t VS) {
  const int64_t ahead = 4 * VS;
  if (next == 0) return 0;
  return q + ahead < pixels ? ahead : next + ahead - pixels;
}

// Forward (kGradInput = false): out[c, q] = sum_t w[t, q] * x[c, q + offset[t]].
// grad_input (kGradInput = true): the same gather from grad_out, since with same padding the
// output pixel that tap (K-1-u, K-1-v) of input pixel q reads back from is q + offset[u*K + v]:
// grad_x[c, q] = sum_t w[KK-1-t, q + offset[t]] * grad_out[c, q + offset[t]].
template <typename scalar_t, bool kGradInput>
void gather_flat_impl(const InvolutionShape& sh, const scalar_t* src, const Strides4& ss,
                      const scalar_t* w, scalar_t* dst, const Strides4& ds) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t VS = Vec<acc_t>::size();
  const int64_t K = sh.K, H = sh.H, W = sh.W, KK = sh.kk(), CG = sh.channels_per_group();
  const int64_t rb = rows_per_task(H, sh.B * sh.G);
  const int64_t blocks = (H + rb - 1) / rb;
  const FlatTaps taps(sh, rb, VS);

  at::parallel_for(0, sh.B * sh.G * blocks, 1, [&](int64_t begin, int64_t end) {
    // Copied with guards: the channel loads are unmasked (the taps off the image are dropped
    // by masked FMAs), which is faster than masked loads.
    FlatPlanes<scalar_t, acc_t> chans(src, ss, CG, H, W, rb, sh.padding, sh.padding + VS, true);
    FlatPlanes<scalar_t, acc_t> weights(w, plane_strides(sh), KK, H, W, rb,
                                        kGradInput ? sh.padding : 0, sh.padding, false);
    FlatOutput<scalar_t, acc_t> out(dst, ds, CG, W, rb);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bg = task / blocks, b = bg / sh.G, g = bg % sh.G;
      const int64_t i0 = (task % blocks) * rb, rows = std::min(rb, H - i0), pixels = rows * W;
      chans.load(b, g * CG, i0, rows);
      weights.load(bg, 0, i0, rows);
      out.start(b, g * CG, i0);
      int64_t w_next = 0, out_next = 0;
      if (task + 1 < end) {
        const int64_t bg1 = (task + 1) / blocks, i1 = ((task + 1) % blocks) * rb;
        w_next = weights.ahead(bg1, 0, i1);
        out_next = out.ahead(bg1 / sh.G, bg1 % sh.G * CG, i1);
      }
      for (int64_t q = 0; q < pixels; q += VS) {
        const int64_t n = std::min(VS, pixels - q);
        const int64_t w_ahead = prefetch_distance(q, pixels, w_next, VS);
        const int64_t out_ahead = prefetch_distance(q, pixels, out_next, VS);
        for_each_channel_block(CG, [&](int64_t c0, auto block) {
          constexpr int64_t NC = decltype(block)::value;
          Vec<acc_t> acc[NC];
          INVOLUTION_UNROLL
          for (int64_t cc = 0; cc < NC; ++cc) acc[cc] = Vec<acc_t>(acc_t(0));
          for (int64_t u = 0; u < K; ++u) {
            const uint32_t rows_in = taps.row_bits(u, q, i0, rows);
            if (rows_in == 0) continue;
            for (int64_t v = 0; v < K; ++v) {
              const uint32_t bits = rows_in & taps.col_bits(q, v);
              if (bits == 0) continue;
              const int64_t t = u * K + v, pos = q + taps.offset[t];
              const LaneMask<acc_t> lanes(bits);
              const acc_t* w_t = kGradInput ? weights.plane(KK - 1 - t) + pos : weights.plane(t) + q;
              if (c0 == 0 && w_ahead != 0) __builtin_prefetch(w_t + w_ahead);
              const Vec<acc_t> wv = lanes.load(w_t);  // in place; shifted for grad_input
              const acc_t* x_t = chans.plane(c0) + pos;
              INVOLUTION_UNROLL
              for (int64_t cc = 0; cc < NC; ++cc)
                acc[cc] = lanes.fmadd(wv, Vec<acc_t>::loadu(x_t + cc * chans.stride()), acc[cc]);
            }
          }
          INVOLUTION_UNROLL
          for (int64_t cc = 0; cc < NC; ++cc) {
            store_first(out.plane(c0 + cc) + q, acc[cc], n);
            if (out_ahead != 0) __builtin_prefetch(out.plane(c0 + cc) + q + out_ahead, 1);
          }
        });
      }
      out.flush(rows);
    }
  });
}

// Calls fn(v0, BlockSize<T>) over the K taps of a kernel row: one block for K = 3 or 7
// (RedNet), else blocks of 4, 2 and 1.
template <typename Fn>
inline void for_each_tap_block(int64_t K, const Fn& fn) {
  if (K == 7) return fn(0, BlockSize<7>{});
  if (K == 3) return fn(0, BlockSize<3>{});
  int64_t v = 0;
  for (; v + 4 <= K; v += 4) fn(v, BlockSize<4>{});
  if (v + 2 <= K) fn(v, BlockSize<2>{}), v += 2;
  if (v < K) fn(v, BlockSize<1>{});
}

// grad_w[t, q] = sum_c grad_out[c, q] * x[c, q + offset[t]] over the channels of the group.
// T taps x RQ pixel vectors of accumulators stay in registers over the channel loop; the
// input is copied (with guards) so that unmasked loads may read lanes outside the image, whose
// sums are dropped when stored.
template <typename scalar_t>
void grad_weight_flat_impl(const InvolutionShape& sh, const scalar_t* go, const Strides4& gs,
                           const scalar_t* x, const Strides4& xs, scalar_t* gw) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t VS = Vec<acc_t>::size();
  constexpr int64_t RQ = 2;  // pixel vectors: 7 taps x 2 accumulators + 2 grad_out vectors
  const int64_t K = sh.K, H = sh.H, W = sh.W, KK = sh.kk(), CG = sh.channels_per_group();
  const int64_t rb = rows_per_task(H, sh.B * sh.G);
  const int64_t blocks = (H + rb - 1) / rb;
  const FlatTaps taps(sh, rb, VS);

  at::parallel_for(0, sh.B * sh.G * blocks, 1, [&](int64_t begin, int64_t end) {
    FlatPlanes<scalar_t, acc_t> grads(go, gs, CG, H, W, rb, 0, 0, false);
    FlatPlanes<scalar_t, acc_t> inputs(x, xs, CG, H, W, rb, sh.padding, sh.padding + RQ * VS, true);
    FlatOutput<scalar_t, acc_t> out(gw, plane_strides(sh), KK, W, rb);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bg = task / blocks, b = bg / sh.G, g = bg % sh.G;
      const int64_t i0 = (task % blocks) * rb, rows = std::min(rb, H - i0), pixels = rows * W;
      grads.load(b, g * CG, i0, rows);
      inputs.load(b, g * CG, i0, rows);
      out.start(bg, 0, i0);
      int64_t out_next = 0;
      if (task + 1 < end) {
        const int64_t bg1 = (task + 1) / blocks, i1 = ((task + 1) % blocks) * rb;
        out_next = out.ahead(bg1, 0, i1);
      }
      auto vectors = [&](int64_t q, auto vectors_in_block) {
        constexpr int64_t NQ = decltype(vectors_in_block)::value;
        // The pixels of each vector (the last one of a task may be partial) and the lanes of
        // each kernel row u that stay inside the image.
        int64_t n[NQ];
        LaneMask<acc_t> lanes[NQ];
        INVOLUTION_UNROLL
        for (int64_t r = 0; r < NQ; ++r) {
          n[r] = std::min(VS, pixels - q - r * VS);
          lanes[r] = LaneMask<acc_t>(low_lanes(n[r]));
        }
        for (int64_t u = 0; u < K; ++u) {
          uint32_t rows_in[NQ];
          INVOLUTION_UNROLL
          for (int64_t r = 0; r < NQ; ++r) rows_in[r] = taps.row_bits(u, q + r * VS, i0, rows);
          for_each_tap_block(K, [&](int64_t v0, auto taps_in_block) {
            constexpr int64_t T = decltype(taps_in_block)::value;
            const int64_t t0 = u * K + v0;
            Vec<acc_t> acc[T][NQ];
            INVOLUTION_UNROLL
            for (int64_t k = 0; k < T; ++k)
              INVOLUTION_UNROLL
              for (int64_t r = 0; r < NQ; ++r) acc[k][r] = Vec<acc_t>(acc_t(0));
            const acc_t* x_t[T];
            INVOLUTION_UNROLL
            for (int64_t k = 0; k < T; ++k) x_t[k] = inputs.plane(0) + q + taps.offset[t0 + k];
            const acc_t* go_q = grads.plane(0) + q;
            const int64_t go_stride = grads.stride(), x_stride = inputs.stride();
            for (int64_t c = 0; c < CG; ++c) {
              const acc_t* go_c = go_q + c * go_stride;
              Vec<acc_t> gv[NQ];
              INVOLUTION_UNROLL
              for (int64_t r = 0; r < NQ; ++r) gv[r] = lanes[r].load(go_c + r * VS);
              INVOLUTION_UNROLL
              for (int64_t k = 0; k < T; ++k)
                INVOLUTION_UNROLL
                for (int64_t r = 0; r < NQ; ++r)
                  acc[k][r] = at::vec::fmadd(gv[r], Vec<acc_t>::loadu(x_t[k] + c * x_stride + r * VS),
                                             acc[k][r]);
            }
            INVOLUTION_UNROLL
            for (int64_t k = 0; k < T; ++k)
              INVOLUTION_UNROLL
              for (int64_t r = 0; r < NQ; ++r) {
                const int64_t qr = q + r * VS;
                const LaneMask<acc_t> inside(rows_in[r] & taps.col_bits(qr, v0 + k));
                store_first(out.plane(t0 + k) + qr, inside.select(acc[k][r]), n[r]);
                const int64_t out_ahead = prefetch_distance(qr, pixels, out_next, VS);
                if (out_ahead != 0) __builtin_prefetch(out.plane(t0 + k) + qr + out_ahead, 1);
              }
          });
        }
      };
      for_each_pixel_block<RQ>(ceil_div(pixels, VS), [&](int64_t first, auto block) {
        vectors(first * VS, block);
      });
      out.flush(rows);
    }
  });
}

#endif  // CPU_CAPABILITY_AVX512

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
