// Helpers of the CPU ops on the GEMM register tiles (kernels/gemm.cpp):
// pointwise_bias_act, se_gate and pointwise_dwconv share them; defined in
// pointwise_bias_act_cpu.cpp.
#pragma once

#include "cpu_utils.h"

#include <vector>

namespace mnv3 {

// p on the register tiles (M > 1) or the matrix-vector walk (M = 1), in parallel,
// prefetching the weights ahead of the tiles when they are large (weight_prefetch_steps).
void run_pointwise(const PwProblem& p, Activation act);

// Checks the weight of a 1x1 conv on x's channels (a [Cout, Cin] matrix, or its
// panels: a contiguous [ceil(Cout/16), Cin, 16] tensor, Cout from the bias) and
// its [Cout] bias; returns Cout.
int64_t check_pointwise_weights(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                const char* wname = "weight", const char* bname = "bias");
// The same over K input channels (a weight applied to a tensor the op computes
// itself: pointwise_dwconv_project's projection); x gives the device.
int64_t check_pointwise_weights(const Tensor& x, int64_t K, const Tensor& weight, const Tensor& bias,
                                const char* wname, const char* bname);

// The weight's panels ([ceil(Nc/16)][K][16], zero-padded): the tensor's memory
// when given so, else packed into `storage`.
const float* weight_panels(const Tensor& weight, int64_t K, int64_t Nc, std::vector<float>& storage);

// PwProblem::prefetch for a [K] x [Nc] weight: kWeightPrefetchSteps k steps
// (8 KB of a panel) when its panels outgrow the L1 data cache, else 0.  In a
// whole forward each layer's weights come from L3 (the model's 4-17 MB do not
// stay in a 1 MB L2), and the hardware prefetcher did not run far enough ahead
// of a tile's 64 bytes per 6-12 cycles: measured one thread, Zen 5 avx512, the
// 7x7 layers with their weights cold (24 copies in turn): 1152 -> 320
// 250 -> 195 us, 320 -> 1280 260 -> 214, 1152 -> 192 134 -> 113 (hot: 183,
// 199, 111); distances 64 / 256 / 512 gave less.  Whole forward, 2 threads,
// interleaved builds: MNASNet batch 1 0.92x the time, MobileNetV3-Large 0.98x.
// Small weights stay in L1 after the first row block; prefetching past their
// end measured up to 10% slower (32 -> 16 channels at 112x112, one run).
inline constexpr int64_t kWeightPrefetchSteps = 128;
inline constexpr int64_t kWeightPrefetchMinBytes = 32 * 1024;
inline int64_t weight_prefetch_steps(int64_t K, int64_t Nc) {
  const int64_t bytes = (Nc + kPanel - 1) / kPanel * K * kPanel * static_cast<int64_t>(sizeof(float));
  return bytes >= kWeightPrefetchMinBytes ? kWeightPrefetchSteps : 0;
}

}  // namespace mnv3
