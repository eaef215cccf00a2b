// Squeeze-excitation arithmetic shared by the CPU and CUDA kernels:
//   hidden = relu(W1 @ pooled + b1)      W1: [Cr, C]
//   gate   = G(W2 @ hidden + b2)         W2: [C, Cr], G = hardsigmoid | sigmoid
//   y      = x * gate                    broadcast over H, W
// The dot products are split so a kernel may share one among threads: each
// takes a strided part (dot_strided), the parts are summed, and the unit
// function finishes it.  The CUDA kernel splits each dot over a warp; the
// CPU kernel runs its own vector dot (dot_f32) and the same unit functions.
#pragma once

#include "activation.h"
#include "macros.h"

#include <stdint.h>

namespace mnv3 {

// sum over k = begin, begin + step, ... < n of a[k] * b[k], in fp32.
template <typename A, typename B>
MNV3_HD float dot_strided(const A* a, const B* b, int64_t begin, int64_t n, int64_t step) {
  float acc = 0.f;
  for (int64_t k = begin; k < n; k += step) acc += static_cast<float>(a[k]) * static_cast<float>(b[k]);
  return acc;
}

// hidden[j] = relu(b1[j] + dot(w1[j, :], pooled)), given the dot.
MNV3_HD float se_hidden_unit(float dot, float b1) { return relu(dot + b1); }

// gate[c] = G(b2[c] + dot(w2[c, :], hidden)), given the dot.
template <Gate G>
MNV3_HD float se_gate_unit(float dot, float b2) {
  return apply_gate<G>(dot + b2);
}

}  // namespace mnv3
