// Runs the work items of the involution CUDA kernels (ops/cuda/involution_cuda_helpers.cuh) on
// the CPU, thread by thread as the grid-stride loops of the kernels would, and compares every
// result with a naive reference. It checks the index arithmetic of the CUDA kernels -- item
// decomposition, channel chunks, strides, padding/stride/dilation bounds, int32 and int64
// indices -- on machines without a GPU. Built and run by tests/test_cuda_kernel_emulation.py:
//   c++ -std=c++17 -O2 -I ops/cuda tests/cuda_kernel_emulator.cpp -o emulator && ./emulator
// Exit status 0 when every case matches, 1 otherwise (the first mismatches are printed).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "involution_cuda_helpers.cuh"

using namespace involution_mm;
using namespace involution_mm::cuda;

namespace {

int g_failures = 0;
int64_t g_checked = 0;

void fail(const std::string& what) {
  if (g_failures < 20) std::printf("MISMATCH %s\n", what.c_str());
  ++g_failures;
}

// A 4-d tensor (B, C, H, W) stored with the strides of a layout:
// 0 = NCHW contiguous, 1 = NHWC (channels_last), 2 = NCHW with gaps (a sliced view),
// 3 = channels_last with gaps.
struct Tensor4 {
  int64_t n[4];
  int64_t st[4];
  std::vector<double> data;
  double& at(int64_t b, int64_t c, int64_t h, int64_t w) {
    return data[b * st[0] + c * st[1] + h * st[2] + w * st[3]];
  }
};

Tensor4 make_tensor(int64_t B, int64_t C, int64_t H, int64_t W, int layout, double fill) {
  Tensor4 t{{B, C, H, W}, {0, 0, 0, 0}, {}};
  switch (layout) {
    case 0: t.st[3] = 1; t.st[2] = W; t.st[1] = H * W; t.st[0] = C * H * W; break;
    case 1: t.st[1] = 1; t.st[3] = C; t.st[2] = W * C; t.st[0] = H * W * C; break;
    case 2: t.st[3] = 2; t.st[2] = 2 * W + 3; t.st[1] = (2 * W + 3) * H + 5;
            t.st[0] = t.st[1] * C + 7; break;
    default: t.st[1] = 2; t.st[3] = 2 * C + 1; t.st[2] = (2 * C + 1) * W + 3;
             t.st[0] = t.st[2] * H + 5; break;
  }
  int64_t extent = 1;
  for (int d = 0; d < 4; ++d) extent += (t.n[d] - 1) * t.st[d];
  t.data.assign(extent, fill);
  return t;
}

template <typename index_t>
Strides4<index_t> strides(const Tensor4& t) {
  return {static_cast<index_t>(t.st[0]), static_cast<index_t>(t.st[1]),
          static_cast<index_t>(t.st[2]), static_cast<index_t>(t.st[3])};
}

// Calls body(n) for every n that thread `threadIdx` of block `blockIdx` visits in the kernels'
// grid-stride loop, for every thread of the grid grid_blocks(items, sm_count) x kThreadsPerBlock.
template <typename Body>
void run_grid(int64_t items, int64_t sm_count, Body&& body) {
  const int64_t blocks = grid_blocks(items, sm_count);
  const int64_t step = blocks * kThreadsPerBlock;
  for (int64_t block = 0; block < blocks; ++block)
    for (int64_t thread = 0; thread < kThreadsPerBlock; ++thread)
      for (int64_t n = block * kThreadsPerBlock + thread; n < items; n += step) body(n);
}

struct Case {
  int64_t B, C, G, H, W, K, s, d, p;
  int x_layout, y_layout;  // layout of input/grad_input and of output/grad_output
  int64_t target;          // target items for the chunk plan
  int64_t sm_count;
  bool int64_index;
};

std::string describe(const Case& c) {
  char buf[256];
  std::snprintf(buf, sizeof(buf),
                "B=%lld C=%lld G=%lld H=%lld W=%lld K=%lld s=%lld d=%lld p=%lld layouts=%d/%d "
                "target=%lld sms=%lld index=%s",
                (long long)c.B, (long long)c.C, (long long)c.G, (long long)c.H, (long long)c.W,
                (long long)c.K, (long long)c.s, (long long)c.d, (long long)c.p, c.x_layout,
                c.y_layout, (long long)c.target, (long long)c.sm_count,
                c.int64_index ? "int64" : "int32");
  return buf;
}

void expect_close(double got, double want, const std::string& what) {
  ++g_checked;
  if (std::isnan(got)) {
    fail(what + ": element never written");
    return;
  }
  if (std::fabs(got - want) > 1e-9 * (1.0 + std::fabs(want))) {
    fail(what + ": got " + std::to_string(got) + ", want " + std::to_string(want));
  }
}

template <typename index_t>
void run_case(const Case& cs, std::mt19937_64& rng) {
  InvolutionShape sh{};
  sh.B = cs.B; sh.C = cs.C; sh.H = cs.H; sh.W = cs.W; sh.G = cs.G; sh.K = cs.K;
  sh.stride = cs.s; sh.dilation = cs.d; sh.padding = cs.p;
  sh.Ho = involution_out_size(sh.H, sh.K, sh.stride, sh.dilation, sh.padding);
  sh.Wo = involution_out_size(sh.W, sh.K, sh.stride, sh.dilation, sh.padding);
  if (sh.Ho <= 0 || sh.Wo <= 0) return;
  const int64_t B = sh.B, C = sh.C, H = sh.H, W = sh.W, G = sh.G, K = sh.K, Ho = sh.Ho,
                Wo = sh.Wo, CG = C / G, KK = K * K, plane = Ho * Wo;
  const std::string name = describe(cs);
  std::normal_distribution<double> normal;
  const double nan = std::numeric_limits<double>::quiet_NaN();

  Tensor4 x = make_tensor(B, C, H, W, cs.x_layout, 0.0);
  Tensor4 go = make_tensor(B, C, Ho, Wo, cs.y_layout, 0.0);
  for (auto& v : x.data) v = normal(rng);
  for (auto& v : go.data) v = normal(rng);
  std::vector<double> w(B * G * KK * plane);
  for (auto& v : w) v = normal(rng);
  auto W6 = [&](int64_t b, int64_t g, int64_t u, int64_t v, int64_t i, int64_t j) -> double& {
    return w[((((b * G + g) * K + u) * K + v) * Ho + i) * Wo + j];
  };
  auto inside = [&](int64_t y, int64_t xx) { return y >= 0 && y < H && xx >= 0 && xx < W; };

  // ---- forward
  {
    const ChunkPlan plan = plan_channel_chunks(B * G * Ho * Wo, CG, cs.target);
    if (plan.chunks < 1 || plan.chunk_channels < 1 || plan.chunks * plan.chunk_channels < CG ||
        (plan.chunks - 1) * plan.chunk_channels >= CG)
      fail(name + ": bad chunk plan");
    const Sizes<index_t> s = make_sizes<index_t>(sh, plan);
    Tensor4 out = make_tensor(B, C, Ho, Wo, cs.y_layout, nan);
    const int64_t items = forward_items(sh, plan);
    int64_t channel_visits = 0;
    dispatch_kernel_size(K, [&](auto kt) {
      constexpr int KT = decltype(kt)::value;
      run_grid(items, cs.sm_count, [&](int64_t n) {
        forward_item<KT, double, double, index_t>(s, x.data.data(), strides<index_t>(x),
                                                  w.data(), out.data.data(),
                                                  strides<index_t>(out),
                                                  static_cast<index_t>(n));
        // Channels this item wrote (same decomposition as forward_item).
        const index_t chunk = static_cast<index_t>((n / (Ho * Wo)) % plan.chunks);
        const index_t g = static_cast<index_t>((n / (Ho * Wo * plan.chunks)) % G);
        index_t c0, c1;
        channel_range(s, g, chunk, c0, c1);
        channel_visits += c1 - c0;
      });
    });
    if (channel_visits != B * C * Ho * Wo) fail(name + ": forward items overlap");
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t i = 0; i < Ho; ++i)
          for (int64_t j = 0; j < Wo; ++j) {
            double ref = 0;
            for (int64_t u = 0; u < K; ++u)
              for (int64_t v = 0; v < K; ++v) {
                const int64_t y = i * cs.s - cs.p + u * cs.d, xx = j * cs.s - cs.p + v * cs.d;
                if (inside(y, xx)) ref += W6(b, c / CG, u, v, i, j) * x.at(b, c, y, xx);
              }
            expect_close(out.at(b, c, i, j), ref, name + " forward");
          }
  }

  // ---- grad_input (reference in scatter form, the kernel gathers)
  {
    const ChunkPlan plan = plan_channel_chunks(B * G * H * W, CG, cs.target);
    const Sizes<index_t> s = make_sizes<index_t>(sh, plan);
    Tensor4 gx = make_tensor(B, C, H, W, cs.x_layout, nan);
    const int64_t items = grad_input_items(sh, plan);
    int64_t channel_visits = 0;
    dispatch_kernel_size(K, [&](auto kt) {
      constexpr int KT = decltype(kt)::value;
      run_grid(items, cs.sm_count, [&](int64_t n) {
        grad_input_item<KT, double, double, index_t>(s, go.data.data(), strides<index_t>(go),
                                                     w.data(), gx.data.data(),
                                                     strides<index_t>(gx),
                                                     static_cast<index_t>(n));
        const index_t chunk = static_cast<index_t>((n / (H * W)) % plan.chunks);
        const index_t g = static_cast<index_t>((n / (H * W * plan.chunks)) % G);
        index_t c0, c1;
        channel_range(s, g, chunk, c0, c1);
        channel_visits += c1 - c0;
      });
    });
    if (channel_visits != B * C * H * W) fail(name + ": grad_input items overlap");
    std::vector<double> ref(B * C * H * W, 0.0);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t i = 0; i < Ho; ++i)
          for (int64_t j = 0; j < Wo; ++j)
            for (int64_t u = 0; u < K; ++u)
              for (int64_t v = 0; v < K; ++v) {
                const int64_t y = i * cs.s - cs.p + u * cs.d, xx = j * cs.s - cs.p + v * cs.d;
                if (inside(y, xx))
                  ref[((b * C + c) * H + y) * W + xx] +=
                      W6(b, c / CG, u, v, i, j) * go.at(b, c, i, j);
              }
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t y = 0; y < H; ++y)
          for (int64_t xx = 0; xx < W; ++xx)
            expect_close(gx.at(b, c, y, xx), ref[((b * C + c) * H + y) * W + xx],
                         name + " grad_input");
  }

  // ---- grad_weight
  {
    const Sizes<index_t> s = make_sizes<index_t>(sh, ChunkPlan{1, CG});
    std::vector<double> gw(B * G * KK * plane, nan);
    const int64_t items = grad_weight_items(sh);
    int64_t writes_expected = B * G * KK * plane;
    if (items * (specialised_kernel_size(K) != 0 ? K : 1) != writes_expected)
      fail(name + ": grad_weight item count");
    dispatch_kernel_size(K, [&](auto kt) {
      constexpr int KT = decltype(kt)::value;
      run_grid(items, cs.sm_count, [&](int64_t n) {
        grad_weight_item<KT, double, double, index_t>(s, go.data.data(), strides<index_t>(go),
                                                      x.data.data(), strides<index_t>(x),
                                                      gw.data(), static_cast<index_t>(n));
      });
    });
    for (int64_t b = 0; b < B; ++b)
      for (int64_t g = 0; g < G; ++g)
        for (int64_t u = 0; u < K; ++u)
          for (int64_t v = 0; v < K; ++v)
            for (int64_t i = 0; i < Ho; ++i)
              for (int64_t j = 0; j < Wo; ++j) {
                double ref = 0;
                const int64_t y = i * cs.s - cs.p + u * cs.d, xx = j * cs.s - cs.p + v * cs.d;
                if (inside(y, xx))
                  for (int64_t c = g * CG; c < (g + 1) * CG; ++c)
                    ref += go.at(b, c, i, j) * x.at(b, c, y, xx);
                expect_close(gw[((((b * G + g) * K + u) * K + v) * Ho + i) * Wo + j], ref,
                             name + " grad_weight");
              }
  }
}

void check_planning() {
  // Chunk plans: cover the group exactly, with at most ceil(CG / kMinChunkChannels) chunks.
  for (int64_t CG = 1; CG <= 70; ++CG)
    for (int64_t items : {1LL, 7LL, 1000LL, 1000000LL})
      for (int64_t target : {1LL, 100LL, 270336LL, 1LL << 40}) {
        const ChunkPlan p = plan_channel_chunks(items, CG, target);
        const bool ok = p.chunks >= 1 && p.chunk_channels >= 1 &&
                        p.chunks * p.chunk_channels >= CG &&
                        (p.chunks - 1) * p.chunk_channels < CG &&
                        p.chunks <= ceil_div(CG, kMinChunkChannels);
        if (!ok) fail("plan_channel_chunks CG=" + std::to_string(CG));
      }
  // Grids stay within limits and cover the items.
  for (int64_t items : {1LL, 255LL, 256LL, 257LL, 1LL << 31, (1LL << 40) + 3})
    for (int64_t sms : {0LL, 1LL, 132LL}) {
      const int64_t blocks = grid_blocks(items, sms);
      if (blocks < 1 || blocks > 2147483647LL || blocks > (sms > 0 ? sms : 1) * kMaxBlocksPerSM)
        fail("grid_blocks");
    }
  if (!fits_int32(int64_t{1}, int64_t{2147483647}) || fits_int32(int64_t{2147483648LL}) ||
      fits_int32(int64_t{-1}))
    fail("fits_int32");
}

}  // namespace

int main() {
  check_planning();
  std::mt19937_64 rng(1234);
  std::vector<Case> cases;
  // A fixed grid of the shapes the tests of the op use...
  for (int64_t K : {1, 2, 3, 4, 5, 7})
    for (int64_t s : {1, 2, 3})
      for (int64_t d : {1, 2})
        for (int layout : {0, 1, 2, 3}) {
          const int64_t p = d * (K - 1) / 2;
          cases.push_back({2, 12, 3, 9 + (K % 2), 8, K, s, d, p, layout, (layout + 1) % 4,
                           s == 1 ? int64_t{1} : int64_t{1} << 30, 2, layout % 2 == 1});
        }
  // ...and random ones (odd/even sizes, many groups, odd paddings, tiny images, chunking).
  std::uniform_int_distribution<int> pick(0, 1 << 30);
  for (int t = 0; t < 400; ++t) {
    Case c{};
    const int64_t Ks[] = {1, 2, 3, 4, 5, 6, 7, 9};
    c.K = Ks[pick(rng) % 8];
    c.s = 1 + pick(rng) % 3;
    c.d = 1 + pick(rng) % 3;
    c.p = (pick(rng) % 3 == 0) ? pick(rng) % (c.d * c.K + 1) : c.d * (c.K - 1) / 2;
    c.B = 1 + pick(rng) % 2;
    c.G = 1 + pick(rng) % 4;
    c.C = c.G * (1 + pick(rng) % 9);
    c.H = 1 + pick(rng) % 12;
    c.W = 1 + pick(rng) % 12;
    c.x_layout = pick(rng) % 4;
    c.y_layout = pick(rng) % 4;
    c.target = int64_t{1} << (pick(rng) % 20);
    c.sm_count = pick(rng) % 3;
    c.int64_index = pick(rng) % 2;
    cases.push_back(c);
  }
  for (const Case& c : cases) {
    if (c.int64_index) run_case<int64_t>(c, rng);
    else run_case<int32_t>(c, rng);
  }
  // The float32 instantiation (float accumulation) must compile and run too.
  {
    InvolutionShape sh{1, 4, 5, 5, 2, 3, 1, 1, 1, 5, 5};
    const Sizes<int32_t> s = make_sizes<int32_t>(sh, ChunkPlan{1, 2});
    std::vector<float> xf(100, 1.f), wf(2 * 9 * 25, 1.f), of(100, 0.f);
    const Strides4<int32_t> st{100, 25, 5, 1};
    for (int32_t n = 0; n < 2 * 25; ++n)
      forward_item<3, float, float, int32_t>(s, xf.data(), st, wf.data(), of.data(), st, n);
    if (of[6] != 9.f || of[0] != 4.f) fail("float32 forward");
  }
  std::printf("cuda kernel emulation: %zu cases, %lld values checked, %d mismatches\n",
              cases.size(), (long long)g_checked, g_failures);
  return g_failures == 0 ? 0 : 1;
}
