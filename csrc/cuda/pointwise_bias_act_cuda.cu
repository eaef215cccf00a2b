// CUDA kernel of mnv3::pointwise_bias_act: the 1x1 conv (or Linear) as one
// matrix product over x's channels-last rows,
//   y[m, co] = act(sum_k x[m, k] * scale[n(m), k] * w[co, k] + bias[co]) (+ residual[m, co]),
// n(m) = m / (H * W) the row's sample: the SE gate scales the input rows as
// they are staged (the scaled tensor is never written, as on the CPU), the
// bias, activation and residual add run in the epilogue.  One launch.
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

#include <optional>

namespace mnv3 {
namespace {

constexpr int kThreads = 256;
constexpr int kTile = 64;                  // rows (BM) and output channels (BN) of a block's tile
constexpr int kStepK = 32;                 // K staged per step
constexpr int kLd = kTile + 1;             // shared-memory row stride in floats
constexpr int kPerThread = kTile / 16;     // 4 x 4 outputs a thread

struct PwArgs {
  int64_t M, K, Nc;          // y is [M, Nc], x [M, K], w [Nc, K]
  int64_t rows_per_sample;   // H * W (1 for a 2-d x): the row's SE scale is scale[m / rows_per_sample]
  Activation act;
};

// blockIdx.x: the 64-row tile of y, blockIdx.y: the 64-channel tile.
// x [M, K], w [Nc, K], y and residual [M, Nc], all row-major; scale [N, K]
// fp32 or null; residual null when there is none.
template <typename T, bool Vectors>
__global__ void __launch_bounds__(kThreads)
pw_gemm_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
               const float* __restrict__ scale, const T* __restrict__ residual, T* __restrict__ y, PwArgs a) {
  __shared__ float xs[kStepK][kLd];
  __shared__ float ws[kStepK][kLd];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTile, col0 = static_cast<int64_t>(blockIdx.y) * kTile;

  float acc[kPerThread][kPerThread];
#pragma unroll
  for (int i = 0; i < kPerThread; ++i)
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) acc[i][j] = 0.f;

  for (int64_t k0 = 0; k0 < a.K; k0 += kStepK) {
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
  const PwArgs args{M, K, Nc, rows_per_sample, act};
  const dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(col_tiles));
  const cudaStream_t stream = current_stream(x);
  dispatch_float_types(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(x.const_data_ptr());
    const T* wp = static_cast<const T*>(wc.const_data_ptr());
    const T* bp = static_cast<const T*>(bc.const_data_ptr());
    const float* sp = scale.has_value() ? static_cast<const float*>(scale->const_data_ptr()) : nullptr;
    const T* rp = residual.has_value() ? static_cast<const T*>(residual->const_data_ptr()) : nullptr;
    T* yp = static_cast<T*>(y.mutable_data_ptr());
    const bool vectors = K % Vec16<T>::kSize == 0 && aligned16(xp) && aligned16(wp);
    if (vectors) {
      launch(pw_gemm_kernel<T, true>, grid, kThreads, 0, stream, xp, wp, bp, sp, rp, yp, args);
    } else {
      launch(pw_gemm_kernel<T, false>, grid, kThreads, 0, stream, xp, wp, bp, sp, rp, yp, args);
    }
    check_launch(vectors ? "pw_gemm_kernel (16-byte vectors)" : "pw_gemm_kernel (scalar)");
  });
  return y;
}

}  // namespace
}  // namespace mnv3

MNV3_CUDA_LIBRARY_IMPL(m) {
  m.impl("pointwise_bias_act", TORCH_BOX(&mnv3::pointwise_bias_act_cuda));
}
