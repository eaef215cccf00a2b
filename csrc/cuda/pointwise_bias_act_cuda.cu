// CUDA kernel of mnv3::pointwise_bias_act: the 1x1 conv (or Linear) as one
// matrix product over x's channels-last rows,
//   y[m, co] = act(sum_k x[m, k] * scale[n(m), k] * w[co, k] + bias[co]) (+ residual[m, co]),
// n(m) = m / (H * W) the row's sample: the SE gate scales the input rows as
// they are staged (the scaled tensor is never written, as on the CPU), the
// bias, activation and residual add run in the epilogue.  One launch; where the
// output has few tiles (batch 1, late layers) K is split over blocks and the
// last block of a tile adds the splits in a fixed order before the epilogue.
//
// A block computes a 64-row x 64-channel tile of y with 256 threads over K in
// steps of 32, fp32 accumulation for every dtype:
//  - fp32, pw_gemm_kernel (SIMT FMA): 4 x 4 outputs a thread (rows ty + 16 i,
//    channels tx + 16 j); both operands staged in shared memory as fp32,
//    k-major with a padded row (kLd = 65 words: the staging stores of a warp
//    fall on 32 distinct banks, the compute loop reads one broadcast word of
//    x and 16 consecutive words of w per k);
//  - fp16 / bf16, pw_mma_kernel (tensor cores, mma.sync m16n8k16, mma.cuh):
//    a warp computes 16 rows x 32 channels as four 16 x 8 products per 16 k;
//    both operands staged as T, row-major with 40-element rows (the fragment
//    loads of a warp fall on 32 distinct banks), the SE scale applied in fp32
//    and rounded to T as a row is staged.  Not wgmma (sm_90's warpgroup
//    product, asynchronous from shared memory descriptors): mma.sync runs on
//    sm_80 and sm_90 alike.
// Staging reads 16-byte vectors of x and w rows where K is a multiple of the
// vector and both are 16-byte aligned, else one element per thread
// (consecutive threads on consecutive k).  Neither kernel has been measured
// on a GPU.
//
// The weight is the plain [Cout, Cin] matrix (made contiguous if it is not);
// the CPU kernel's panels (layout.pack_pointwise_weight) are refused.
// On torch's current stream, no host sync, no allocation outside torch.
#include "mma.cuh"
#include "stage_tile.cuh"

#include <algorithm>
#include <optional>
#include <type_traits>

namespace mnv3 {
namespace {

constexpr int kThreads = 256;
constexpr int kTile = 64;                  // rows (BM) and output channels (BN) of a block's tile
constexpr int kStepK = 32;                 // K staged per step
constexpr int kLd = kTile + 1;             // shared-memory row stride in floats
constexpr int kPerThread = kTile / 16;     // 4 x 4 outputs a thread

// Split K where the output has fewer tiles than this: blocks enough for two an
// SM of an H100 / H200 (132 SMs), each split at least kMinStepsPerSplit K steps.
// (At batch 1 the 7x7 projections are 3 tiles with K = 960 and the 14x14 ones
// 8 tiles: 3 or 8 SMs of 132 busy for the whole K loop without a split.
// Chosen by reading; unmeasured.)
constexpr int64_t kTargetBlocks = 2 * 132;
constexpr int64_t kMinStepsPerSplit = 4;

struct PwArgs {
  int64_t M, K, Nc;          // y is [M, Nc], x [M, K], w [Nc, K]
  int64_t rows_per_sample;   // H * W (1 for a 2-d x): the row's SE scale is scale[m / rows_per_sample]
  int64_t k_per_split;       // K of a blockIdx.z (a multiple of kStepK; K when gridDim.z == 1)
  Activation act;
};

struct OutputAt {  // an accumulator's place in y
  int64_t m, co;
};

// fn(i, j, o) for each of a thread's accumulators whose output o = at(i, j)
// lies inside y (M x Nc), unrolled.
template <typename At, typename Fn>
__device__ __forceinline__ void each_output(At at, const PwArgs& a, Fn fn) {
#pragma unroll
  for (int i = 0; i < kPerThread; ++i)
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const OutputAt o = at(i, j);
      if (o.m < a.M && o.co < a.Nc) fn(i, j, o);
    }
}

// The end of a block's tile: acc[i][j] is the sum of y[at(i, j)] over this
// block's K.  One split: bias + activation + residual, stored.  Many
// (gridDim.z > 1): each writes its sums to partial[z, M, Nc] and the last of a
// tile's splits to arrive (block_arrives_last on arrived[tile]) adds them in
// split order (deterministic) before the epilogue.  Every thread calls it.
template <typename T, typename At>
__device__ __forceinline__ void finish_tile(float (&acc)[kPerThread][kPerThread], At at, const T* __restrict__ bias,
                                            const T* __restrict__ residual, T* __restrict__ y,
                                            float* __restrict__ partial, unsigned* __restrict__ arrived,
                                            const PwArgs& a) {
  if (gridDim.z > 1) {  // uniform over the grid
    each_output(at, a, [&](int i, int j, OutputAt o) { partial[(blockIdx.z * a.M + o.m) * a.Nc + o.co] = acc[i][j]; });
    if (!block_arrives_last(&arrived[blockIdx.x * gridDim.y + blockIdx.y], gridDim.z)) return;
    const int64_t split_stride = a.M * a.Nc;
    each_output(at, a, [&](int i, int j, OutputAt o) {
      const float* p = partial + o.m * a.Nc + o.co;
      float v = 0.f;
#pragma unroll 1
      for (unsigned z = 0; z < gridDim.z; ++z) v += __ldcg(p + z * split_stride);  // split order
      acc[i][j] = v;
    });
  }
  each_output(at, a, [&](int i, int j, OutputAt o) {
    float v = activate(a.act, acc[i][j] + static_cast<float>(bias[o.co]));
    if (residual != nullptr) v += static_cast<float>(residual[o.m * a.Nc + o.co]);
    y[o.m * a.Nc + o.co] = static_cast<T>(v);
  });
}

// SIMT (fp32): blockIdx.x the 64-row tile of y, blockIdx.y the 64-channel tile,
// blockIdx.z the split of K (K / k_per_split of them).  x [M, K], w [Nc, K], y
// and residual [M, Nc], all row-major; scale [N, K] fp32 or null; residual null
// when there is none.
template <typename T, bool Vectors>
__global__ void __launch_bounds__(kThreads)
pw_gemm_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
               const float* __restrict__ scale, const T* __restrict__ residual, T* __restrict__ y,
               float* __restrict__ partial, unsigned* __restrict__ arrived, PwArgs a) {
  __shared__ float xs[kStepK][kLd];
  __shared__ float ws[kStepK][kLd];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTile, col0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int64_t k_begin = static_cast<int64_t>(blockIdx.z) * a.k_per_split;
  const int64_t k_end = std::min(a.K, k_begin + a.k_per_split);

  float acc[kPerThread][kPerThread];
#pragma unroll
  for (int i = 0; i < kPerThread; ++i)
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) acc[i][j] = 0.f;

  for (int64_t k0 = k_begin; k0 < k_end; k0 += kStepK) {  // staging zero-fills k >= K
    stage_tile<T, Vectors, kTile, kStepK, kLd>(x, a.M, a.K, row0, k0, scale, a.rows_per_sample, xs);
    stage_tile<T, Vectors, kTile, kStepK, kLd>(w, a.Nc, a.K, col0, k0, nullptr, 1, ws);
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < kStepK; ++kk) {
      float xv[kPerThread], wv[kPerThread];
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) xv[i] = xs[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) wv[j] = ws[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < kPerThread; ++i)
#pragma unroll
        for (int j = 0; j < kPerThread; ++j) acc[i][j] += xv[i] * wv[j];
    }
    __syncthreads();  // the next step overwrites the tiles
  }
  finish_tile(acc, [&](int i, int j) { return OutputAt{row0 + ty + 16 * i, col0 + tx + 16 * j}; }, bias, residual,
              y, partial, arrived, a);
}

// The tensor-core kernel's staged tiles: [64 rows][kStepK k] of T, k contiguous (a
// fragment register is two consecutive k), rows padded to 40 elements (80 bytes:
// a warp's fragment loads, rows g and columns 2t, fall on 32 distinct banks).
constexpr int kLdT = kStepK + 8;

// Stages src[row0 .. row0+63, k0 .. k0+31] (row-major rows of length K) into
// dst[r][k] as T, zero outside; times scale[(row0 + r) / rows_per_sample, k] (in
// fp32, then rounded to T) when given.  Vectors: 16-byte loads and stores.
template <typename T, bool Vectors>
__device__ __forceinline__ void stage_rows(const T* __restrict__ src, int64_t rows, int64_t K, int64_t row0,
                                           int64_t k0, const float* __restrict__ scale, int64_t rows_per_sample,
                                           T (*dst)[kLdT]) {
  constexpr int V = Vectors ? Vec16<T>::kSize : 1, per_row = kStepK / V;
  for (int i = threadIdx.x; i < kTile * per_row; i += kThreads) {
    const int r = i / per_row, kk = (i % per_row) * V;
    const int64_t row = row0 + r, k = k0 + kk;
    Vec16<T> v;
#pragma unroll
    for (int e = 0; e < V; ++e) v.e[e] = static_cast<T>(0.f);
    if (row < rows && k < K) {  // K % V == 0 with vectors: all in or all out
      if constexpr (Vectors) {
        v = load_vector(reinterpret_cast<const Vec16<T>*>(src + row * K + k));
      } else {
        v.e[0] = src[row * K + k];
      }
      if (scale != nullptr) {
        const float* sp = scale + (row / rows_per_sample) * K + k;
#pragma unroll
        for (int e = 0; e < V; ++e) v.e[e] = static_cast<T>(static_cast<float>(v.e[e]) * sp[e]);
      }
    }
    if constexpr (Vectors) {
      store_vector(reinterpret_cast<Vec16<T>*>(&dst[r][kk]), v);
    } else {
      dst[r][kk] = v.e[0];
    }
  }
}

// Tensor cores (fp16 / bf16, fp32 accumulation): the same grid and tile as
// pw_gemm_kernel; warp w computes rows 16 (w % 4) .. +15 x channels 32 (w / 4)
// .. +31 of the tile as four 16 x 8 mma_16x8x16 products per 16 k.
template <typename T, bool Vectors>
__global__ void __launch_bounds__(kThreads)
pw_mma_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
              const float* __restrict__ scale, const T* __restrict__ residual, T* __restrict__ y,
              float* __restrict__ partial, unsigned* __restrict__ arrived, PwArgs a) {
  static_assert(kTile * kLdT * sizeof(T) % 16 == 0, "the tiles are whole 16-byte vectors");
  __shared__ Vec16<T> xs_v[kTile * kLdT * sizeof(T) / 16];  // Vec16: 16-byte aligned
  __shared__ Vec16<T> ws_v[kTile * kLdT * sizeof(T) / 16];
  T(*xs)[kLdT] = reinterpret_cast<T(*)[kLdT]>(xs_v);
  T(*ws)[kLdT] = reinterpret_cast<T(*)[kLdT]>(ws_v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int wm = warp % 4, wn = warp / 4;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTile, col0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int64_t k_begin = static_cast<int64_t>(blockIdx.z) * a.k_per_split;
  const int64_t k_end = std::min(a.K, k_begin + a.k_per_split);

  float acc[kPerThread][kPerThread];  // [8-channel tile j][fragment element e]
#pragma unroll
  for (int j = 0; j < kPerThread; ++j)
#pragma unroll
    for (int e = 0; e < kPerThread; ++e) acc[j][e] = 0.f;

  for (int64_t k0 = k_begin; k0 < k_end; k0 += kStepK) {  // staging zero-fills k >= K
    stage_rows<T, Vectors>(x, a.M, a.K, row0, k0, scale, a.rows_per_sample, xs);
    stage_rows<T, Vectors>(w, a.Nc, a.K, col0, k0, nullptr, 1, ws);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kStepK; kk += 16) {
      const T* ap = &xs[wm * 16 + g][kk + 2 * t];
      const uint32_t af[4] = {pack_pair(ap), pack_pair(ap + 8 * kLdT), pack_pair(ap + 8), pack_pair(ap + 8 * kLdT + 8)};
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) {
        const T* bp = &ws[wn * 32 + j * 8 + g][kk + 2 * t];
        const uint32_t bf[2] = {pack_pair(bp), pack_pair(bp + 8)};
        mma_16x8x16<T>(acc[j], af, bf);
      }
    }
    __syncthreads();  // the next step overwrites the tiles
  }
  finish_tile(
      acc,
      [&](int j, int e) {
        return OutputAt{row0 + wm * 16 + g + (e >> 1) * 8, col0 + wn * 32 + j * 8 + 2 * t + (e & 1)};
      },
      bias, residual, y, partial, arrived, a);
}

Tensor pointwise_bias_act_cuda(const Tensor& x, const Tensor& weight, const Tensor& bias,
                               const std::string& activation, std::optional<Tensor> scale,
                               std::optional<Tensor> residual) {
  check_kernel_device(x, "mnv3::pointwise_bias_act");
  STD_TORCH_CHECK(is_supported_dtype(x.scalar_type()),
                  "mnv3::pointwise_bias_act: x must be float32, float16 or bfloat16");
  check_pointwise_x(x);
  const Activation act = parse_activation(activation);
  const int64_t K = x.size(1);
  const int64_t Nc = check_plain_pointwise_weights(x, weight, bias);
  if (scale.has_value()) check_pointwise_scale(x, *scale);
  KernelDeviceGuard guard(x);
  const int64_t samples = x.size(0);
  const int64_t rows_per_sample = x.dim() == 4 ? x.size(2) * x.size(3) : 1;
  const int64_t M = samples * rows_per_sample;
  Tensor y = x.dim() == 4 ? empty_4d(samples, Nc, x.size(2), x.size(3), true, x.scalar_type(), x)
                          : empty_2d(M, Nc, x.scalar_type(), x);
  if (residual.has_value()) check_pointwise_residual(x, y, *residual);
  if (M == 0 || Nc == 0) return y;
  const int64_t row_tiles = (M + kTile - 1) / kTile, col_tiles = (Nc + kTile - 1) / kTile;
  STD_TORCH_CHECK(row_tiles <= 0x7fffffffLL && col_tiles <= 65535, "mnv3::pointwise_bias_act (CUDA): [", M,
                  ", ", Nc, "] output is too large for the grid");

  // No copies when already contiguous (the usual case); else torch copies on this stream.
  const Tensor wc = torch::stable::contiguous(weight), bc = torch::stable::contiguous(bias);
  const cudaStream_t stream = current_stream(x);
  // Split K when the tiles alone would leave most SMs idle (batch 1, late layers).
  const int64_t tiles = row_tiles * col_tiles, steps = (K + kStepK - 1) / kStepK;
  int64_t splits = std::min(steps / kMinStepsPerSplit, (kTargetBlocks + tiles - 1) / tiles);
  splits = std::max<int64_t>(1, std::min<int64_t>(splits, 65535));
  const int64_t k_per_split = (steps + splits - 1) / splits * kStepK;
  splits = (K + k_per_split - 1) / k_per_split;
  LastBlockScratch scratch;  // the splits' sums, a counter per tile
  if (splits > 1) scratch = last_block_scratch(splits * M * Nc, tiles, x, stream, "mnv3::pointwise_bias_act");
  float* partial = scratch.partial;
  unsigned* arrived = scratch.arrived;
  const PwArgs args{M, K, Nc, rows_per_sample, k_per_split, act};
  const dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(col_tiles), static_cast<unsigned>(splits));
  dispatch_float_types(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(x.const_data_ptr());
    const T* wp = static_cast<const T*>(wc.const_data_ptr());
    const T* bp = static_cast<const T*>(bc.const_data_ptr());
    const float* sp = scale.has_value() ? static_cast<const float*>(scale->const_data_ptr()) : nullptr;
    const T* rp = residual.has_value() ? static_cast<const T*>(residual->const_data_ptr()) : nullptr;
    T* yp = static_cast<T*>(y.mutable_data_ptr());
    const bool vectors = K % Vec16<T>::kSize == 0 && aligned16(xp) && aligned16(wp);
    constexpr bool kTensorCores = !std::is_same_v<T, float>;  // fp16 / bf16: mma.sync
    const auto kernel = [&] {
      if constexpr (kTensorCores) {
        return vectors ? pw_mma_kernel<T, true> : pw_mma_kernel<T, false>;
      } else {
        return vectors ? pw_gemm_kernel<T, true> : pw_gemm_kernel<T, false>;
      }
    }();
    launch(kernel, grid, kThreads, 0, stream, xp, wp, bp, sp, rp, yp, partial, arrived, args);
    // The name says which launch branch ran (the emulated sweep checks it reached each).
    static constexpr const char* kNames[2][2][2] = {
        {{"pw_gemm_kernel (scalar)", "pw_gemm_kernel (scalar, split K, epilogue by the last block)"},
         {"pw_gemm_kernel (16-byte vectors)", "pw_gemm_kernel (16-byte vectors, split K, epilogue by the last block)"}},
        {{"pw_mma_kernel (scalar)", "pw_mma_kernel (scalar, split K, epilogue by the last block)"},
         {"pw_mma_kernel (16-byte vectors)", "pw_mma_kernel (16-byte vectors, split K, epilogue by the last block)"}}};
    check_launch(kNames[kTensorCores][vectors][splits > 1]);
  });
  return y;
}

}  // namespace
}  // namespace mnv3

MNV3_CUDA_LIBRARY_IMPL(m) {
  m.impl("pointwise_bias_act", TORCH_BOX(&mnv3::pointwise_bias_act_cuda));
}
