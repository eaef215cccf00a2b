// Host stand-ins for the CUDA built-ins the kernels in csrc/cuda/ use, so the
// same .cu sources compile a second time as host C++ (MNV3_CUDA_EMULATION)
// and run on CPU tensors: the mnv3_emulated ops, for CI and for debugging a
// kernel without a GPU.  Not a fast path.
//
// Execution model (emulator.cpp): a launch runs its blocks one after another;
// a block's threads are cooperative fibers on one OS thread, switched only at
// __syncthreads and at warp shuffles.  So `__shared__` variables are
// `static thread_local` (one copy per OS thread = per running block), and
// threadIdx / blockIdx / blockDim / gridDim read the running fiber's state.
//
// The emulator also checks what a GPU would leave undefined or fault on, and
// fails the launch naming the thread (the kernel's name comes from
// check_launch, cuda_utils.cuh):
//  - a __syncthreads not reached by every thread of the block (a thread
//    exited, or waits at another __syncthreads or at a shuffle);
//  - a shuffle whose mask names a lane that does not arrive at a shuffle with
//    the same mask, a lane the block does not have, or leaves out the calling
//    lane or the lane it reads;
//  - a vector load or store (__ldg, load_vector, store_vector) whose address
//    is not aligned to its size;
//  - dynamic shared memory written past the size the launch asked for (a
//    canary after it, checked each time a thread yields; reads past it see
//    NaN, and the AddressSanitizer run of CI sees them exactly);
//  - grid and block dimensions over CUDA's limits, and over 48 KB of dynamic
//    shared memory (these kernels never opt in to more).
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __shared__ static thread_local

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned int x, y, z;
};
struct alignas(16) uint4 {
  unsigned int x, y, z, w;
};

typedef struct mnv3_emulated_stream* cudaStream_t;
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
// The last launch's error (and clears it), like the CUDA runtime's; the
// emulator's string says what failed and in which thread.
cudaError_t cudaGetLastError();
const char* cudaGetErrorString(cudaError_t error);

namespace mnv3 {
namespace emu {

const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();
void syncthreads(const char* file, int line);
enum class Shuffle { Down, Up, Xor, Idx };
uint64_t shuffle(const char* file, int line, Shuffle kind, unsigned mask, uint64_t value, int arg, int width);
void check_aligned(const void* p, size_t bytes, const char* what);
void* dynamic_shared();
// Runs body() once per thread of every block of the grid (the emulator's
// launch; errors go to cudaGetLastError).
void run_grid(dim3 grid, dim3 block, size_t dynamic_smem, const std::function<void()>& body);
// Called by check_launch with the kernel's name: names the last launch in the
// log (launch_log) and in its error.
void name_last_launch(const char* kernel);

template <typename T>
T shuffle_as(const char* file, int line, Shuffle kind, unsigned mask, T value, int arg, int width = 32) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffles move 4- or 8-byte values");
  uint64_t raw = 0;
  memcpy(&raw, &value, sizeof(T));
  raw = shuffle(file, line, kind, mask, raw, arg, width);
  T out;
  memcpy(&out, &raw, sizeof(T));
  return out;
}

}  // namespace emu
}  // namespace mnv3

#define threadIdx (::mnv3::emu::thread_idx())
#define blockIdx (::mnv3::emu::block_idx())
#define blockDim (::mnv3::emu::block_dim())
#define gridDim (::mnv3::emu::grid_dim())
#define __syncthreads() ::mnv3::emu::syncthreads(__FILE__, __LINE__)
// __shfl_*_sync(mask, var, delta / lane_mask / src_lane [, width])
#define __shfl_down_sync(mask, var, ...) \
  ::mnv3::emu::shuffle_as(__FILE__, __LINE__, ::mnv3::emu::Shuffle::Down, mask, var, __VA_ARGS__)
#define __shfl_up_sync(mask, var, ...) \
  ::mnv3::emu::shuffle_as(__FILE__, __LINE__, ::mnv3::emu::Shuffle::Up, mask, var, __VA_ARGS__)
#define __shfl_xor_sync(mask, var, ...) \
  ::mnv3::emu::shuffle_as(__FILE__, __LINE__, ::mnv3::emu::Shuffle::Xor, mask, var, __VA_ARGS__)
#define __shfl_sync(mask, var, ...) \
  ::mnv3::emu::shuffle_as(__FILE__, __LINE__, ::mnv3::emu::Shuffle::Idx, mask, var, __VA_ARGS__)

// The read-only cache load: a plain load, checked for the alignment of T.
template <typename T>
inline T __ldg(const T* p) {
  ::mnv3::emu::check_aligned(p, alignof(T), "__ldg");
  return *p;
}

// Global-memory atomics and fences: the blocks of a launch run one after
// another and a block's fibers switch only at __syncthreads and shuffles, so an
// atomic is a plain read-modify-write and every write is already visible (a
// race the fences would prevent on a GPU cannot show here).  __ldcg (a load
// that bypasses L1, for another block's writes) is a plain load.
inline unsigned atomicAdd(unsigned* p, unsigned v) {
  const unsigned old = *p;
  *p = old + v;
  return old;
}
inline void __threadfence() {}
template <typename T>
inline T __ldcg(const T* p) {
  ::mnv3::emu::check_aligned(p, alignof(T), "__ldcg");
  return *p;
}
// The stream-ordered memset: immediate (emulated launches are).
inline cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  memset(p, value, bytes);
  return cudaSuccess;
}

// extern __shared__ T name[]: the block's dynamic shared memory, exactly the
// size the launch asked for.
#define MNV3_DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(::mnv3::emu::dynamic_shared())
