// A 1x1 convolution for inference with its per-channel affine epilogue (a folded BN or a
// bias), residual add and ReLU applied to each output tile while the GEMM has just left it in
// cache. Separate elementwise ops would each read and write the whole output once more.
#include <ATen/ATen.h>
#include <ATen/Config.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <optional>

#include "../common/involution_op.h"
#include "../common/involution_shape.h"

#if AT_BUILD_WITH_BLAS()
// The Fortran BLAS that torch itself calls for CPU matrix products (its MKL where it has one).
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n,
                       const int* k, const float* alpha, const float* a, const int* lda,
                       const float* b, const int* ldb, const float* beta, float* c,
                       const int* ldc);
extern "C" void dgemm_(const char* transa, const char* transb, const int* m, const int* n,
                       const int* k, const double* alpha, const double* a, const int* lda,
                       const double* b, const int* ldb, const double* beta, double* c,
                       const int* ldc);
#endif

namespace involution_mm {
namespace cpu {
namespace {

// Output elements per tile: a tile of the output and the input columns it reads stay in a
// core's L2 between the GEMM and the epilogue.
constexpr int64_t kTileElements = 1 << 16;

struct Gemm {
  int64_t pixels, in_channels, out_channels;
};

// Output rows [o, o + m) x pixels [j, j + n) of one image.
struct Tile {
  int64_t o, m, j, n;
};

// The tiles of an image split its pixels, or, where the weight (O x C) is larger than the
// image's input (C x P), as in the deep stages at small batch, its output channels: each
// tile's GEMM reads its rows of the weight and its columns of the input, so the larger
// operand is then read once per image instead of once per tile. Tiles are of one size (a
// multiple of 16; the last may be smaller), and at least one per thread over the batch.
class ImageTiles {
 public:
  ImageTiles(const Gemm& g, int64_t batch)
      : g_(g), split_channels_(g.out_channels > g.pixels),
        extent_(split_channels_ ? g.out_channels : g.pixels) {
    const int64_t other = split_channels_ ? g.pixels : g.out_channels;
    int64_t count = ceil_div(extent_, std::max<int64_t>(16, kTileElements / other));
    count = std::max(count, ceil_div(at::get_num_threads(), batch));
    step_ = std::min(extent_, ceil_div(ceil_div(extent_, count), 16) * 16);
    count_ = ceil_div(extent_, step_);
  }

  int64_t count() const { return count_; }

  Tile operator()(int64_t index) const {
    const int64_t start = index * step_, size = std::min(step_, extent_ - start);
    return split_channels_ ? Tile{start, size, 0, g_.pixels}
                           : Tile{0, g_.out_channels, start, size};
  }

 private:
  Gemm g_;
  bool split_channels_;
  int64_t extent_, step_, count_;
};

#if AT_BUILD_WITH_BLAS()
void blas_gemm(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c,
               int ldc) {
  const float one = 1, zero = 0;
  sgemm_("N", "N", &m, &n, &k, &one, a, &lda, b, &ldb, &zero, c, &ldc);
}
void blas_gemm(int m, int n, int k, const double* a, int lda, const double* b, int ldb,
               double* c, int ldc) {
  const double one = 1, zero = 0;
  dgemm_("N", "N", &m, &n, &k, &one, a, &lda, b, &ldb, &zero, c, &ldc);
}
#endif

// out[b, o:o+m, j:j+n] = weight[o:o+m] @ input[b, :, j:j+n]: (m, C) x (C, n) in row-major
// terms, i.e. the column-major product input^T (n, C) x weight^T (C, m) with leading dims P and
// C, written with leading dim P.
template <typename T>
void tile_gemm(const Gemm& g, const at::Tensor& input, const at::Tensor& weight_matrix,
               at::Tensor& out, int64_t b, const Tile& t) {
#if AT_BUILD_WITH_BLAS()
  const int64_t image_in = b * g.in_channels * g.pixels, image_out = b * g.out_channels * g.pixels;
  blas_gemm(static_cast<int>(t.n), static_cast<int>(t.m), static_cast<int>(g.in_channels),
            input.const_data_ptr<T>() + image_in + t.j, static_cast<int>(g.pixels),
            weight_matrix.const_data_ptr<T>() + t.o * g.in_channels,
            static_cast<int>(g.in_channels),
            out.mutable_data_ptr<T>() + image_out + t.o * g.pixels + t.j,
            static_cast<int>(g.pixels));
#else
  at::Tensor tile =
      out.select(0, b).view({g.out_channels, g.pixels}).narrow(0, t.o, t.m).narrow(1, t.j, t.n);
  at::mm_out(tile, weight_matrix.narrow(0, t.o, t.m),
             input.select(0, b).view({g.in_channels, g.pixels}).narrow(1, t.j, t.n));
#endif
}

template <bool kResidual, bool kRelu, typename T>
void epilogue_row(T* row, const T* residual, T scale, T shift, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    T v = row[i] * scale + shift;
    if constexpr (kResidual) v += residual[i];
    if constexpr (kRelu) v = std::max(v, T(0));  // NaN stays NaN, as in torch.relu
    row[i] = v;
  }
}

template <typename T>
void epilogue(const Gemm& g, T* out, const T* residual, const T* scale, const T* shift,
              bool relu, const Tile& tile) {
  const int64_t j = tile.j, n = tile.n;
  for (int64_t o = tile.o; o < tile.o + tile.m; ++o) {
    T* row = out + o * g.pixels + j;
    const T* res = residual ? residual + o * g.pixels + j : nullptr;
    const T s = scale ? scale[o] : T(1);
    const T t = shift ? shift[o] : T(0);
    if (res && relu) epilogue_row<true, true>(row, res, s, t, n);
    else if (res) epilogue_row<true, false>(row, res, s, t, n);
    else if (relu) epilogue_row<false, true>(row, res, s, t, n);
    else epilogue_row<false, false>(row, res, s, t, n);
  }
}

at::Tensor conv1x1_epilogue(const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& scale,
                            const std::optional<at::Tensor>& shift,
                            const std::optional<at::Tensor>& residual, bool relu) {
  TORCH_CHECK_VALUE(input.dim() == 4, "conv1x1_epilogue: input must be (B, C, H, W), got ",
                    input.sizes());
  TORCH_CHECK_VALUE(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble,
                    "conv1x1_epilogue: input must be float32 or float64, got ",
                    input.scalar_type());
  const int64_t batch = input.size(0), channels = input.size(1);
  TORCH_CHECK_VALUE(channels > 0, "conv1x1_epilogue: input must have at least one channel, got ",
                    input.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(1) == channels && weight.size(2) == 1 &&
                        weight.size(3) == 1,
                    "conv1x1_epilogue: weight must be (O, ", channels, ", 1, 1) for an input of ",
                    channels, " channels, got ", weight.sizes());
  TORCH_CHECK_VALUE(weight.scalar_type() == input.scalar_type() &&
                        weight.device() == input.device(),
                    "conv1x1_epilogue: weight must be ", input.scalar_type(), " on ",
                    input.device(), " like the input, got ", weight.scalar_type(), " on ",
                    weight.device());
  const int64_t out_channels = weight.size(0);
  check_channel_vector("conv1x1_epilogue", scale, "scale", input, out_channels);
  check_channel_vector("conv1x1_epilogue", shift, "shift", input, out_channels);
  const std::vector<int64_t> out_size{batch, out_channels, input.size(2), input.size(3)};
  if (residual) {
    TORCH_CHECK_VALUE(residual->sizes() == c10::IntArrayRef(out_size),
                      "conv1x1_epilogue: residual must have the output's shape ",
                      c10::IntArrayRef(out_size), ", got ", residual->sizes());
    TORCH_CHECK_VALUE(residual->scalar_type() == input.scalar_type() &&
                          residual->device() == input.device(),
                      "conv1x1_epilogue: residual must be ", input.scalar_type(), " on ",
                      input.device(), " like the input, got ", residual->scalar_type(), " on ",
                      residual->device());
  }
  const Gemm g{input.size(2) * input.size(3), channels, out_channels};
  TORCH_CHECK_VALUE(g.pixels <= INT_MAX && channels <= INT_MAX && out_channels <= INT_MAX,
                    "conv1x1_epilogue: H*W=", g.pixels, ", C=", channels, " and O=",
                    out_channels, " must each fit a 32-bit BLAS index");
  const at::Tensor x = input.contiguous();
  const at::Tensor w = weight.contiguous();
  const at::Tensor s = scale ? scale->contiguous() : at::Tensor();
  const at::Tensor t = shift ? shift->contiguous() : at::Tensor();
  const at::Tensor r = residual ? residual->contiguous() : at::Tensor();
  at::Tensor out = at::empty(out_size, x.options());
  if (out.numel() == 0) return out;
  const ImageTiles tiles(g, batch);
  const int64_t tiles_per_image = tiles.count();
  const at::Tensor weight_matrix = w.view({out_channels, channels});
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv1x1_epilogue", [&] {
    const scalar_t* sp = s.defined() ? s.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* tp = t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* rp = r.defined() ? r.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch * tiles_per_image, 1, [&](int64_t begin, int64_t end) {
      for (int64_t index = begin; index < end; ++index) {
        const int64_t b = index / tiles_per_image;
        const Tile tile = tiles(index % tiles_per_image);
        scalar_t* out_image = op + b * out_channels * g.pixels;
        tile_gemm<scalar_t>(g, x, weight_matrix, out, b, tile);
        epilogue(g, out_image, rp ? rp + b * out_channels * g.pixels : nullptr, sp, tp, relu,
                 tile);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(involution_mm, m) {
  m.def("conv1x1_epilogue(Tensor input, Tensor weight, Tensor? scale, Tensor? shift, "
        "Tensor? residual, bool relu) -> Tensor");
}

TORCH_LIBRARY_IMPL(involution_mm, CPU, m) { m.impl("conv1x1_epilogue", &conv1x1_epilogue); }

}  // namespace cpu
}  // namespace involution_mm
