// Panel kernels: any geometry, any C/G. Each task copies the rows it reads into small
// zero-padded panels in the accumulation type (float for half/bfloat16), so the inner loops
// have no bounds checks and vectorise along W. Panels are split into `stride` phases (column
// q*stride + ph stored at [ph][q]), which makes strided reads contiguous too.
#pragma once

#include "involution_cpu_common.h"

namespace involution_mm {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

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

// out[b, c, i, j] = sum_{u,v} w[b, g, u, v, i, j] * x[b, c, i*s - p + u*d, j*s - p + v*d]
template <typename scalar_t>
void forward_impl(const InvolutionShape& sh, const scalar_t* x, const Strides4& xs,
                  const scalar_t* w, scalar_t* out, const Strides4& os,
                  const OutputEpilogue& epilogue) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t K = sh.K, s = sh.stride, d = sh.dilation, p = sh.padding;
  const int64_t Ho = sh.Ho, Wo = sh.Wo, KK = sh.kk(), CG = sh.channels_per_group();
  const int64_t Q = Wo + ((K - 1) * d) / s;
  const TaskGrid grid(sh, Ho);
  const int64_t rb = grid.block_rows();
  const int64_t panel_size = ((rb - 1) * s + (K - 1) * d + 1) * s * Q;
  const ColumnTaps taps(K, s, d);
  const ChannelEpilogue<scalar_t> epi(epilogue);

  at::parallel_for(0, grid.count(), 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> panels(kMaxChannelBlock * panel_size);
    std::vector<acc_t> weight_rows(KK * rb * Wo);
    std::vector<acc_t> out_rows(kMaxChannelBlock * Wo);
    for (int64_t task = begin; task < end; ++task) {
      const Task tk = grid(task);
      const int64_t bg = tk.bg, b = tk.b, g = tk.g, i0 = tk.r0, rows = tk.rows;
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
      epi.apply(out, os, b, g * CG, CG, i0, rows, Wo);
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
  const TaskGrid grid(sh, Ho);
  const int64_t rb = grid.block_rows();
  const int64_t panel_size = ((rb - 1) * s + (K - 1) * d + 1) * s * Q;
  const ColumnTaps taps(K, s, d);

  at::parallel_for(0, grid.count(), 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> panels(kMaxChannelBlock * panel_size);
    std::vector<acc_t> go_rows(kMaxChannelBlock * rb * Wo);
    std::vector<acc_t> gw_rows(KK * rb * Wo);
    for (int64_t task = begin; task < end; ++task) {
      const Task tk = grid(task);
      const int64_t bg = tk.bg, b = tk.b, g = tk.g, i0 = tk.r0, rows = tk.rows;
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

// grad_x[b, c, h, w] = sum over the (u, v, i, j) with h = i*s - p + u*d, w = j*s - p + v*d of
// w[b, g, u, v, i, j] * grad_out[b, c, i, j]: a gather (InputTaps), one task per block of
// input rows.
template <typename scalar_t>
void grad_input_impl(const InvolutionShape& sh, const scalar_t* go, const Strides4& gs,
                     const scalar_t* w, scalar_t* gx, const Strides4& gxs) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t K = sh.K, s = sh.stride;
  const int64_t H = sh.H, W = sh.W, Ho = sh.Ho, Wo = sh.Wo, KK = sh.kk();
  const int64_t CG = sh.channels_per_group();

  const InputTaps taps(sh);
  const int64_t j_lo = taps.j_lo, row_len = taps.row_len();
  const TaskGrid grid(sh, H);
  const int64_t max_i_rows = taps.max_output_rows(grid.block_rows());
  const int64_t go_panel_size = max_i_rows * row_len;

  at::parallel_for(0, grid.count(), 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> w_panel(KK * max_i_rows * row_len);
    std::vector<acc_t> go_panels(kMaxChannelBlock * go_panel_size);
    std::vector<acc_t> gx_rows(kMaxChannelBlock * W), phase_rows(s > 1 ? kMaxChannelBlock * W : 0);
    std::vector<std::pair<int64_t, int64_t>> rows_u;  // (u, panel row) of the taps of row h
    for (int64_t task = begin; task < end; ++task) {
      const Task tk = grid(task);
      const int64_t bg = tk.bg, b = tk.b, g = tk.g, h0 = tk.r0, h1 = tk.r0 + tk.rows;
      const RowRange i_range = taps.output_rows(h0, h1);
      const int64_t i_lo = i_range.lo, n_i = i_range.n;
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

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace involution_mm
