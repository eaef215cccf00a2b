// The CPU kernels of the mnv3 ops, for the plan executor (mnv3::run_plan,
// run_plan_cpu.cpp) to call without a dispatch.  Each is defined, and
// registered as its op's CPU kernel, in its own file: <op>_cpu.cpp.
#pragma once

#include "../common/op_glue.h"

#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace mnv3 {

// mnv3::conv_bias_act (conv_bias_act_cpu.cpp).
Tensor conv_bias_act_cpu(const Tensor& x, const Tensor& weight, const Tensor& bias, const std::vector<int64_t>& stride,
                         const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation,
                         const std::string& activation);

// mnv3::dwconv_bias_act (dwconv_bias_act_cpu.cpp).
std::tuple<Tensor, Tensor> dwconv_bias_act_cpu(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                               const std::vector<int64_t>& stride,
                                               const std::vector<int64_t>& padding,
                                               const std::vector<int64_t>& dilation,
                                               const std::string& activation, bool with_mean);

// mnv3::pointwise_bias_act (pointwise_bias_act_cpu.cpp).
Tensor pointwise_bias_act_cpu(const Tensor& x, const Tensor& weight, const Tensor& bias,
                              const std::string& activation, std::optional<Tensor> scale,
                              std::optional<Tensor> residual);

// mnv3::pointwise_dwconv (pointwise_dwconv_cpu.cpp).
std::tuple<Tensor, Tensor> pointwise_dwconv_cpu(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                                const std::string& activation, const Tensor& dw_weight,
                                                const Tensor& dw_bias, const std::vector<int64_t>& stride,
                                                const std::vector<int64_t>& padding,
                                                const std::vector<int64_t>& dilation,
                                                const std::string& dw_activation, bool with_mean);

// pointwise_bias_act(pointwise_dwconv(x, ...).y, proj_weight, proj_bias,
// proj_activation, residual=residual): an inverted residual block without SE
// in one pass where the ring walk runs (the plan's pwdwpw step; no op of its
// own).  pointwise_dwconv_cpu.cpp.
Tensor pointwise_dwconv_project_cpu(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                    const std::string& activation, const Tensor& dw_weight, const Tensor& dw_bias,
                                    const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
                                    const std::vector<int64_t>& dilation, const std::string& dw_activation,
                                    const Tensor& proj_weight, const Tensor& proj_bias,
                                    const std::string& proj_activation, std::optional<Tensor> residual);

// mnv3::se_gate (se_gate_cpu.cpp).
Tensor se_gate_cpu(const Tensor& pooled, const Tensor& w1, const Tensor& b1, const Tensor& w2, const Tensor& b2,
                   const std::string& gate);

// mnv3::se_excite_scale (se_excite_scale_cpu.cpp).
Tensor se_excite_scale_cpu(const Tensor& x, const Tensor& pooled, const Tensor& w1, const Tensor& b1,
                           const Tensor& w2, const Tensor& b2, const std::string& gate);

}  // namespace mnv3
