// Channel-vectorised kernels (forward, grad_input) for groups of one or two whole vectors of
// channels (NV = 1 or 2; e.g. C/G = 16 or 32 floats with AVX-512). The group's channels of one
// pixel then form aligned vectors and the pixel's kernel value is one broadcast: one weight
// serves a whole vector, and no load straddles the shifted windows of the taps. The panels
// hold the rows in pixel-major order ([row][column][channel]); outputs are accumulated per
// pixel and transposed back.
#pragma once

#include <cstdint>
#include <vector>

#include "involution_cpu_common.h"

namespace involution_mm {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

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
  return kVectorRegisters >= 32 ? (NV == 1 ? 8 : 4) : (NV == 1 ? 6 : 3);
}

// The same for the dense kernels, which hold one input column (NV vectors) and a broadcast
// weight besides the accumulators.
template <int64_t NV>
constexpr int64_t dense_pixel_block() {
  return kVectorRegisters >= 32 ? (NV == 1 ? 8 : 4) : (NV == 1 ? 12 : 6);
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

// out[c0 + cg, r0 + r, j] = pixels[(r * width + j) * CG + cg] for r < rows, j < width: the
// transpose back of a task's rows. Where those rows are contiguous in each channel (NCHW), one
// transpose covers them all: runs per channel as long as the task, and no partial vector at
// the end of every row.
template <typename scalar_t, typename acc_t>
void store_pixel_rows(scalar_t* out_c0_r0, const Strides4& os, const acc_t* pixels, int64_t CG,
                      int64_t width, int64_t rows) {
  const bool contiguous = os.w == 1 && os.h == width;
  const int64_t runs = contiguous ? 1 : rows, run_len = contiguous ? rows * width : width;
  for (int64_t r = 0; r < runs; ++r)
    copy_channels(out_c0_r0 + r * os.h, os.c, os.w, pixels + r * width * CG, int64_t(1), CG, CG,
                  run_len);
}

// DenseK = K > 0 for stride 1, dilation 1 and a K the kernel is built for: tap v of pixel
// j + r then reads column j + r + v, so each of the RB + K - 1 input columns of a kernel row is
// loaded once and serves the up to K pixels whose taps read it. DenseK = 0: any geometry, one
// load per tap.
template <typename scalar_t, int64_t NV, int64_t DenseK>
void forward_cv_impl(const InvolutionShape& sh, const scalar_t* x, const Strides4& xs,
                     const scalar_t* w, scalar_t* out, const Strides4& os,
                     const OutputEpilogue& epilogue) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t VS = Vec<acc_t>::size(), CG = NV * VS;
  constexpr int64_t R = DenseK > 0 ? dense_pixel_block<NV>() : pixel_block<NV>();
  const int64_t K = sh.K, s = sh.stride, d = sh.dilation, p = sh.padding;
  const int64_t Ho = sh.Ho, Wo = sh.Wo, KK = sh.kk();
  const int64_t Wp = (Wo - 1) * s + (K - 1) * d + 1;
  const TaskGrid grid(sh, Ho);
  const int64_t rb = grid.block_rows();
  const int64_t max_panel_rows = (rb - 1) * s + (K - 1) * d + 1;

  constexpr bool direct_weight = std::is_same_v<scalar_t, acc_t>;
  const ChannelEpilogue<scalar_t> epi(epilogue);

  at::parallel_for(0, grid.count(), 1, [&](int64_t begin, int64_t end) {
    AlignedBuffer<acc_t> panel(max_panel_rows * Wp * CG);
    std::vector<acc_t> weight_rows(direct_weight ? 0 : KK * rb * Wo);
    AlignedBuffer<acc_t> pixels(rb * Wo * CG);
    for (int64_t task = begin; task < end; ++task) {
      const Task tk = grid(task);
      const int64_t bg = tk.bg, b = tk.b, g = tk.g, i0 = tk.r0, rows = tk.rows;
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
        // The K*K weight rows of the next output row are Ho*Wo apart: more streams than the
        // hardware prefetcher follows, so each block fetches its columns of them, a block
        // ahead. Spread over the row, not issued at its start: a burst of K*K rows of
        // prefetches waits for free miss buffers.
        const bool prefetch_next_row = direct_weight && i0 + i + 1 < Ho;
        acc_t* pixels_i = pixels.data() + i * Wo * CG;
        // acc[r][nv] += w[u, v, i, j + r] * panel[i*s + u*d, (j + r)*s + v*d, nv-th vector]
        auto block = [&](int64_t j, auto pixels_in_block) {
          constexpr int64_t RB = decltype(pixels_in_block)::value;
          const int64_t next_row_ahead = Wo + std::min(RB, Wo - 1 - j);  // within the row
          Vec<acc_t> acc[RB][NV];
          INVOLUTION_UNROLL
          for (int64_t r = 0; r < RB; ++r)
            INVOLUTION_UNROLL
            for (int64_t nv = 0; nv < NV; ++nv) acc[r][nv] = Vec<acc_t>(acc_t(0));
          if constexpr (DenseK > 0) {
            // Kernel rows in a loop that is not unrolled, each with its K weight planes: all
            // K*K plane offsets (multiples of Ho*Wo, known at run time) outnumber the general
            // registers, and each FMA would reload its address from the stack. Column k serves
            // pixels r = k - v; for each pixel the taps still come in order of (u, v), and
            // only one column is live at a time.
            INVOLUTION_NO_UNROLL
            for (int64_t u = 0; u < DenseK; ++u) {
              const acc_t* x_u = panel.data() + ((i + u) * Wp + j) * CG;
              const acc_t* w_uv[DenseK];  // w[u, v, i, j]
              INVOLUTION_UNROLL
              for (int64_t v = 0; v < DenseK; ++v) {
                w_uv[v] = w_rows + (u * DenseK + v) * uv_stride + i * Wo + j;
                if (prefetch_next_row) __builtin_prefetch(w_uv[v] + next_row_ahead);
              }
              INVOLUTION_UNROLL
              for (int64_t k = 0; k < RB + DenseK - 1; ++k) {
                Vec<acc_t> xv[NV];
                INVOLUTION_UNROLL
                for (int64_t nv = 0; nv < NV; ++nv) xv[nv] = Vec<acc_t>::loadu(x_u + k * CG + nv * VS);
                INVOLUTION_UNROLL
                for (int64_t r = 0; r < RB; ++r) {
                  if (k - r < 0 || k - r >= DenseK) continue;  // resolved at compile time
                  const Vec<acc_t> wv(w_uv[k - r][r]);
                  INVOLUTION_UNROLL
                  for (int64_t nv = 0; nv < NV; ++nv)
                    acc[r][nv] = at::vec::fmadd(wv, xv[nv], acc[r][nv]);
                }
              }
            }
          } else {
            // Unrolled, or the register blocks live on the stack.
            INVOLUTION_UNROLL
            for (int64_t u = 0; u < K; ++u) {
              const acc_t* x_u = panel.data() + ((i * s + u * d) * Wp + j * s) * CG;
              const acc_t* w_u = w_rows + u * K * uv_stride + i * Wo + j;
              for (int64_t v = 0; v < K; ++v) {
                const acc_t* x_uv = x_u + v * d * CG;
                const acc_t* w_uv = w_u + v * uv_stride;
                if (prefetch_next_row) __builtin_prefetch(w_uv + next_row_ahead);
                INVOLUTION_UNROLL
                for (int64_t r = 0; r < RB; ++r) {
                  const Vec<acc_t> wv(w_uv[r]);
                  INVOLUTION_UNROLL
                  for (int64_t nv = 0; nv < NV; ++nv)
                    acc[r][nv] = at::vec::fmadd(
                        wv, Vec<acc_t>::loadu(x_uv + r * s * CG + nv * VS), acc[r][nv]);
                }
              }
            }
          }
          INVOLUTION_UNROLL
          for (int64_t r = 0; r < RB; ++r)
            INVOLUTION_UNROLL
            for (int64_t nv = 0; nv < NV; ++nv) acc[r][nv].store(pixels_i + (j + r) * CG + nv * VS);
        };
        for_each_pixel_block<R>(Wo, block);
      }
      store_pixel_rows(out + b * os.b + g * CG * os.c + i0 * os.h, os, pixels.data(), CG, Wo, rows);
      epi.apply(out, os, b, g * CG, CG, i0, rows, Wo);
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
  const int64_t K = sh.K, s = sh.stride, p = sh.padding;
  const int64_t H = sh.H, W = sh.W, Ho = sh.Ho, Wo = sh.Wo, KK = sh.kk();
  const InputTaps taps(sh);
  const int64_t row_len = taps.row_len();
  const TaskGrid grid(sh, H);
  const int64_t max_i_rows = taps.max_output_rows(grid.block_rows());

  at::parallel_for(0, grid.count(), 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> w_panel(KK * max_i_rows * row_len);
    AlignedBuffer<acc_t> go_panel(max_i_rows * row_len * CG);
    AlignedBuffer<acc_t> pixels(grid.block_rows() * W * CG);
    std::vector<std::pair<int64_t, int64_t>> rows_u;
    for (int64_t task = begin; task < end; ++task) {
      const Task tk = grid(task);
      const int64_t bg = tk.bg, b = tk.b, g = tk.g, h0 = tk.r0, h1 = tk.r0 + tk.rows;
      const RowRange i_range = taps.output_rows(h0, h1);
      const int64_t i_lo = i_range.lo, n_i = i_range.n;
      taps.fill_weight_panel(w_panel.data(), w + bg * KK * Ho * Wo, i_lo, n_i);
      // go_panel[(ii * row_len + j - j_lo) * CG + cg] = grad_out[c0 + cg, i_lo + ii, j]
      fill_pixel_panel(go_panel.data(), go + b * gs.b + g * CG * gs.c, gs, CG, Ho, Wo, i_lo, n_i,
                       row_len, -taps.j_lo);
      for (int64_t h = h0; h < h1; ++h) {
        acc_t* pixels_h = pixels.data() + (h - h0) * W * CG;
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
                // Column k = r - v + K - 1 (grad_out column m + p - (K - 1) + k) serves pixels
                // r = k + v - (K - 1); descending k keeps each pixel's taps in order of v.
                const acc_t* go_first = go_r + (p - (DenseK - 1)) * CG;
                INVOLUTION_UNROLL
                for (int64_t k = RB + DenseK - 2; k >= 0; --k) {
                  Vec<acc_t> gv[NV];
                  INVOLUTION_UNROLL
                  for (int64_t nv = 0; nv < NV; ++nv)
                    gv[nv] = Vec<acc_t>::loadu(go_first + k * CG + nv * VS);
                  INVOLUTION_UNROLL
                  for (int64_t r = 0; r < RB; ++r) {
                    const int64_t v = r - k + DenseK - 1;
                    if (v < 0 || v >= DenseK) continue;  // resolved at compile time
                    const Vec<acc_t> wv(w_r[v * n_i * row_len + p - v + r]);
                    INVOLUTION_UNROLL
                    for (int64_t nv = 0; nv < NV; ++nv)
                      acc[r][nv] = at::vec::fmadd(wv, gv[nv], acc[r][nv]);
                  }
                }
              } else {
                for (const auto& tap : taps.by_phase[phi]) {
                  const acc_t* w_t = w_r + tap.v * n_i * row_len + tap.jofs;
                  const acc_t* go_t = go_r + tap.jofs * CG;
                  INVOLUTION_UNROLL
                  for (int64_t r = 0; r < RB; ++r) {
                    const Vec<acc_t> wv(w_t[r]);
                    INVOLUTION_UNROLL
                    for (int64_t nv = 0; nv < NV; ++nv)
                      acc[r][nv] = at::vec::fmadd(
                          wv, Vec<acc_t>::loadu(go_t + r * CG + nv * VS), acc[r][nv]);
                  }
                }
              }
            }
            INVOLUTION_UNROLL
            for (int64_t r = 0; r < RB; ++r)
              INVOLUTION_UNROLL
              for (int64_t nv = 0; nv < NV; ++nv)
                acc[r][nv].store(pixels_h + ((m + r) * s + phi) * CG + nv * VS);
          };
          for_each_pixel_block<R>(taps.phase_len[phi], block);
        }
      }
      store_pixel_rows(gx + b * gxs.b + g * CG * gxs.c + h0 * gxs.h, gxs, pixels.data(), CG, W,
                       h1 - h0);
    }
  });
}

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace involution_mm
