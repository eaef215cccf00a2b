// CUDA kernel of mnv3::pointwise_bias_act: the 1x1 conv (or Linear) as one
// matrix product over x's channels-last rows,
//   y[m, co] = act(sum_k x[m, k] * scale[n(m), k] * w[co, k] + bias[co]) (+ residual[m, co]),
// n(m) = m / (H * W) the row's sample: the SE gate scales the input rows as
// they are staged (the scaled tensor is never written, as on the CPU), the
// bias, activation and residual add run in the epilogue.  One launch; where the
// output has few tiles (batch 1, late layers) K is split over blocks and the
// last block of a tile adds the splits in a fixed order before the epilogue.
//
// pw_gemm_kernel: a block computes a 64-row x 64-channel tile of y with 256
// threads, 4 x 4 outputs each (rows ty + 16 i, channels tx + 16 j), over K in
// steps of 32: both operands staged in shared memory as fp32 (fp16 / bf16
// converted once), k-major with a padded row (kLd = 65 words: the staging
// stores of a warp fall on 32 distinct banks, the compute loop reads one
// broadcast word of x and 16 consecutive words of w per k).  fp32 FMA on the
// SIMT cores, fp32 accumulation for every dtype.  Staging reads 16-byte
// vectors of x and w rows where K is a multiple of the vector and both are
// 16-byte aligned, else one element per thread (consecutive threads on
// consecutive k).  No tensor cores yet (mma.sync / wgmma, and their fragment
// semantics in the emulator, are still to do), so this is a correct,
// fused baseline; its speed has not been measured on a GPU.
//
// The weight is the plain [Cout, Cin] matrix (made contiguous if it is not);
// the CPU kernel's panels (layout.pack_pointwise_weight) are refused.
// On torch's current stream, no host sync, no allocation outside torch.
#include "stage_tile.cuh"

#include <algorithm>
#include <optional>

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

// blockIdx.x: the 64-row tile of y, blockIdx.y: the 64-channel tile, blockIdx.z:
// the split of K (K / k_per_split of them).  x [M, K], w [Nc, K], y and residual
// [M, Nc], all row-major; scale [N, K] fp32 or null; residual null when there is
// none.  Many splits: each writes its sums to partial[z, M, Nc] and the last of a
// tile's splits to arrive (block_arrives_last on arrived[tile]) adds them in split
// order (deterministic) and runs the epilogue.
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

  if (gridDim.z > 1) {  // uniform over the grid
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int64_t m = row0 + ty + 16 * i;
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) {
        const int64_t co = col0 + tx + 16 * j;
        if (m < a.M && co < a.Nc) partial[(blockIdx.z * a.M + m) * a.Nc + co] = acc[i][j];
      }
    }
    if (!block_arrives_last(&arrived[blockIdx.x * gridDim.y + blockIdx.y], gridDim.z)) return;
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int64_t m = row0 + ty + 16 * i;
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) {
        const int64_t co = col0 + tx + 16 * j;
        if (m >= a.M || co >= a.Nc) continue;
        const float* p = partial + m * a.Nc + co;
        const int64_t split_stride = a.M * a.Nc;
        float v = 0.f;
#pragma unroll 1
        for (unsigned z = 0; z < gridDim.z; ++z) v += __ldcg(p + z * split_stride);  // split order
        acc[i][j] = v;
      }
    }
  }

#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    const int64_t co = col0 + tx + 16 * j;
    if (co >= a.Nc) continue;
    const float b = static_cast<float>(bias[co]);
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int64_t m = row0 + ty + 16 * i;
      if (m >= a.M) continue;
      float v = activate(a.act, acc[i][j] + b);
      if (residual != nullptr) v += static_cast<float>(residual[m * a.Nc + co]);
      y[m * a.Nc + co] = static_cast<T>(v);
    }
  }
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
  float* partial = nullptr;
  unsigned* arrived = nullptr;
  Tensor partial_buf;
  if (splits > 1) {
    // One allocation: the splits' sums, then a 4-byte arrival counter per tile.
    partial_buf = empty_2d(splits * M * Nc + tiles, 1, ScalarType::Float, x);
    partial = static_cast<float*>(partial_buf.mutable_data_ptr());
    arrived = reinterpret_cast<unsigned*>(partial + splits * M * Nc);
    const cudaError_t err = cudaMemsetAsync(arrived, 0, sizeof(unsigned) * tiles, stream);
    STD_TORCH_CHECK(err == cudaSuccess, "mnv3::pointwise_bias_act (CUDA): zeroing the split-K counters failed: ",
                    cudaGetErrorString(err));
  }
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
    const auto kernel = vectors ? pw_gemm_kernel<T, true> : pw_gemm_kernel<T, false>;
    launch(kernel, grid, kThreads, 0, stream, xp, wp, bp, sp, rp, yp, partial, arrived, args);
    // The name says which launch branch ran (the emulated sweep checks it reached each).
    static constexpr const char* kNames[2][2] = {
        {"pw_gemm_kernel (scalar)", "pw_gemm_kernel (scalar, split K, epilogue by the last block)"},
        {"pw_gemm_kernel (16-byte vectors)", "pw_gemm_kernel (16-byte vectors, split K, epilogue by the last block)"}};
    check_launch(kNames[vectors][splits > 1]);
  });
  return y;
}

}  // namespace
}  // namespace mnv3

MNV3_CUDA_LIBRARY_IMPL(m) {
  m.impl("pointwise_bias_act", TORCH_BOX(&mnv3::pointwise_bias_act_cuda));
}
