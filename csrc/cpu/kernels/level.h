// The vector ISA level a CPU kernel translation unit is compiled for.
//
// Every source in csrc/cpu/kernels/ is compiled once per level, with that
// level's compiler flags and one of these macros (setup.py, CPU_LEVELS):
//   MNV3_CPU_LEVEL_AVX512    -march=x86-64-v4   16 fp32 lanes, 32 registers
//   MNV3_CPU_LEVEL_AVX2      -march=x86-64-v3   8 lanes (AVX2 + FMA), 16 registers
//   MNV3_CPU_LEVEL_BASELINE  x86-64 (SSE2) or the target's own baseline
//                            (aarch64: NEON)    4 lanes
// Each level's code lives in its own namespace (MNV3_LEVEL_NS), so the three
// copies of a kernel never share a symbol; cpu_isa.cpp picks one level's
// table (CpuKernels, kernels.h) at load time.  The vector width and register
// blocking of every kernel come from the constants below: a vector wider
// than the target's registers (a GCC generic vector of 16 floats on AVX2 or
// SSE) is lowered piecewise through the stack, measured 7x slower than aten.
#pragma once

#if defined(MNV3_CPU_LEVEL_AVX512)
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512DQ__) || !defined(__AVX512VL__)
#error "MNV3_CPU_LEVEL_AVX512 needs -march=x86-64-v4 (AVX512F/BW/DQ/VL)"
#endif
#define MNV3_LEVEL_NS cpu_avx512
#define MNV3_LEVEL_NAME "avx512"
#define MNV3_LEVEL_LANES 16
#define MNV3_LEVEL_ACCUMULATORS 12  // of 32 zmm registers (12x16 GEMM tiles, measured best on Zen 4)

#elif defined(MNV3_CPU_LEVEL_AVX2)
#if !defined(__AVX2__) || !defined(__FMA__) || defined(__AVX512F__)
#error "MNV3_CPU_LEVEL_AVX2 needs -march=x86-64-v3 (AVX2 + FMA, no AVX-512)"
#endif
#define MNV3_LEVEL_NS cpu_avx2
#define MNV3_LEVEL_NAME "avx2"
#define MNV3_LEVEL_LANES 8
#define MNV3_LEVEL_ACCUMULATORS 12  // of 16 ymm registers: + 2 weight vectors + 1 broadcast (6x16 GEMM tiles)

#elif defined(MNV3_CPU_LEVEL_BASELINE)
#if defined(__x86_64__) && defined(__AVX__)
#error "MNV3_CPU_LEVEL_BASELINE must not be compiled with AVX enabled (CFLAGS with -march=native?)"
#endif
#if defined(__aarch64__) && !defined(__ARM_NEON)
#error "the aarch64 baseline is NEON"
#endif
#define MNV3_LEVEL_NS cpu_baseline
#define MNV3_LEVEL_NAME "baseline"
#define MNV3_LEVEL_LANES 4
#if defined(__aarch64__)
#define MNV3_LEVEL_ACCUMULATORS 24  // of 32 NEON registers
#else
#define MNV3_LEVEL_ACCUMULATORS 12  // of 16 xmm registers: + a weight, a broadcast and a product (no FMA)
#endif

#else
#error "a CPU kernel source is compiled with one of MNV3_CPU_LEVEL_AVX512, _AVX2, _BASELINE (setup.py)"
#endif

namespace mnv3 {
namespace MNV3_LEVEL_NS {

constexpr int kVecLanes = MNV3_LEVEL_LANES;              // fp32 lanes of one vector register
constexpr int kAccumulators = MNV3_LEVEL_ACCUMULATORS;   // vector accumulators a register tile may hold

}  // namespace MNV3_LEVEL_NS
}  // namespace mnv3
