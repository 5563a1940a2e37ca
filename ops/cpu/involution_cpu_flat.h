// Row-flattened kernels (forward, grad_input, grad_weight) for stride 1 with "same" padding
// (Ho = H, Wo = W, so 2p = (K-1)d), built for AVX-512 and AVX2, whose masked loads, stores and
// lane selects they need (kernel_family in involution_cpu_dispatch.h says where they run).
// With that geometry an output pixel and the input pixel it centres on have the same flat
// index q = i*W + j, and tap (u, v) of every pixel sits at the fixed offset
// (u*d - p)*W + v*d - p. A block of rows is then one vector loop over q with every lane in
// use, whatever W is (a panel kernel's 7-pixel rows fill 7 of 16 lanes), with the weight
// planes, grad_output and the results in their NCHW places: no transposes, and a plain copy of
// the rows each task reads for the other operand. Taps that leave the image (above/below, or
// across the left/right edge, where the flat index wraps into the neighbouring row) are
// dropped by lane masks; vectors whose lanes are all inside take unmasked loads and FMAs.
#pragma once

#include "involution_cpu_common.h"

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#define INVOLUTION_CPU_FLAT_KERNELS 1
#endif

#if defined(INVOLUTION_CPU_FLAT_KERNELS)

namespace involution_mm {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

#if defined(CPU_CAPABILITY_AVX512)
// The lanes l of a vector with bit l of `bits` set: an AVX-512 mask register.
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
#else
// The same with AVX2, which has no mask registers: a vector with all bits set on the lanes,
// a blend after the FMA (so that a NaN or infinity outside the image stays out) and
// vmaskmov loads and stores, which do not touch the other lanes' memory.
template <typename acc_t>
struct LaneMask {
  static_assert(Vec<acc_t>::size() <= 32, "lane bits are a uint32_t");
  Vec<acc_t> m;
  LaneMask() = default;
  explicit LaneMask(uint32_t bits) : m(from_bits(bits)) {}
  Vec<acc_t> fmadd(const Vec<acc_t>& a, const Vec<acc_t>& b, const Vec<acc_t>& acc) const {
    return Vec<acc_t>::blendv(acc, at::vec::fmadd(a, b, acc), m);
  }
  Vec<acc_t> select(const Vec<acc_t>& v) const { return v & m; }
  Vec<acc_t> load(const acc_t* p) const {
    if constexpr (sizeof(acc_t) == 4) return _mm256_maskload_ps(p, _mm256_castps_si256(m));
    else return _mm256_maskload_pd(p, _mm256_castpd_si256(m));
  }
  void store(acc_t* p, const Vec<acc_t>& v) const {
    if constexpr (sizeof(acc_t) == 4) _mm256_maskstore_ps(p, _mm256_castps_si256(m), v);
    else _mm256_maskstore_pd(p, _mm256_castpd_si256(m), v);
  }

 private:
  static Vec<acc_t> from_bits(uint32_t bits) {
    if constexpr (sizeof(acc_t) == 4) {
      const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
      const __m256i set = _mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits)), lane_bit);
      return _mm256_castsi256_ps(_mm256_cmpeq_epi32(set, lane_bit));
    } else {
      const __m256i lane_bit = _mm256_setr_epi64x(1, 2, 4, 8);
      const __m256i set = _mm256_and_si256(_mm256_set1_epi64x(bits), lane_bit);
      return _mm256_castsi256_pd(_mm256_cmpeq_epi64(set, lane_bit));
    }
  }
};
#endif

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
// start at a row start, in vectors of VS lanes. Tap t = u*K + v of pixel q reads
// q + offset[t]; it is inside the image for the lanes of row_bits(u, ...) & col_bits(q, v).
template <int64_t VS>
struct FlatTaps {
  int64_t K, H, W;
  std::vector<int64_t> offset;
  std::vector<int64_t> row_lo, row_hi;  // per u: the output rows whose tap row is inside
  std::vector<uint32_t> cols;           // [(q / VS) * K + v]

  FlatTaps(const InvolutionShape& sh, int64_t max_rows)
      : K(sh.K), H(sh.H), W(sh.W), offset(sh.kk()), row_lo(sh.K), row_hi(sh.K) {
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
  uint32_t col_bits(int64_t q, int64_t v) const { return cols_of(q)[v]; }
  const uint32_t* cols_of(int64_t q) const { return cols.data() + (q / VS) * K; }  // [v]
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
  int64_t stride() const { return stride_; }

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
                      const scalar_t* w, scalar_t* dst, const Strides4& ds,
                      const OutputEpilogue& epilogue) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t VS = Vec<acc_t>::size();
  const int64_t K = sh.K, H = sh.H, W = sh.W, KK = sh.kk(), CG = sh.channels_per_group();
  const TaskGrid grid(sh, H);
  const int64_t rb = grid.block_rows();
  const FlatTaps<VS> taps(sh, rb);
  const uint32_t all_lanes = low_lanes(VS);
  const ChannelEpilogue<scalar_t> epi(epilogue);

  at::parallel_for(0, grid.count(), 1, [&](int64_t begin, int64_t end) {
    // Copied with guards: the channel loads are unmasked (the taps off the image are dropped
    // by masked FMAs), which is faster than masked loads.
    FlatPlanes<scalar_t, acc_t> chans(src, ss, CG, H, W, rb, sh.padding, sh.padding + VS, true);
    FlatPlanes<scalar_t, acc_t> weights(w, plane_strides(sh), KK, H, W, rb,
                                        kGradInput ? sh.padding : 0, sh.padding, false);
    FlatOutput<scalar_t, acc_t> out(dst, ds, CG, W, rb);
    for (int64_t task = begin; task < end; ++task) {
      const Task tk = grid(task);
      const int64_t bg = tk.bg, b = tk.b, g = tk.g, i0 = tk.r0, rows = tk.rows;
      const int64_t pixels = rows * W;
      chans.load(b, g * CG, i0, rows);
      weights.load(bg, 0, i0, rows);
      out.start(b, g * CG, i0);
      int64_t w_next = 0, out_next = 0;
      if (task + 1 < end) {
        const Task next = grid(task + 1);
        w_next = weights.ahead(next.bg, 0, next.r0);
        out_next = out.ahead(next.b, next.g * CG, next.r0);
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
              // In place; shifted for grad_input, so only lanes inside the image may be read.
              const acc_t* w_t = kGradInput ? weights.plane(KK - 1 - t) + pos : weights.plane(t) + q;
              if (c0 == 0 && w_ahead != 0) __builtin_prefetch(w_t + w_ahead);
              const acc_t* x_t = chans.plane(c0) + pos;
              if (bits == all_lanes) {
                const Vec<acc_t> wv = Vec<acc_t>::loadu(w_t);
                INVOLUTION_UNROLL
                for (int64_t cc = 0; cc < NC; ++cc)
                  acc[cc] = at::vec::fmadd(wv, Vec<acc_t>::loadu(x_t + cc * chans.stride()), acc[cc]);
              } else {
                const LaneMask<acc_t> lanes(bits);
                const Vec<acc_t> wv = lanes.load(w_t);
                INVOLUTION_UNROLL
                for (int64_t cc = 0; cc < NC; ++cc)
                  acc[cc] = lanes.fmadd(wv, Vec<acc_t>::loadu(x_t + cc * chans.stride()), acc[cc]);
              }
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
      epi.apply(dst, ds, b, g * CG, CG, i0, rows, W);
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
  // Pixel vectors of a register block: T x RQ accumulators + RQ grad_out vectors, with T = 7
  // taps, fit 32 registers with RQ = 2 and 16 with RQ = 1.
  constexpr int64_t RQ = kVectorRegisters >= 32 ? 2 : 1;
  const int64_t K = sh.K, H = sh.H, W = sh.W, KK = sh.kk(), CG = sh.channels_per_group();
  const TaskGrid grid(sh, H);
  const int64_t rb = grid.block_rows();
  const FlatTaps<VS> taps(sh, rb);

  at::parallel_for(0, grid.count(), 1, [&](int64_t begin, int64_t end) {
    FlatPlanes<scalar_t, acc_t> grads(go, gs, CG, H, W, rb, 0, 0, false);
    FlatPlanes<scalar_t, acc_t> inputs(x, xs, CG, H, W, rb, sh.padding, sh.padding + RQ * VS, true);
    FlatOutput<scalar_t, acc_t> out(gw, plane_strides(sh), KK, W, rb);
    for (int64_t task = begin; task < end; ++task) {
      const Task tk = grid(task);
      const int64_t bg = tk.bg, b = tk.b, g = tk.g, i0 = tk.r0, rows = tk.rows;
      const int64_t pixels = rows * W;
      grads.load(b, g * CG, i0, rows);
      inputs.load(b, g * CG, i0, rows);
      out.start(bg, 0, i0);
      int64_t out_next = 0;
      if (task + 1 < end) {
        const Task next = grid(task + 1);
        out_next = out.ahead(next.bg, 0, next.r0);
      }
      // `step`: the dilation, as a constant where it is 1, so that the taps of a block are
      // fixed displacements of one pointer (as run-time offsets they outnumber the general
      // registers, and every FMA would reload its address from the stack). `full`: all NQ
      // vectors lie inside the task; only the last block of a task may take the masked form,
      // whose accumulators the compiler keeps in memory.
      auto vectors = [&](int64_t q, auto vectors_in_block, auto step, auto full) {
        constexpr int64_t NQ = decltype(vectors_in_block)::value;
        constexpr bool kFull = decltype(full)::value;
        const int64_t cg = CG, go_stride = grads.stride(), x_stride = inputs.stride();
        const int64_t out_stride = out.stride();
        // The pixels of each vector and the lanes of each kernel row u inside the image.
        int64_t n[NQ];
        INVOLUTION_UNROLL
        for (int64_t r = 0; r < NQ; ++r) n[r] = kFull ? VS : std::min(VS, pixels - q - r * VS);
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
            const acc_t* x_c = inputs.plane(0) + q + taps.offset[t0];  // tap k: + k * step
            const acc_t* go_c = grads.plane(0) + q;
            for (int64_t c = 0; c < cg; ++c, x_c += x_stride, go_c += go_stride) {
              Vec<acc_t> gv[NQ];
              INVOLUTION_UNROLL
              for (int64_t r = 0; r < NQ; ++r) {
                if (kFull || n[r] == VS) gv[r] = Vec<acc_t>::loadu(go_c + r * VS);
                else gv[r] = LaneMask<acc_t>(low_lanes(n[r])).load(go_c + r * VS);
              }
              INVOLUTION_UNROLL
              for (int64_t k = 0; k < T; ++k)
                INVOLUTION_UNROLL
                for (int64_t r = 0; r < NQ; ++r)
                  acc[k][r] = at::vec::fmadd(gv[r], Vec<acc_t>::loadu(x_c + k * step + r * VS),
                                             acc[k][r]);
            }
            // Through memory: with the masking below, the compiler would keep acc there and
            // zero it with a slow `rep stos` before every block.
            alignas(64) acc_t sums[T][NQ][VS];
            INVOLUTION_UNROLL
            for (int64_t k = 0; k < T; ++k)
              INVOLUTION_UNROLL
              for (int64_t r = 0; r < NQ; ++r) acc[k][r].store(sums[k][r]);
            INVOLUTION_UNROLL
            for (int64_t r = 0; r < NQ; ++r) {
              const int64_t qr = q + r * VS;
              const uint32_t* cols = taps.cols_of(qr) + v0;
              const int64_t out_ahead = prefetch_distance(qr, pixels, out_next, VS);
              acc_t* dst = out.plane(t0) + qr;
              INVOLUTION_UNROLL
              for (int64_t k = 0; k < T; ++k, dst += out_stride) {
                const Vec<acc_t> sums_k =
                    LaneMask<acc_t>(rows_in[r] & cols[k]).select(Vec<acc_t>::loadu(sums[k][r]));
                if (kFull) sums_k.store(dst);
                else store_first(dst, sums_k, n[r]);
                if (out_ahead != 0) __builtin_prefetch(dst + out_ahead, 1);
              }
            }
          });
        }
      };
      auto all_vectors = [&](auto step) {
        for_each_pixel_block<RQ>(ceil_div(pixels, VS), [&](int64_t first, auto block) {
          const int64_t q = first * VS;
          if (q + decltype(block)::value * VS <= pixels) vectors(q, block, step, std::true_type{});
          else vectors(q, block, step, std::false_type{});
        });
      };
      if (sh.dilation == 1) all_vectors(BlockSize<1>{});
      else all_vectors(sh.dilation);
      out.flush(rows);
    }
  });
}

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace involution_mm

#endif  // INVOLUTION_CPU_FLAT_KERNELS
