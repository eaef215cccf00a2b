// Fixed-width float vectors for the CPU kernels' hot loops, at most as wide
// as the level's registers (level.h): GCC/Clang vector extensions, which the
// level's flags lower to one register each (zmm, ymm, xmm or a NEON q
// register).  Written out as vectors because GCC's loop vectorizer does not
// keep small accumulator arrays in registers across the unrolled tap loops
// (measured: the fp32 depthwise tile spilled every accumulator to the stack
// and ran 2.5x slower than oneDNN).  A kernel that covers 16 channels on a
// level with fewer lanes uses 16 / kVecLanes vectors side by side; vload and
// vstore refuse, at compile time, a vector wider than the registers.
// The arithmetic on them is the shared MNV3_HD code (activation.h), applied
// lane by lane.
#pragma once

#include "../../common/macros.h"
#include "level.h"

#include <stdint.h>
#include <string.h>

namespace mnv3 {
namespace MNV3_LEVEL_NS {

template <int V>
struct FloatVector {
  static_assert(V >= 1 && V <= kVecLanes && (V & (V - 1)) == 0,
                "a vector wider than this level's registers is lowered through memory");
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

// The lanes a kernel computes at once for L channels: one register's, or L if fewer.
template <int L>
constexpr int lanes_for() {
  return L < kVecLanes ? L : kVecLanes;
}

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

// The first n (0 <= n <= V) floats at p, zeros after them; and the first n
// lanes of v to p.  Lane by lane: a memcpy to or from a vector's address
// made GCC keep the caller's accumulators in memory through the whole k loop
// of a GEMM tile (measured: half the AVX2 6x16 tile's accumulators loaded and
// stored every step, 2.5x slower).
template <int V>
MNV3_HD vfloat<V> vload_partial(const float* p, int n) {
  vfloat<V> v = vzero<V>();
  for (int l = 0; l < n; ++l) v[l] = p[l];
  return v;
}

template <int V>
MNV3_HD void vstore_partial(float* p, vfloat<V> v, int n) {
  for (int l = 0; l < n; ++l) p[l] = v[l];
}

// The valid lanes (0 .. V) of the vector that starts `offset` lanes into a run of `valid` lanes.
MNV3_HD int lanes_left(int valid, int offset, int V) {
  const int n = valid - offset;
  return n < 0 ? 0 : (n > V ? V : n);
}

MNV3_HD int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
MNV3_HD int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

}  // namespace MNV3_LEVEL_NS
}  // namespace mnv3
