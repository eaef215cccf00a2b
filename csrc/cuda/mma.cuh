// The tensor-core matrix product of a warp, mma.sync m16n8k16 with fp16 or
// bf16 operands and fp32 accumulation (sm_80 and later), and its portable
// form for the emulator and older GPUs.
//
// Fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point
// type"), lane = g * 4 + t: each 32-bit register holds two consecutive
// elements along k (the lower one in the low half),
//   A (16 x 16, row-major):  a[0] = A[g][2t, 2t+1]      a[1] = A[g+8][2t, 2t+1]
//                            a[2] = A[g][2t+8, 2t+9]    a[3] = A[g+8][2t+8, 2t+9]
//   B (16 x 8, column-major): b[0] = B[2t, 2t+1][g]     b[1] = B[2t+8, 2t+9][g]
//   C = D (16 x 8, fp32):    d[0], d[1] = D[g][2t, 2t+1]   d[2], d[3] = D[g+8][2t, 2t+1]
#pragma once

#include "cuda_utils.cuh"

#include <cstring>

namespace mnv3 {

// Two T (fp16 / bf16) as one 32-bit fragment register, lo at the lower address.
template <typename T>
__device__ __forceinline__ uint32_t pack_pair(const T* p) {
  static_assert(sizeof(T) == 2, "pack_pair packs 16-bit elements");
  uint32_t r;
  memcpy(&r, p, 4);
  return r;
}

template <typename T>
__device__ __forceinline__ float pair_dot(uint32_t u, uint32_t v) {
  T a[2], b[2];
  memcpy(a, &u, 4);
  memcpy(b, &v, 4);
  return static_cast<float>(a[0]) * static_cast<float>(b[0]) + static_cast<float>(a[1]) * static_cast<float>(b[1]);
}

// One lane's share of d += A * B from the fragments of lane g * 4 + j (ar: rows
// g, g+8 of A at k = 2j, 2j+1, 2j+8, 2j+9) and of lanes 2t * 4 + j and
// (2t + 1) * 4 + j (bc0, bc1: columns 2t, 2t+1 of B at those k), in fp32.
template <typename T>
__device__ __forceinline__ void mma_lane_share(float (&d)[4], const uint32_t (&ar)[4], const uint32_t (&bc0)[2],
                                               const uint32_t (&bc1)[2]) {
  d[0] += pair_dot<T>(ar[0], bc0[0]) + pair_dot<T>(ar[2], bc0[1]);
  d[1] += pair_dot<T>(ar[0], bc1[0]) + pair_dot<T>(ar[2], bc1[1]);
  d[2] += pair_dot<T>(ar[1], bc0[0]) + pair_dot<T>(ar[3], bc0[1]);
  d[3] += pair_dot<T>(ar[1], bc1[0]) + pair_dot<T>(ar[3], bc1[1]);
}

// d += A * B for this warp's fragments (every lane of the warp calls it,
// converged; lane = threadIdx.x % 32, blocks 1-d).  sm_80 and later: one
// mma.sync.  The emulator: the lanes publish their fragments in a per-warp
// table and meet at a shuffle (its warp rendezvous), each reads the lanes it
// needs (mma_lane_share), and they meet again before the table is reused.
// Older GPUs: the same reads as 32 shuffles.  The fp32 additions run in an
// order of their own; the tensor cores' order is unspecified.
template <typename T>
__device__ __forceinline__ void mma_16x8x16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#elif defined(MNV3_CUDA_EMULATION)
  struct Fragments {
    uint32_t a[4], b[2];
  };
  __shared__ Fragments table[1024];  // [lane of the block]: blocks of up to 1024 threads
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  Fragments* warp = table + threadIdx.x / 32 * 32;
  warp[lane] = Fragments{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}};
  (void)__shfl_sync(0xffffffffu, 0, 0);  // every lane has published
  for (int j = 0; j < 4; ++j) {
    const Fragments& fa = warp[g * 4 + j];
    const uint32_t bc0[2] = {warp[2 * t * 4 + j].b[0], warp[2 * t * 4 + j].b[1]};
    const uint32_t bc1[2] = {warp[(2 * t + 1) * 4 + j].b[0], warp[(2 * t + 1) * 4 + j].b[1]};
    mma_lane_share<T>(d, fa.a, bc0, bc1);
  }
  (void)__shfl_sync(0xffffffffu, 0, 0);  // every lane has read before the table is reused
#else
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  for (int j = 0; j < 4; ++j) {
    uint32_t ar[4], bc0[2], bc1[2];
    for (int q = 0; q < 4; ++q) ar[q] = __shfl_sync(0xffffffffu, a[q], g * 4 + j);
    for (int q = 0; q < 2; ++q) {
      bc0[q] = __shfl_sync(0xffffffffu, b[q], 2 * t * 4 + j);
      bc1[q] = __shfl_sync(0xffffffffu, b[q], (2 * t + 1) * 4 + j);
    }
    mma_lane_share<T>(d, ar, bc0, bc1);
  }
#endif
}

}  // namespace mnv3
