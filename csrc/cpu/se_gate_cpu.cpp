// CPU kernel of mnv3::se_gate.  fp32 only (see pointwise_bias_act_cpu.cpp).
#include "cpu_ops.h"
#include "pointwise_common.h"

#include <vector>

namespace mnv3 {

// mnv3::se_gate: an SE block's gate from its squeeze, G(W2 relu(W1 pooled + b1)
// + b2), its two fc layers on the GEMM tiles (run_pointwise: matrix-vector walks at batch 1)
// in one op call (three before: two fc calls and the gate, ~4 us of dispatch
// each, paid by every SE block of the network).
Tensor se_gate_cpu(const Tensor& pooled, const Tensor& w1, const Tensor& b1, const Tensor& w2, const Tensor& b2,
                   const std::string& gate) {
  STD_TORCH_CHECK(pooled.is_cpu(), "mnv3::se_gate: pooled must be a CPU tensor");
  STD_TORCH_CHECK(pooled.scalar_type() == ScalarType::Float && is_row_major(pooled),
                  "mnv3::se_gate: pooled must be a row-major float32 [N, C] matrix");
  const Gate kind = parse_gate(gate);
  const int64_t N = pooled.size(0), C = pooled.size(1);
  const int64_t Cr = check_pointwise_weights(pooled, w1, b1, "w1", "b1");
  Tensor hidden = empty_2d(N, Cr, ScalarType::Float, pooled);
  STD_TORCH_CHECK(check_pointwise_weights(hidden, w2, b2, "w2", "b2") == C, "w2 and b2 must have C = ", C,
                  " output channels");
  Tensor y = empty_2d(N, C, ScalarType::Float, pooled);
  if (N == 0 || C == 0) return y;
  // One FC layer of the gate: y[N, Nc] = act(x[N, K] @ w.T + b), on the GEMM tiles.
  auto fc = [&](const float* x, const Tensor& w, const Tensor& b, int64_t K, int64_t Nc, float* dst, Activation act) {
    std::vector<float> w_storage, b_storage;
    PwProblem p{};
    p.x = x;
    p.w = weight_panels(w, K, Nc, w_storage);
    p.bias = vector_as_float<float>(b, b_storage);
    p.y = dst;
    p.ldy = Nc;
    p.M = N;
    p.K = K;
    p.Nc = Nc;
    p.rows_per_sample = 1;
    run_pointwise(p, act);
  };
  float* h = static_cast<float*>(hidden.mutable_data_ptr());
  float* out = static_cast<float*>(y.mutable_data_ptr());
  if (Cr > 0) fc(static_cast<const float*>(pooled.const_data_ptr()), w1, b1, C, Cr, h, Activation::ReLU);
  fc(h, w2, b2, Cr, C, out, Activation::Identity);
  dispatch_gate(kind, [&](auto gate_tag) {
    constexpr Gate G = decltype(gate_tag)::value;
    for (int64_t i = 0; i < N * C; ++i) out[i] = apply_gate<G>(out[i]);
  });
  return y;
}

}  // namespace mnv3

STABLE_TORCH_LIBRARY_IMPL(mnv3, CPU, m) {
  m.impl("se_gate", TORCH_BOX(&mnv3::se_gate_cpu));
}
