// Host helpers of the CUDA kernels: the current stream, launch checks.
#pragma once

#include "../common/op_glue.h"

#include <cuda_runtime.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/headeronly/util/shim_utils.h>

namespace mnv3 {

// torch's current CUDA stream on x's device, as a cudaStream_t.  (A stable
// Stream's id() is torch's stream id, not the cudaStream_t; the C shim hands
// out the raw stream.)
inline cudaStream_t current_stream(const Tensor& x) {
  void* stream = nullptr;
  TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(x.get_device_index(), &stream));
  return static_cast<cudaStream_t>(stream);
}

inline void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  STD_TORCH_CHECK(err == cudaSuccess, "mnv3: CUDA launch of ", kernel,
                  " failed: ", cudaGetErrorString(err));
}

inline unsigned int blocks_for(int64_t work, int threads) {
  const int64_t b = (work + threads - 1) / threads;
  STD_TORCH_CHECK(b <= 0x7fffffffLL, "mnv3: problem too large for a 1-d grid (", work, " items)");
  return static_cast<unsigned int>(b);
}

}  // namespace mnv3
