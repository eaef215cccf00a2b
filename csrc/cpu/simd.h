// Fixed-width float vectors for the CPU kernels' hot loops: GCC/Clang vector
// extensions, which every target clone (MNV3_CPU_CLONES) lowers to its own
// instructions (one AVX-512 register for 16 floats, two AVX2 registers, four
// SSE registers).  Written out as vectors because GCC's loop vectorizer does
// not keep small accumulator arrays in registers across the unrolled tap
// loops (measured: the fp32 depthwise tile spilled every accumulator to the
// stack and ran 2.5x slower than oneDNN).  The arithmetic on them is the
// shared MNV3_HD code (activation.h), applied lane by lane.
#pragma once

#include "../common/macros.h"

#include <string.h>

namespace mnv3 {

template <int V>
struct FloatVector {
  typedef float type __attribute__((vector_size(V * sizeof(float))));
};
template <int V>
using vfloat = typename FloatVector<V>::type;
template <int V>
struct IntVector {
  typedef int type __attribute__((vector_size(V * sizeof(int))));
};
template <int V>
using vint = typename IntVector<V>::type;  // (a comparison of vfloat<V>s, or lanes for a select)

template <int V>
MNV3_HD vfloat<V> vload(const float* p) {
  vfloat<V> v;
  memcpy(&v, p, sizeof(v));  // unaligned load
  return v;
}

template <int V>
MNV3_HD void vstore(float* p, vfloat<V> v) {
  memcpy(p, &v, sizeof(v));
}

template <int V>
MNV3_HD vfloat<V> vzero() {
  return vfloat<V>{};
}

}  // namespace mnv3
