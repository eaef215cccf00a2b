// CUDA kernels of mnv3::dwconv_bias_act: depthwise conv + bias + activation,
// and the SE squeeze (per-(n, c) mean of the activated output) in the same
// pass, never re-reading y.
//
// The arithmetic is csrc/common/dwconv.h (dw_tile, dw_point[_channels],
// dw_tile_epilogue), the same functions the CPU kernel runs; these kernels
// map threads to tiles, load, call and store.
//
//  - channels-last dense x (the fast path): a thread owns a tile of TW output
//    pixels along W x V channels.  V = 16 bytes of channels (8 fp16/bf16 or
//    4 fp32) with 16-byte vector loads and stores when C % V == 0 and x is
//    16-byte aligned (and the filter fits shared memory), else V = 1 (threads
//    still walk consecutive channels, so warps stay coalesced).  A block covers tc channel vectors x a chunk of
//    one image's tiles; its channels' filter taps are staged once in shared
//    memory as fp32, tap-major, from any weight strides.
//  - any other strides (NCHW, views): a block per (n, c) plane, threads over
//    TW-pixel tiles of the plane (V = 1); output contiguous NCHW.
//
// Squeeze: deterministic, in one launch.  Each NHWC block reduces its
// threads' fp32 sums in a fixed order into partial[n, chunk, c] (a
// torch-allocated buffer, N x chunks x C floats, chunks ~ tens), then counts
// its arrival on its (n, channel group)'s counter (an atomic add after a
// __threadfence, the CUDA programming guide's "last block" pattern); the block
// that arrives last adds the chunks' partials in chunk order (whichever block
// that is: the same fp32 sum every run) and writes the mean.  The counters are
// zeroed by a cudaMemsetAsync before the launch (a memset node, not a kernel,
// in a CUDA graph).  When an image fits one chunk the block writes the mean
// itself.  NCHW blocks own whole planes and write the mean directly.
//
// All index math is int64 (x and y may exceed 2^31 elements); launches go on
// torch's current stream, allocate only through torch, and never sync, so
// CUDA graphs can capture them.
#include "cuda_utils.cuh"

#include <algorithm>

namespace mnv3 {
namespace {

constexpr int kThreads = 256;       // threads per block, every kernel here
constexpr int kTargetBlocks = 1024; // NHWC: enough blocks to fill an H100 a few times over
constexpr int kMaxTilesPerThread = 8;
constexpr int64_t kMaxSharedBytes = 48 * 1024;

// 16-byte vector load of V elements, converted to fp32.
template <int V>
struct VectorLoad {
  template <typename T>
  __device__ __forceinline__ void operator()(const T* p, float (&out)[V]) const {
    static_assert(V * sizeof(T) == 16, "VectorLoad reads 16 bytes");
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int v = 0; v < V; ++v) out[v] = static_cast<float>(e[v]);
  }
};

template <int V>
using LoadFor = std::conditional_t<(V > 1), VectorLoad<V>, ConvertLoad<V>>;

// Stores V fp32 values as T: one 16-byte store when V * sizeof(T) == 16.
template <typename T, int V>
__device__ __forceinline__ void store_converted(T* p, const float (&v)[V]) {
  if constexpr (V * sizeof(T) == 16) {
    union {
      uint4 raw;
      T e[V];
    } out;
#pragma unroll
    for (int i = 0; i < V; ++i) out.e[i] = static_cast<T>(v[i]);
    store_vector(reinterpret_cast<uint4*>(p), out.raw);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) p[i] = static_cast<T>(v[i]);
  }
}

struct WeightView {  // the [C, 1, kh, kw] filter with its strides, and the bias
  int64_t s0, s2, s3, bias_stride;
};

// Channels-last kernel.  Block (tc, ts): threadIdx.x a channel vector,
// threadIdx.y strides over the chunk's tiles.  blockIdx.x = n * chunks + chunk,
// blockIdx.y = channel group.  Dynamic shared memory: taps x tc*V filter
// floats, then ts x tc*V floats for the squeeze reduction.
// At least 2 blocks an SM (at most 128 registers a thread): the 5x5 fp16 /
// bf16 tiles compiled to 124-128 without the bound, and one register more
// would leave 1 block (8 warps) an SM.  With the last-block squeeze below,
// the 5x5 stride-2 16-byte fp16 / bf16 tile spills 16 bytes at that bound
// (nvcc 13.0 -Xptxas -v, sm_90; every other instantiation spills nothing).
// Moving the squeeze out of line (__noinline__) left 8 bytes spilled and a
// 120-byte call frame, so it stays inline; whether the spill sits in the
// tile loop is unread (no SASS disassembler here) and unmeasured.
template <typename T, int V, int K, int S>
__global__ void __launch_bounds__(kThreads, 2)
dwconv_nhwc_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                   WeightView wv, T* __restrict__ y, float* __restrict__ partial,
                   float partial_scale, float* __restrict__ mean, unsigned* __restrict__ arrived,
                   DwGeometry g, Activation act, int64_t chunks, int64_t tiles_per_chunk) {
  constexpr int TW = dw_tile_width<K>();
  MNV3_DYNAMIC_SHARED(float, smem);
  const int tc = blockDim.x, ts = blockDim.y;
  const int BC = tc * V;  // channels of this block
  const int taps = static_cast<int>(g.kh * g.kw);
  float* w_s = smem;
  const int64_t n = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
  const int64_t c_begin = static_cast<int64_t>(blockIdx.y) * BC;
  const int tid = threadIdx.y * tc + threadIdx.x;

  // The filter, tap-major: tap by tap (unrolled for a fixed K), the block's
  // threads over its channels, consecutive threads on consecutive shared-memory
  // words; no division (one in int64 per element cost more than the copy).
  const auto stage_tap = [&](int t, int64_t tap_offset) {
    for (int cl = tid; cl < BC; cl += tc * ts) {
      const int64_t c = c_begin + cl;
      w_s[t * BC + cl] = c < g.C ? static_cast<float>(w[c * wv.s0 + tap_offset]) : 0.f;
    }
  };
  if constexpr (K > 0) {
#pragma unroll
    for (int t = 0; t < K * K; ++t) stage_tap(t, (t / K) * wv.s2 + (t % K) * wv.s3);
  } else {
    for (int64_t kh = 0, t = 0; kh < g.kh; ++kh)
      for (int64_t kw = 0; kw < g.kw; ++kw, ++t) stage_tap(static_cast<int>(t), kh * wv.s2 + kw * wv.s3);
  }
  __syncthreads();

  const int cl = threadIdx.x * V;  // first channel of this thread within the block
  const int64_t c0 = c_begin + cl;
  const bool active = c0 < g.C;  // C % V == 0 when V > 1, so a vector is all in or all out
  float sum[V];
#pragma unroll
  for (int v = 0; v < V; ++v) sum[v] = 0.f;
  if (active) {
    float b[V];
#pragma unroll
    for (int v = 0; v < V; ++v) b[v] = static_cast<float>(bias[(c0 + v) * wv.bias_stride]);
    const int64_t x_sw = g.C, x_sh = g.W * g.C;
    const T* xn = x + n * g.H * x_sh + c0;
    T* yn = y + n * g.OH * g.OW * g.C + c0;
    const int64_t ow_tiles = (g.OW + TW - 1) / TW;
    const int64_t tile_end = std::min((chunk + 1) * tiles_per_chunk, g.OH * ow_tiles);
    for (int64_t tile = chunk * tiles_per_chunk + threadIdx.y; tile < tile_end; tile += ts) {
      const int64_t oh = tile / ow_tiles, ow0 = (tile % ow_tiles) * TW;
      float acc[TW][V];
      if constexpr (K > 0) {
        dw_tile<K, S, TW, V>(xn, x_sh, x_sw, w_s + cl, BC, g, oh, ow0, LoadFor<V>{}, acc);
      } else {
        dw_point_channels<V>(xn, x_sh, x_sw, w_s + cl, BC, g, oh, ow0, acc[0]);
      }
      const int valid = static_cast<int>(std::min<int64_t>(TW, g.OW - ow0));
      dw_tile_epilogue(act, acc, b, valid, sum);
      T* yp = yn + (oh * g.OW + ow0) * g.C;
#pragma unroll
      for (int t = 0; t < TW; ++t) {
        if (t < valid) store_converted<T, V>(yp + t * g.C, acc[t]);
      }
    }
  }

  if (partial == nullptr) return;  // uniform over the block
  float* red = smem + taps * BC;
#pragma unroll
  for (int v = 0; v < V; ++v) red[threadIdx.y * BC + cl + v] = sum[v];
  __syncthreads();
  if (threadIdx.y == 0 && active) {
#pragma unroll
    for (int v = 0; v < V; ++v) {
      float s = 0.f;
      for (int k = 0; k < ts; ++k) s += red[k * BC + cl + v];  // fixed order: deterministic
      partial[(n * chunks + chunk) * g.C + c0 + v] = s * partial_scale;
    }
  }
  if (arrived == nullptr) return;  // one chunk: partial is the mean (uniform over the block)

  // Many chunks: the last block of (n, channel group) to arrive finishes the mean.
  if (!block_arrives_last(&arrived[n * gridDim.y + blockIdx.y], static_cast<unsigned>(chunks))) return;
  if (threadIdx.y == 0 && active) {
    const float inv_plane = 1.f / static_cast<float>(g.OH * g.OW);
#pragma unroll
    for (int v = 0; v < V; ++v) {
      float s = 0.f;
      for (int64_t k = 0; k < chunks; ++k) s += __ldcg(&partial[(n * chunks + k) * g.C + c0 + v]);  // chunk order
      mean[n * g.C + c0 + v] = s * inv_plane;
    }
  }
}

// Block-wide fp32 sum in a fixed order; the result is valid in thread 0.
__device__ float block_sum(float v) {
  __shared__ float warp_sums[kThreads / 32];
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  float s = 0.f;
  if (threadIdx.x == 0) {
    for (int i = 0; i < (blockDim.x + 31) / 32; ++i) s += warp_sums[i];
  }
  return s;
}

// Any-strides kernel: block = one (n, c) plane, y contiguous NCHW.  w is the
// contiguous [C, kh*kw] filter.
template <typename T, int K, int S>
__global__ void __launch_bounds__(kThreads)
dwconv_planes_kernel(const T* __restrict__ x, int64_t sN, int64_t sC, int64_t sH, int64_t sW,
                     const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ y,
                     float* __restrict__ mean, DwGeometry g, Activation act) {
  constexpr int TW = dw_tile_width<K>();
  const int64_t plane = blockIdx.x, n = plane / g.C, c = plane % g.C;
  const T* xp = x + n * sN + c * sC;
  const T* wp = w + c * g.kh * g.kw;
  T* yp = y + plane * g.OH * g.OW;
  const float b[1] = {static_cast<float>(bias[c])};
  const int64_t ow_tiles = (g.OW + TW - 1) / TW;
  float sum[1] = {0.f};
  for (int64_t tile = threadIdx.x; tile < g.OH * ow_tiles; tile += blockDim.x) {
    const int64_t oh = tile / ow_tiles, ow0 = (tile % ow_tiles) * TW;
    float acc[TW][1];
    if constexpr (K > 0) {
      dw_tile<K, S, TW, 1>(xp, sH, sW, wp, 1, g, oh, ow0, ConvertLoad<1>{}, acc);
    } else {
      acc[0][0] = dw_point(xp, sH, sW, wp, g, oh, ow0);
    }
    const int valid = static_cast<int>(std::min<int64_t>(TW, g.OW - ow0));
    dw_tile_epilogue(act, acc, b, valid, sum);
#pragma unroll
    for (int t = 0; t < TW; ++t) {
      if (t < valid) yp[oh * g.OW + ow0 + t] = static_cast<T>(acc[t][0]);
    }
  }
  if (mean == nullptr) return;
  const float s = block_sum(sum[0]);
  if (threadIdx.x == 0) mean[plane] = s / static_cast<float>(g.OH * g.OW);
}

int next_pow2(int64_t v) {
  int p = 1;
  while (p < v) p <<= 1;
  return p;
}

// Shared memory of an NHWC block of tc x ts threads: the filter taps of its
// tc*V channels, then the squeeze reduction (ts rows of tc*V floats).
int64_t nhwc_smem_bytes(int64_t taps, int tc, int ts, int V) { return (taps + ts) * tc * V * 4; }

// The largest block (ts = kThreads / tc) bounds every smaller one.
int64_t nhwc_smem_bound(int64_t taps, int tc, int V) {
  return nhwc_smem_bytes(taps, tc, kThreads / tc, V);
}

template <typename T, int V, int K, int S>
void launch_nhwc(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& y,
                 Tensor& mean, const DwGeometry& g, Activation act, bool with_mean,
                 cudaStream_t stream) {
  constexpr int TW = dw_tile_width<K>();
  const int64_t taps = g.kh * g.kw;
  const int64_t vectors = g.C / V;
  int tc = std::min(32, next_pow2(vectors));
  // Narrower blocks for big filters (only the any-geometry path gets them).
  while (tc > 1 && nhwc_smem_bound(taps, tc, V) > kMaxSharedBytes) tc /= 2;
  STD_TORCH_CHECK(nhwc_smem_bound(taps, tc, V) <= kMaxSharedBytes, "mnv3::dwconv_bias_act (CUDA): a ",
                  g.kh, "x", g.kw, " kernel is too large for the CUDA kernel (at most ",
                  kMaxSharedBytes / 4 - kThreads, " taps)");
  const int64_t groups = (vectors + tc - 1) / tc;
  STD_TORCH_CHECK(groups <= 65535, "mnv3::dwconv_bias_act (CUDA): C = ", g.C, " is too large");

  const int64_t tiles = g.OH * ((g.OW + TW - 1) / TW);
  // Small problems (batch 1, late layers): smaller blocks, down to one warp,
  // so the work spreads over more SMs instead of a few full blocks.
  int ts = kThreads / tc;
  while (ts * tc > 32 && g.N * groups * ((tiles + ts - 1) / ts) < kTargetBlocks / 4) ts /= 2;
  const int64_t smem = nhwc_smem_bytes(taps, tc, ts, V);
  const int64_t rounds = g.N * groups * tiles / (ts * kTargetBlocks);  // tiles per thread
  const int64_t tiles_per_chunk =
      ts * std::min<int64_t>(kMaxTilesPerThread, std::max<int64_t>(1, rounds));
  const int64_t chunks = (tiles + tiles_per_chunk - 1) / tiles_per_chunk;
  STD_TORCH_CHECK(g.N * chunks <= 0x7fffffffLL, "mnv3::dwconv_bias_act (CUDA): N = ", g.N,
                  " is too large for one launch");

  float* partial = nullptr;
  float partial_scale = 1.f;
  unsigned* arrived = nullptr;
  LastBlockScratch scratch;
  if (with_mean && chunks == 1) {
    partial = static_cast<float*>(mean.mutable_data_ptr());
    partial_scale = 1.f / static_cast<float>(g.OH * g.OW);
  } else if (with_mean) {  // the chunks' partials, a counter per (n, channel group)
    scratch = last_block_scratch(g.N * chunks * g.C, g.N * groups, x, stream, "mnv3::dwconv_bias_act");
    partial = scratch.partial;
    arrived = scratch.arrived;
  }

  const WeightView wv{weight.stride(0), weight.stride(2), weight.stride(3), bias.stride(0)};
  launch(dwconv_nhwc_kernel<T, V, K, S>, dim3(static_cast<unsigned>(g.N * chunks), static_cast<unsigned>(groups)),
         dim3(tc, ts), smem, stream, static_cast<const T*>(x.const_data_ptr()),
         static_cast<const T*>(weight.const_data_ptr()), static_cast<const T*>(bias.const_data_ptr()), wv,
         static_cast<T*>(y.mutable_data_ptr()), partial, partial_scale,
         with_mean ? static_cast<float*>(mean.mutable_data_ptr()) : nullptr, arrived, g, act, chunks,
         tiles_per_chunk);
  // The name says which launch branch ran (the emulated sweep checks it reached each).
  static constexpr const char* kNames[2][3] = {
      {"dwconv_nhwc_kernel (scalar, one chunk)", "dwconv_nhwc_kernel (scalar, chunks)",
       "dwconv_nhwc_kernel (scalar, chunks, squeeze by the last block)"},
      {"dwconv_nhwc_kernel (16-byte vectors, one chunk)", "dwconv_nhwc_kernel (16-byte vectors, chunks)",
       "dwconv_nhwc_kernel (16-byte vectors, chunks, squeeze by the last block)"}};
  check_launch(kNames[V > 1][chunks == 1 ? 0 : arrived == nullptr ? 1 : 2]);
}

template <typename T, int K, int S>
void launch_planes(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& y,
                   Tensor& mean, const DwGeometry& g, Activation act, bool with_mean,
                   cudaStream_t stream) {
  constexpr int TW = dw_tile_width<K>();
  const Tensor w = torch::stable::contiguous(weight);  // no copy when already contiguous
  const Tensor b = torch::stable::contiguous(bias);
  const int64_t planes = g.N * g.C;
  STD_TORCH_CHECK(planes <= 0x7fffffffLL, "mnv3::dwconv_bias_act (CUDA): N*C = ", planes,
                  " is too large for one launch");
  const int64_t tiles = g.OH * ((g.OW + TW - 1) / TW);
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, (tiles + 31) / 32 * 32));
  launch(dwconv_planes_kernel<T, K, S>, static_cast<unsigned>(planes), threads, 0, stream,
      static_cast<const T*>(x.const_data_ptr()), x.stride(0), x.stride(1), x.stride(2),
      x.stride(3), static_cast<const T*>(w.const_data_ptr()),
      static_cast<const T*>(b.const_data_ptr()), static_cast<T*>(y.mutable_data_ptr()),
      with_mean ? static_cast<float*>(mean.mutable_data_ptr()) : nullptr, g, act);
  check_launch("dwconv_planes_kernel");
}

std::tuple<Tensor, Tensor> dwconv_bias_act_cuda(const Tensor& x, const Tensor& weight,
                                                const Tensor& bias,
                                                const std::vector<int64_t>& stride,
                                                const std::vector<int64_t>& padding,
                                                const std::vector<int64_t>& dilation,
                                                const std::string& activation, bool with_mean) {
  check_kernel_device(x, "mnv3::dwconv_bias_act");
  const DwGeometry g = check_dwconv_args(x, weight, bias, stride, padding, dilation);
  const Activation act = parse_activation(activation);
  KernelDeviceGuard guard(x);
  const bool nhwc = is_nhwc_dense(x);
  Tensor y = empty_4d(g.N, g.C, g.OH, g.OW, nhwc, x.scalar_type(), x);
  Tensor mean = with_mean ? empty_2d(g.N, g.C, ScalarType::Float, x)
                          : empty_none(ScalarType::Float, x);
  if (g.N == 0 || g.C == 0) return {y, mean};
  const cudaStream_t stream = current_stream(x);

  dispatch_float_types(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    constexpr int kVec = 16 / sizeof(T);
    dispatch_dw_tile(g, [&](auto k_tag, auto s_tag) {
      constexpr int K = decltype(k_tag)::value, S = decltype(s_tag)::value;
      if (!nhwc) {
        launch_planes<T, K, S>(x, weight, bias, y, mean, g, act, with_mean, stream);
      } else if (g.C % kVec == 0 && aligned16(x.const_data_ptr()) &&
                 nhwc_smem_bound(g.kh * g.kw, 1, kVec) <= kMaxSharedBytes) {
        launch_nhwc<T, kVec, K, S>(x, weight, bias, y, mean, g, act, with_mean, stream);
      } else {
        launch_nhwc<T, 1, K, S>(x, weight, bias, y, mean, g, act, with_mean, stream);
      }
    });
  });
  return {y, mean};
}

}  // namespace
}  // namespace mnv3

MNV3_CUDA_LIBRARY_IMPL(m) {
  m.impl("dwconv_bias_act", TORCH_BOX(&mnv3::dwconv_bias_act_cuda));
}
