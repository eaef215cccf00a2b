// What the CUDA kernels share beyond their arithmetic: the launch helper, 16-byte
// vector loads and stores, the current stream, launch checks, the device the
// ops run on and the namespace they register in.
//
// The same sources build twice (setup.py):
//  - by nvcc into mnv3_kernels._C_cuda: ops mnv3::* on CUDA tensors;
//  - as host C++ with MNV3_CUDA_EMULATION (MNV3_BUILD_EMULATED=1) against
//    emulation/cuda_emulation.h into mnv3_kernels._C_emulated: ops
//    mnv3_emulated::* on CPU tensors, every launch run by the emulator, which
//    checks barriers, shuffles, vector alignment, shared memory and launch
//    limits (emulation/emulator.cpp).
// Everything that differs between the two lives here.
#pragma once

#include "../common/op_glue.h"

#if defined(MNV3_CUDA_EMULATION)
#include "emulation/cuda_emulation.h"
#else
#include <cuda_runtime.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/headeronly/util/shim_utils.h>
#endif

#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>

// STABLE_TORCH_LIBRARY_IMPL of the CUDA ops: mnv3 on CUDA, or mnv3_emulated
// on CPU for the emulator (ops.py defines both namespaces' schemas).
#if defined(MNV3_CUDA_EMULATION)
#define MNV3_CUDA_LIBRARY_IMPL(m) STABLE_TORCH_LIBRARY_IMPL(mnv3_emulated, CPU, m)
#else
#define MNV3_CUDA_LIBRARY_IMPL(m) STABLE_TORCH_LIBRARY_IMPL(mnv3, CUDA, m)
#endif

// extern __shared__ T name[]: the block's dynamic shared memory.
#if !defined(MNV3_CUDA_EMULATION)
#define MNV3_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif

namespace mnv3 {

// Launches kernel<<<grid, block, smem, stream>>>(args...); under the emulator
// runs it on the host.  Arguments are converted to the kernel's parameter
// types here, once, as a CUDA launch copies them.  Follow with check_launch.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args&&... args) {
#if defined(MNV3_CUDA_EMULATION)
  (void)stream;
  const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  emu::run_grid(grid, block, smem, [&] { std::apply(kernel, params); });
#else
  kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
#endif
}

// One 16-byte (alignof(V)) vector load or store; the emulator checks the
// alignment a GPU would fault on.
template <typename V>
__device__ __forceinline__ V load_vector(const V* p) {
#if defined(MNV3_CUDA_EMULATION)
  emu::check_aligned(p, alignof(V), "a vector load");
#endif
  return *p;
}

template <typename V>
__device__ __forceinline__ void store_vector(V* p, const V& v) {
#if defined(MNV3_CUDA_EMULATION)
  emu::check_aligned(p, alignof(V), "a vector store");
#endif
  *p = v;
}

// 16 bytes of T: the unit of load_vector / store_vector on T data.
template <typename T>
struct alignas(16) Vec16 {
  static constexpr int kSize = 16 / sizeof(T);
  T e[kSize];
};

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The ops' tensors are on the kernels' device: CUDA, or the CPU under the emulator.
inline void check_kernel_device(const Tensor& x, const char* op) {
#if defined(MNV3_CUDA_EMULATION)
  STD_TORCH_CHECK(x.is_cpu(), op, " (emulated CUDA kernel): x must be a CPU tensor");
#else
  STD_TORCH_CHECK(x.is_cuda(), op, " (CUDA kernel): x must be a CUDA tensor");
#endif
}

#if defined(MNV3_CUDA_EMULATION)
struct KernelDeviceGuard {
  explicit KernelDeviceGuard(const Tensor&) {}
};

inline cudaStream_t current_stream(const Tensor&) { return nullptr; }
#else
// Makes x's device current for the op's launches.
struct KernelDeviceGuard {
  explicit KernelDeviceGuard(const Tensor& x) : guard(x.get_device_index()) {}
  torch::stable::accelerator::DeviceGuard guard;
};

// torch's current CUDA stream on x's device, as a cudaStream_t.  (A stable
// Stream's id() is torch's stream id, not the cudaStream_t; the C shim hands
// out the raw stream.)
inline cudaStream_t current_stream(const Tensor& x) {
  void* stream = nullptr;
  TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(x.get_device_index(), &stream));
  return static_cast<cudaStream_t>(stream);
}
#endif

inline void check_launch(const char* kernel) {
#if defined(MNV3_CUDA_EMULATION)
  emu::name_last_launch(kernel);
#endif
  const cudaError_t err = cudaGetLastError();
  STD_TORCH_CHECK(err == cudaSuccess, "mnv3: CUDA launch of ", kernel,
                  " failed: ", cudaGetErrorString(err));
}

// The CUDA programming guide's "last block" pattern: once the block has written
// what another block will read, counts its arrival on *counter and returns (the
// same in every thread of the block) whether it arrived last of `expected`
// blocks; that block then reads the others' writes with __ldcg (past L1).
// Every thread of the block calls it, once a launch.
__device__ __forceinline__ bool block_arrives_last(unsigned* counter, unsigned expected) {
  __shared__ bool last;
  __threadfence();  // this block's writes are visible device-wide before it counts
  __syncthreads();
  if (threadIdx.x == 0 && threadIdx.y == 0) last = atomicAdd(counter, 1u) == expected - 1;
  __syncthreads();
  const bool result = last;
  __threadfence();
  return result;
}

// The memory of a last-block reduction (block_arrives_last): `floats` fp32
// partial results, then `counters` arrival counters, in one torch allocation
// (the caching allocator), the counters zeroed by a cudaMemsetAsync on
// `stream` (a memset node, not a kernel, in a CUDA graph).  Keep `buffer`
// alive until the launch is queued.  (In an unnamed namespace: a Tensor member
// gives the struct the hidden visibility of torch's stable Tensor.)
namespace {
struct LastBlockScratch {
  Tensor buffer;
  float* partial = nullptr;
  unsigned* arrived = nullptr;
};

inline LastBlockScratch last_block_scratch(int64_t floats, int64_t counters, const Tensor& like, cudaStream_t stream,
                                           const char* op) {
  LastBlockScratch s;
  s.buffer = empty_2d(floats + counters, 1, ScalarType::Float, like);
  s.partial = static_cast<float*>(s.buffer.mutable_data_ptr());
  s.arrived = reinterpret_cast<unsigned*>(s.partial + floats);
  const cudaError_t err = cudaMemsetAsync(s.arrived, 0, sizeof(unsigned) * counters, stream);
  STD_TORCH_CHECK(err == cudaSuccess, op, " (CUDA): zeroing the arrival counters failed: ", cudaGetErrorString(err));
  return s;
}
}  // namespace

inline unsigned int blocks_for(int64_t work, int threads) {
  const int64_t b = (work + threads - 1) / threads;
  STD_TORCH_CHECK(b <= 0x7fffffffLL, "mnv3: problem too large for a 1-d grid (", work, " items)");
  return static_cast<unsigned int>(b);
}

}  // namespace mnv3
