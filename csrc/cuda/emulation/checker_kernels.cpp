// Kernels with one planted defect each, so the tests can show that every check
// of the emulator fires and names the thread (tests/test_cuda_emulator.py
// runs them through _C_emulated.run_checker_case).  "sum" is a correct kernel
// (a block reduction through shared memory, barriers and shuffles) whose
// result the test compares with the closed form.
#include "../cuda_utils.cuh"
#include "checker_kernels.h"

#include <stdexcept>
#include <string>
#include <vector>

namespace mnv3 {
namespace {

__device__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// out[blockIdx.x] = sum of (blockIdx.x * blockDim.x + t) over the block's threads.
__global__ void block_sum_kernel(float* out) {
  MNV3_DYNAMIC_SHARED(float, partial);  // one float per warp
  const unsigned t = threadIdx.x, lane = t % 32, warp = t / 32;
  const float v = warp_sum(static_cast<float>(blockIdx.x * blockDim.x + t));
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < blockDim.x / 32 ? partial[lane] : 0.f;
    s = warp_sum(s);
    if (lane == 0) out[blockIdx.x] = s;
  }
}

__global__ void exit_before_barrier_kernel(float* out) {
  if (threadIdx.x >= 16) return;  // planted: the other threads wait at the barrier forever
  __syncthreads();
  out[threadIdx.x] = 1.f;
}

__global__ void two_barriers_kernel(float* out) {
  if (threadIdx.x % 2) {  // planted: a barrier in divergent code
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.f;
}

__global__ void shuffle_missing_lane_kernel(float* out) {
  if (threadIdx.x % 32 < 16) out[threadIdx.x] = warp_sum(1.f);  // planted: the mask names lanes 16..31 too
}

__global__ void shuffle_partial_warp_kernel(float* out) {
  out[threadIdx.x] = warp_sum(1.f);  // planted: launched with 40 threads, the second warp has 8 lanes
}

__global__ void misaligned_vector_kernel(const float* in, float* out) {
  const uint4 v = load_vector(reinterpret_cast<const uint4*>(in + 1));  // planted: 4 bytes off
  out[threadIdx.x] = static_cast<float>(v.x);
}

__global__ void misaligned_ldg_kernel(const float* in, float* out) {
  const uint4 v = __ldg(reinterpret_cast<const uint4*>(in + 2));  // planted: 8 bytes off
  out[threadIdx.x] = static_cast<float>(v.y);
}

__global__ void shared_overflow_kernel(int n, float* out) {
  MNV3_DYNAMIC_SHARED(float, s);
  s[threadIdx.x] = 1.f;  // planted: launched with n floats of shared memory for more than n threads
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x % n];
}

__global__ void noop_kernel(float* out) {
  if (out != nullptr && threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0) out[0] = 1.f;
}

}  // namespace

std::vector<std::string> checker_cases() {
  return {"sum", "exit_before_barrier", "two_barriers", "shuffle_missing_lane", "shuffle_partial_warp",
          "misaligned_vector", "misaligned_ldg", "shared_overflow", "grid_y_over_limit", "block_over_limit",
          "shared_over_limit"};
}

double run_checker_case(const std::string& name) {
  alignas(16) float in[64] = {};
  std::vector<float> out(4096, 0.f);
  float* o = out.data();
  if (name == "sum") {
    launch(block_sum_kernel, 3, 256, 8 * sizeof(float), nullptr, o);
    check_launch("block_sum_kernel");
    return static_cast<double>(out[0]) + out[1] + out[2];
  } else if (name == "exit_before_barrier") {
    launch(exit_before_barrier_kernel, 2, 64, 0, nullptr, o);
    check_launch("exit_before_barrier_kernel");
  } else if (name == "two_barriers") {
    launch(two_barriers_kernel, 1, 64, 0, nullptr, o);
    check_launch("two_barriers_kernel");
  } else if (name == "shuffle_missing_lane") {
    launch(shuffle_missing_lane_kernel, 1, 64, 0, nullptr, o);
    check_launch("shuffle_missing_lane_kernel");
  } else if (name == "shuffle_partial_warp") {
    launch(shuffle_partial_warp_kernel, 1, 40, 0, nullptr, o);
    check_launch("shuffle_partial_warp_kernel");
  } else if (name == "misaligned_vector") {
    launch(misaligned_vector_kernel, 1, 32, 0, nullptr, in, o);
    check_launch("misaligned_vector_kernel");
  } else if (name == "misaligned_ldg") {
    launch(misaligned_ldg_kernel, 1, 32, 0, nullptr, in, o);
    check_launch("misaligned_ldg_kernel");
  } else if (name == "shared_overflow") {
    launch(shared_overflow_kernel, 1, 64, 32 * sizeof(float), nullptr, 32, o);
    check_launch("shared_overflow_kernel");
  } else if (name == "grid_y_over_limit") {
    launch(noop_kernel, dim3(1, 65536), 32, 0, nullptr, o);
    check_launch("noop_kernel");
  } else if (name == "block_over_limit") {
    launch(noop_kernel, 1, dim3(64, 17), 0, nullptr, o);
    check_launch("noop_kernel");
  } else if (name == "shared_over_limit") {
    launch(noop_kernel, 1, 32, 48 * 1024 + 4, nullptr, o);
    check_launch("noop_kernel");
  } else {
    throw std::invalid_argument("no checker case '" + name + "'");
  }
  return 0.0;
}

}  // namespace mnv3
