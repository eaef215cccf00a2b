// CUDA kernel of mnv3::pointwise_dwconv: an inverted residual block's expand
// 1x1 conv and its depthwise conv in one launch, so the expanded activation
// (the block's widest tensor) never goes to memory,
//   e = act(x @ w.T + b)                          (the expand, zero outside the image)
//   y = dw_act(depthwise(e, dw_w) + dw_b),  mean = y's spatial mean (the SE squeeze)
//
// pwdw_kernel: a block owns an output tile (th x tw pixels of one sample) x 32
// expanded channels (a lane each), 256 threads.
//  1. The expand over the tile's input window (the pixels its depthwise taps
//     read, halo included: hr x hc), K staged in steps of 32 as fp32 in shared
//     memory (the window's x rows through 16-byte vectors where Cin and the
//     alignment allow, the weight rows through stage_tile, as the pointwise
//     GEMM); a warp per window pixel at a time, a lane per channel, the
//     step's 32 weights in registers; the sums accumulate in shared memory
//     (e_s [window pixel][32]); then bias + activation, and zero for window
//     pixels outside the image (the depthwise conv's zero padding).
//     Neighbouring tiles recompute the window's halo: (hr * hc) / (th * tw
//     * stride^2) of the unfused expand's work, 1.56 for 3x3 stride 1 on 8 x 8.
//  2. The depthwise conv over e_s with the arithmetic of csrc/common/dwconv.h
//     (dw_tile for 3x3 / 5x5 strides 1 / 2, dw_point_channels for any other
//     geometry), the window as a zero-padding-free image; the filter staged
//     tap-major as fp32; bias + activation (dw_tile_epilogue); y stored
//     channels-last, a warp's lanes on 32 consecutive channels.
//  3. The squeeze: the block's per-channel sums over its warps in a fixed
//     order; one tile a sample writes the mean, many write their sums to
//     partial[n, tile, c] and the last block of (n, channel group) to arrive
//     (block_arrives_last) adds them in tile order: deterministic, one launch.
// fp32 / fp16 / bf16 with fp32 accumulation; x channels-last dense, plain
// [C, Cin] weight.  The window and the filter must fit 48 KB of shared memory
// (every MobileNet geometry: a dilated span of at most kMaxSpan rows).
// On torch's current stream, no host sync, no allocation outside torch.
#include "stage_tile.cuh"

#include <algorithm>
#include <optional>

namespace mnv3 {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kGroup = 32;           // expanded channels a block: a lane each
constexpr int kStepK = 32;           // input channels staged a step
constexpr int kWsLd = kGroup + 1;    // the staged weight's row stride (stage_tile's stores hit 32 banks)
constexpr int64_t kMaxSharedBytes = 48 * 1024;

struct PwdwArgs {
  DwGeometry g;          // the depthwise conv over the expanded [N, C, H, W]
  int64_t Cin;
  int th, tw;            // output tile of a block (tw a multiple of the dw tile width)
  int hr, hc;            // the tile's input window
  int x_ld;              // row stride of the staged x window (odd: conflict-free stores)
  int64_t tiles_w, tiles;  // tiles along OW, tiles a sample
  Activation act, dw_act;
};

// Shared memory of a block, in floats: e_s [hr * hc][kGroup], the x window
// [kStepK][x_ld], the weight rows [kStepK][kWsLd], the filter [taps][kGroup],
// the squeeze's warp sums [kWarps][kGroup].
constexpr int64_t smem_floats(int64_t window, int64_t x_ld, int64_t taps) {
  return window * kGroup + kStepK * x_ld + kStepK * kWsLd + taps * kGroup + kWarps * kGroup;
}

// The largest dilated kernel span the kernel takes (one output pixel a block,
// a span x span window and as many taps); mnv3_kernels/plan/compiler.py's
// CUDA target fuses no larger one (CUDA_PWDW_MAX_SPAN), and
// tests/test_cuda_ops.py runs a kernel of this span and refuses the next.
constexpr int kMaxSpan = 10;
static_assert(smem_floats(kMaxSpan * kMaxSpan, kMaxSpan * kMaxSpan | 1, kMaxSpan * kMaxSpan) * 4 <= kMaxSharedBytes &&
                  smem_floats((kMaxSpan + 1) * (kMaxSpan + 1), (kMaxSpan + 1) * (kMaxSpan + 1) | 1,
                              (kMaxSpan + 1) * (kMaxSpan + 1)) * 4 > kMaxSharedBytes,
              "kMaxSpan is the largest square kernel whose one-pixel window fits");

// Stages x[n, window pixel p, k0 .. k0+31] into xs[k][p] as fp32, zero for
// pixels outside the image and k >= Cin.
template <typename T, bool Vectors>
__device__ __forceinline__ void stage_window(const T* __restrict__ xn, const PwdwArgs& a, int64_t ih0, int64_t iw0,
                                             int64_t k0, float* xs) {
  const int window = a.hr * a.hc;
  constexpr int V = Vectors ? Vec16<T>::kSize : 1, per_pixel = kStepK / V;
  for (int i = threadIdx.x; i < window * per_pixel; i += kThreads) {
    const int p = i / per_pixel, kk = (i % per_pixel) * V;
    const int64_t ih = ih0 + p / a.hc, iw = iw0 + p % a.hc, k = k0 + kk;
    float v[V];
#pragma unroll
    for (int e = 0; e < V; ++e) v[e] = 0.f;
    if (ih >= 0 && ih < a.g.H && iw >= 0 && iw < a.g.W && k < a.Cin) {  // Cin % V == 0 with vectors
      const T* px = xn + (ih * a.g.W + iw) * a.Cin + k;
      if constexpr (Vectors) {
        const Vec16<T> raw = load_vector(reinterpret_cast<const Vec16<T>*>(px));
#pragma unroll
        for (int e = 0; e < V; ++e) v[e] = static_cast<float>(raw.e[e]);
      } else {
        v[0] = static_cast<float>(*px);
      }
    }
#pragma unroll
    for (int e = 0; e < V; ++e) xs[(kk + e) * a.x_ld + p] = v[e];
  }
}

// blockIdx.x = n * tiles + tile, blockIdx.y = channel group.  x [N, H, W, Cin]
// channels-last, w [C, Cin], dw_w [C, taps] contiguous; y [N, OH, OW, C].
template <typename T, bool Vectors, int K, int S>
__global__ void __launch_bounds__(kThreads)
pwdw_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
            const T* __restrict__ dw_w, const T* __restrict__ dw_b, T* __restrict__ y,
            float* __restrict__ partial, float* __restrict__ mean, unsigned* __restrict__ arrived, PwdwArgs a) {
  constexpr int TW = dw_tile_width<K>();
  MNV3_DYNAMIC_SHARED(float, smem);
  const DwGeometry& g = a.g;
  const int window = a.hr * a.hc, taps = static_cast<int>(g.kh * g.kw);
  float* e_s = smem;
  float* xs = e_s + window * kGroup;
  float(*ws)[kWsLd] = reinterpret_cast<float(*)[kWsLd]>(xs + kStepK * a.x_ld);
  float* dws = xs + kStepK * a.x_ld + kStepK * kWsLd;
  float* red = dws + taps * kGroup;

  const int64_t n = blockIdx.x / a.tiles, tile = blockIdx.x % a.tiles;
  const int64_t oh0 = tile / a.tiles_w * a.th, ow0 = tile % a.tiles_w * a.tw;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * kGroup;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t c = c0 + lane;
  const bool active = c < g.C;
  const int64_t ih0 = oh0 * g.sh - g.ph, iw0 = ow0 * g.sw - g.pw;  // the window's origin in x
  const T* xn = x + n * g.H * g.W * a.Cin;

  // The filter, tap-major: consecutive threads on consecutive shared-memory words.
  for (int i = threadIdx.x; i < taps * kGroup; i += kThreads) {
    const int t = i / kGroup, cl = i % kGroup;
    dws[i] = c0 + cl < g.C ? static_cast<float>(dw_w[(c0 + cl) * taps + t]) : 0.f;
  }

  // 1. The expand over the window.
  for (int64_t k0 = 0; k0 < a.Cin; k0 += kStepK) {
    stage_window<T, Vectors>(xn, a, ih0, iw0, k0, xs);
    stage_tile<T, Vectors, kGroup, kStepK, kWsLd>(w, g.C, a.Cin, c0, k0, nullptr, 1, ws);
    __syncthreads();
    float wv[kStepK];
#pragma unroll
    for (int kk = 0; kk < kStepK; ++kk) wv[kk] = ws[kk][lane];
    for (int p = warp; p < window; p += kWarps) {
      float acc = k0 == 0 ? 0.f : e_s[p * kGroup + lane];
#pragma unroll
      for (int kk = 0; kk < kStepK; ++kk) acc += xs[kk * a.x_ld + p] * wv[kk];  // one broadcast word a warp
      e_s[p * kGroup + lane] = acc;
    }
    __syncthreads();  // the next step overwrites the staged tiles
  }
  const float bias = active ? static_cast<float>(b[c]) : 0.f;
  for (int p = warp; p < window; p += kWarps) {
    const int64_t ih = ih0 + p / a.hc, iw = iw0 + p % a.hc;
    const bool inside = ih >= 0 && ih < g.H && iw >= 0 && iw < g.W;
    e_s[p * kGroup + lane] = inside ? activate(a.act, e_s[p * kGroup + lane] + bias) : 0.f;
  }
  __syncthreads();

  // 2. The depthwise conv over the window: an image of hr x hc pixels, no padding.
  DwGeometry local = g;
  local.H = a.hr;
  local.W = a.hc;
  local.ph = local.pw = 0;
  const float dw_bias[1] = {active ? static_cast<float>(dw_b[c]) : 0.f};
  const int col_tiles = a.tw / TW;
  float sum[1] = {0.f};
  for (int t = warp; t < a.th * col_tiles; t += kWarps) {
    const int r = t / col_tiles, q = t % col_tiles * TW;
    const int64_t oh = oh0 + r, ow = ow0 + q;
    if (oh >= g.OH || ow >= g.OW) continue;  // the same for a warp's lanes
    float acc[TW][1];
    if constexpr (K > 0) {
      dw_tile<K, S, TW, 1>(e_s + lane, static_cast<int64_t>(a.hc) * kGroup, kGroup, dws + lane, kGroup, local, r,
                           q, ConvertLoad<1>{}, acc);
    } else {
      dw_point_channels<1>(e_s + lane, static_cast<int64_t>(a.hc) * kGroup, kGroup, dws + lane, kGroup, local, r,
                           q, acc[0]);
    }
    const int valid = static_cast<int>(std::min<int64_t>(TW, g.OW - ow));
    dw_tile_epilogue(a.dw_act, acc, dw_bias, valid, sum);
    if (active) {
      T* yp = y + ((n * g.OH + oh) * g.OW + ow) * g.C + c;
#pragma unroll
      for (int i = 0; i < TW; ++i) {
        if (i < valid) yp[i * g.C] = static_cast<T>(acc[i][0]);
      }
    }
  }

  // 3. The squeeze.
  if (mean == nullptr) return;  // uniform over the grid
  red[warp * kGroup + lane] = sum[0];
  __syncthreads();
  const float inv_plane = 1.f / static_cast<float>(g.OH * g.OW);
  if (warp == 0 && active) {
    float s = 0.f;
    for (int k = 0; k < kWarps; ++k) s += red[k * kGroup + lane];  // fixed order: deterministic
    if (arrived == nullptr) {
      mean[n * g.C + c] = s * inv_plane;  // one tile a sample
    } else {
      partial[(n * a.tiles + tile) * g.C + c] = s;
    }
  }
  if (arrived == nullptr) return;  // uniform over the grid
  if (!block_arrives_last(&arrived[n * gridDim.y + blockIdx.y], static_cast<unsigned>(a.tiles))) return;
  if (warp == 0 && active) {
    float s = 0.f;
    for (int64_t k = 0; k < a.tiles; ++k) s += __ldcg(&partial[(n * a.tiles + k) * g.C + c]);  // tile order
    mean[n * g.C + c] = s * inv_plane;
  }
}

// The block's output tile: 8 x 8 pixels (4 x 8 at stride 2) where the window
// fits shared memory, else narrower, then shorter, down to one dw tile; never
// larger than the output.  Sets th, tw, hr, hc, x_ld; false when even the
// smallest does not fit.
bool choose_tile(PwdwArgs& a, int tile_width) {
  const DwGeometry& g = a.g;
  const auto round_up = [](int64_t v, int64_t m) { return (v + m - 1) / m * m; };
  int th = static_cast<int>(std::min<int64_t>(g.sh > 1 ? 4 : 8, g.OH));
  int tw = static_cast<int>(std::min<int64_t>(8, round_up(g.OW, tile_width)));
  tw = static_cast<int>(round_up(tw, tile_width));
  while (true) {
    const int64_t hr = (th - 1) * g.sh + (g.kh - 1) * g.dh + 1, hc = (tw - 1) * g.sw + (g.kw - 1) * g.dw + 1;
    const int64_t x_ld = hr * hc | 1;
    if (smem_floats(hr * hc, x_ld, g.kh * g.kw) * 4 <= kMaxSharedBytes) {
      a.th = th;
      a.tw = tw;
      a.hr = static_cast<int>(hr);
      a.hc = static_cast<int>(hc);
      a.x_ld = static_cast<int>(x_ld);
      return true;
    }
    if (tw > tile_width) {
      tw -= tile_width;
    } else if (th > 1) {
      --th;
    } else {
      return false;
    }
  }
}

std::tuple<Tensor, Tensor> pointwise_dwconv_cuda(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                                 const std::string& activation, const Tensor& dw_weight,
                                                 const Tensor& dw_bias, const std::vector<int64_t>& stride,
                                                 const std::vector<int64_t>& padding,
                                                 const std::vector<int64_t>& dilation,
                                                 const std::string& dw_activation, bool with_mean) {
  check_kernel_device(x, "mnv3::pointwise_dwconv");
  STD_TORCH_CHECK(is_supported_dtype(x.scalar_type()) && x.dim() == 4 && is_nhwc_dense(x),
                  "mnv3::pointwise_dwconv: x must be a float32, float16 or bfloat16 channels-last dense 4-d tensor");
  const int64_t C = check_plain_pointwise_weights(x, weight, bias);
  STD_TORCH_CHECK(dw_weight.scalar_type() == x.scalar_type() && dw_bias.scalar_type() == x.scalar_type(),
                  "dw_weight and dw_bias must have x's dtype");
  check_same_device(x, "x", dw_weight, "dw_weight");
  check_same_device(x, "x", dw_bias, "dw_bias");
  PwdwArgs a{};
  a.g = dw_geometry(x.size(0), C, x.size(2), x.size(3), dw_weight, dw_bias, stride, padding, dilation, "dw_weight",
                    "dw_bias");
  a.Cin = x.size(1);
  a.act = parse_activation(activation);
  a.dw_act = parse_activation(dw_activation);
  const DwGeometry& g = a.g;
  KernelDeviceGuard guard(x);
  Tensor y = empty_4d(g.N, C, g.OH, g.OW, true, x.scalar_type(), x);
  Tensor mean = with_mean ? empty_2d(g.N, C, ScalarType::Float, x) : empty_none(ScalarType::Float, x);
  if (g.N == 0 || C == 0) return {y, mean};
  const cudaStream_t stream = current_stream(x);
  // No copies when already contiguous (the usual case); else torch copies on this stream.
  const Tensor wc = torch::stable::contiguous(weight), bc = torch::stable::contiguous(bias);
  const Tensor dwc = torch::stable::contiguous(dw_weight), dbc = torch::stable::contiguous(dw_bias);

  dispatch_dw_tile(g, [&](auto k_tag, auto) {
    constexpr int K = decltype(k_tag)::value;
    STD_TORCH_CHECK(choose_tile(a, dw_tile_width<K>()), "mnv3::pointwise_dwconv (CUDA): a ", g.kh, "x", g.kw,
                    " depthwise kernel with dilation ", g.dh, " is too large for the CUDA kernel (its window "
                    "and filter must fit 48 KB of shared memory: a dilated span of at most ", kMaxSpan, ")");
  });
  a.tiles_w = (g.OW + a.tw - 1) / a.tw;
  a.tiles = (g.OH + a.th - 1) / a.th * a.tiles_w;
  const int64_t groups = (C + kGroup - 1) / kGroup;
  STD_TORCH_CHECK(groups <= 65535 && g.N * a.tiles <= 0x7fffffffLL, "mnv3::pointwise_dwconv (CUDA): the problem "
                  "is too large for one launch");
  LastBlockScratch scratch;  // the tiles' sums, a counter per (n, channel group)
  if (with_mean && a.tiles > 1) {
    scratch = last_block_scratch(g.N * a.tiles * C, g.N * groups, x, stream, "mnv3::pointwise_dwconv");
  }
  float* partial = scratch.partial;
  unsigned* arrived = scratch.arrived;
  const int64_t smem = smem_floats(a.hr * a.hc, a.x_ld, g.kh * g.kw) * 4;
  const dim3 grid(static_cast<unsigned>(g.N * a.tiles), static_cast<unsigned>(groups));
  bool vectors = false;
  dispatch_float_types(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(x.const_data_ptr());
    const T* wp = static_cast<const T*>(wc.const_data_ptr());
    vectors = a.Cin % Vec16<T>::kSize == 0 && aligned16(xp) && aligned16(wp);
    dispatch_dw_tile(g, [&](auto k_tag, auto s_tag) {
      constexpr int K = decltype(k_tag)::value, S = decltype(s_tag)::value;
      const auto kernel = vectors ? pwdw_kernel<T, true, K, S> : pwdw_kernel<T, false, K, S>;
      launch(kernel, grid, kThreads, smem, stream, xp, wp, static_cast<const T*>(bc.const_data_ptr()),
             static_cast<const T*>(dwc.const_data_ptr()), static_cast<const T*>(dbc.const_data_ptr()),
             static_cast<T*>(y.mutable_data_ptr()), partial,
             with_mean ? static_cast<float*>(mean.mutable_data_ptr()) : nullptr, arrived, a);
    });
  });
  // The name says which launch branch ran (the emulated sweep checks it reached each).
  static constexpr const char* kNames[2][3] = {
      {"pwdw_kernel (scalar, one tile a sample)", "pwdw_kernel (scalar, tiles)",
       "pwdw_kernel (scalar, tiles, squeeze by the last block)"},
      {"pwdw_kernel (16-byte vectors, one tile a sample)", "pwdw_kernel (16-byte vectors, tiles)",
       "pwdw_kernel (16-byte vectors, tiles, squeeze by the last block)"}};
  check_launch(kNames[vectors][a.tiles == 1 ? 0 : arrived == nullptr ? 1 : 2]);
  return {y, mean};
}

}  // namespace
}  // namespace mnv3

MNV3_CUDA_LIBRARY_IMPL(m) {
  m.impl("pointwise_dwconv", TORCH_BOX(&mnv3::pointwise_dwconv_cuda));
}
