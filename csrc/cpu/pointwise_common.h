// Helpers of the CPU ops on the GEMM register tiles (kernels/gemm.cpp):
// pointwise_bias_act, se_gate and pointwise_dwconv share them; defined in
// pointwise_bias_act_cpu.cpp.
#pragma once

#include "cpu_utils.h"

#include <vector>

namespace mnv3 {

// p on the register tiles (M > 1) or the matrix-vector walk (M = 1), in parallel.
void run_pointwise(const PwProblem& p, Activation act);

// Checks the weight of a 1x1 conv on x's channels (a [Cout, Cin] matrix, or its
// panels: a contiguous [ceil(Cout/16), Cin, 16] tensor, Cout from the bias) and
// its [Cout] bias; returns Cout.
int64_t check_pointwise_weights(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                const char* wname = "weight", const char* bname = "bias");

// The weight's panels ([ceil(Nc/16)][K][16], zero-padded): the tensor's memory
// when given so, else packed into `storage`.
const float* weight_panels(const Tensor& weight, int64_t K, int64_t Nc, std::vector<float>& storage);

// Whether t is a row-major (contiguous) 2-d tensor.
bool is_row_major(const Tensor& t);

}  // namespace mnv3
