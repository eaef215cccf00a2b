// Activations and SE gates, one definition for every kernel (CPU and CUDA).
// NaN propagates as in PyTorch: comparisons are written so that a NaN input
// falls through unchanged.
#pragma once

#include "macros.h"
// enum class Activation / Gate and their names (kActivationNames, kGateNames):
// generated from mnv3_kernels/vocabulary.py by scripts/generate_headers.py
// (setup.py writes it into build/generated/, on every extension's include path).
#include "mnv3_generated.h"

#include <math.h>

#include <type_traits>

namespace mnv3 {

// Templates over the value type F: float everywhere, and on the CPU also a
// GCC vector of floats (csrc/cpu/kernels/vec.h), lane by lane the same formula.
template <typename F>
MNV3_HD F relu(F v) { return v < 0.f ? F{} + 0.f : v; }

template <typename F>
MNV3_HD F relu6(F v) { return v < 0.f ? F{} + 0.f : (v > 6.f ? F{} + 6.f : v); }

template <typename F>
MNV3_HD F hardswish(F v) { return v * relu6(v + 3.f) / 6.f; }

template <typename F>
MNV3_HD F hardsigmoid(F v) { return relu6(v + 3.f) / 6.f; }

MNV3_HD float sigmoid(float v) { return 1.f / (1.f + expf(-v)); }

template <Activation A, typename F>
MNV3_HD F activate(F v) {
  if constexpr (A == Activation::ReLU) {
    return relu(v);
  } else if constexpr (A == Activation::ReLU6) {
    return relu6(v);
  } else if constexpr (A == Activation::HardSwish) {
    return hardswish(v);
  } else {
    return v;
  }
}

// activate<A> for a runtime activation: a branch per value (for epilogues that
// run once per output, where a kernel per activation would not pay).
MNV3_HD float activate(Activation act, float v) {
  switch (act) {
    case Activation::ReLU:
      return activate<Activation::ReLU>(v);
    case Activation::ReLU6:
      return activate<Activation::ReLU6>(v);
    case Activation::HardSwish:
      return activate<Activation::HardSwish>(v);
    default:
      return v;
  }
}

template <Gate G>
MNV3_HD float apply_gate(float v) {
  if constexpr (G == Gate::Sigmoid) {
    return sigmoid(v);
  } else {
    return hardsigmoid(v);
  }
}

// activate<>, apply_gate<> and the dispatchers below name every member: a name
// added to mnv3_kernels/vocabulary.py stops the build here until they handle it.
static_assert(kActivationCount == 4, "activation.h handles identity, relu, relu6, hardswish only");
static_assert(kGateCount == 2, "activation.h handles hardsigmoid and sigmoid only");

// Calls fn(std::integral_constant<Activation, A>{}) for the runtime value.
template <typename Fn>
void dispatch_activation(Activation act, Fn&& fn) {
  switch (act) {
    case Activation::Identity:
      fn(std::integral_constant<Activation, Activation::Identity>{});
      break;
    case Activation::ReLU:
      fn(std::integral_constant<Activation, Activation::ReLU>{});
      break;
    case Activation::ReLU6:
      fn(std::integral_constant<Activation, Activation::ReLU6>{});
      break;
    case Activation::HardSwish:
      fn(std::integral_constant<Activation, Activation::HardSwish>{});
      break;
  }
}

template <typename Fn>
void dispatch_gate(Gate gate, Fn&& fn) {
  if (gate == Gate::Sigmoid) {
    fn(std::integral_constant<Gate, Gate::Sigmoid>{});
  } else {
    fn(std::integral_constant<Gate, Gate::HardSigmoid>{});
  }
}

}  // namespace mnv3
