// Squeeze-excitation arithmetic shared by the CPU and CUDA kernels:
//   hidden = relu(W1 @ pooled + b1)      W1: [Cr, C]
//   gate   = G(W2 @ hidden + b2)         W2: [C, Cr], G = hardsigmoid | sigmoid
//   y      = x * gate                    broadcast over H, W
#pragma once

#include "activation.h"
#include "macros.h"

#include <stdint.h>

namespace mnv3 {

// hidden[j] for one sample: relu(b1[j] + sum_c w1[j, c] * pooled[c]).
MNV3_HD float se_hidden_unit(const float* pooled, const float* w1_row, float b1, int64_t C) {
  float acc = b1;
  for (int64_t c = 0; c < C; ++c) acc += w1_row[c] * pooled[c];
  return relu(acc);
}

// gate[c] for one sample: G(b2[c] + sum_j w2[c, j] * hidden[j]).
template <Gate G>
MNV3_HD float se_gate_unit(const float* hidden, const float* w2_row, float b2, int64_t Cr) {
  float acc = b2;
  for (int64_t j = 0; j < Cr; ++j) acc += w2_row[j] * hidden[j];
  return apply_gate<G>(acc);
}

}  // namespace mnv3
