// Host-side glue shared by the CPU and CUDA op implementations: argument
// checks, output allocation and dtype dispatch on the LibTorch stable ABI.
//
// The Python layer (mnv3_kernels/ops.py) validates arguments first and
// raises errors that name the argument; the checks here repeat the ones a
// kernel's memory safety depends on, so a direct torch.ops.mnv3.* call with
// bad input raises instead of reading out of bounds.
#pragma once

#include "activation.h"
#include "dwconv.h"

#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <algorithm>
#include <initializer_list>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace mnv3 {

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

// The index of `name` in names[0 .. count-1] (the generated vocabulary tables);
// raises, listing the valid names, when it is none of them.
inline int vocabulary_index(const char* what, const char* const* names, int count, const std::string& name) {
  for (int i = 0; i < count; ++i)
    if (name == names[i]) return i;
  std::string valid;
  for (int i = 0; i < count; ++i) valid += (i == 0 ? "" : ", ") + std::string(names[i]);
  STD_TORCH_CHECK(false, what, " must be one of ", valid, "; got '", name, "'");
  return 0;
}

inline Activation parse_activation(const std::string& name) {
  return static_cast<Activation>(vocabulary_index("activation", kActivationNames, kActivationCount, name));
}

inline Gate parse_gate(const std::string& name) {
  return static_cast<Gate>(vocabulary_index("gate", kGateNames, kGateCount, name));
}

// True when a 4-d tensor is densely packed in channels-last order with
// exactly the strides torch.empty(..., memory_format=torch.channels_last)
// gives.  ops.py (_is_nhwc_dense) states the same rule for the fake kernels.
inline bool is_nhwc_dense(const Tensor& t) {
  if (t.dim() != 4) return false;
  const int64_t C = t.size(1), H = t.size(2), W = t.size(3);
  return t.stride(1) == 1 && t.stride(3) == C && t.stride(2) == W * C &&
         t.stride(0) == H * W * C;
}

// Lends tensors to the ops a plan executor calls (run_plan_cpu's activation
// pool): while one is installed on a thread (TensorLender::Scope), every
// empty_strided on that thread asks it first and tells it of each tensor it
// then allocates.  None is installed outside run_plan_cpu, so a direct op call
// always gets a fresh tensor.
class TensorLender {
 public:
  virtual ~TensorLender() = default;
  // A tensor of exactly these sizes, strides, dtype and device, or none.
  virtual std::optional<Tensor> lend(std::initializer_list<int64_t> sizes, std::initializer_list<int64_t> strides,
                                     int32_t dtype, int32_t device_type, int32_t device_index) = 0;
  // t was allocated while this lender was installed.
  virtual void made(const Tensor& t) = 0;

  static TensorLender*& current() {
    static thread_local TensorLender* lender = nullptr;
    return lender;
  }
  // Installs a lender on this thread for a scope (restoring the previous one).
  class Scope {
   public:
    explicit Scope(TensorLender* lender) : previous_(current()) { current() = lender; }
    ~Scope() { current() = previous_; }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    TensorLender* previous_;
  };
};

// A new uninitialized tensor with these sizes and strides, on like's device:
// one call into the C shim (aoti_torch_empty_strided), or a tensor the
// thread's TensorLender lends.  torch::stable::empty
// goes through the dispatcher by operator name instead, a schema lookup and a
// boxed call per tensor (measured on the 2-core CPU: a fused step spent ~5 us
// allocating its output and SE mean that way, ~45 steps a forward).
inline Tensor empty_strided(std::initializer_list<int64_t> sizes, std::initializer_list<int64_t> strides,
                            ScalarType dtype, const Tensor& like) {
  STD_TORCH_CHECK(sizes.size() == strides.size(), "mnv3: empty_strided needs one stride per size");
  int32_t code = 0;
  switch (dtype) {
    case ScalarType::Float: code = aoti_torch_dtype_float32(); break;
    case ScalarType::Half: code = aoti_torch_dtype_float16(); break;
    case ScalarType::BFloat16: code = aoti_torch_dtype_bfloat16(); break;
    default: STD_TORCH_CHECK(false, "mnv3: outputs are float32, float16 or bfloat16");
  }
  int32_t device_type = 0, device_index = 0;
  TORCH_ERROR_CODE_CHECK(aoti_torch_get_device_type(like.get(), &device_type));
  TORCH_ERROR_CODE_CHECK(aoti_torch_get_device_index(like.get(), &device_index));
  TensorLender* lender = TensorLender::current();
  if (lender != nullptr) {
    std::optional<Tensor> lent = lender->lend(sizes, strides, code, device_type, device_index);
    if (lent.has_value()) return *std::move(lent);
  }
  AtenTensorHandle handle = nullptr;
  TORCH_ERROR_CODE_CHECK(aoti_torch_empty_strided(static_cast<int64_t>(sizes.size()), sizes.begin(),
                                                  strides.begin(), code, device_type, device_index, &handle));
  Tensor t(handle);
  if (lender != nullptr) lender->made(t);
  return t;
}

// The output of an op whose result has the layout of its input: channels-last
// when the input is channels-last dense (the strides is_nhwc_dense asks for,
// which torch.empty(..., memory_format=torch.channels_last) gives), else
// contiguous NCHW (torch's contiguous strides: a size-0 dim counts as 1).
inline Tensor empty_4d(int64_t N, int64_t C, int64_t H, int64_t W, bool nhwc, ScalarType dtype,
                       const Tensor& like) {
  if (nhwc) return empty_strided({N, C, H, W}, {H * W * C, 1, W * C, C}, dtype, like);
  const int64_t w = std::max<int64_t>(W, 1), hw = w * std::max<int64_t>(H, 1);
  return empty_strided({N, C, H, W}, {hw * std::max<int64_t>(C, 1), hw, w, 1}, dtype, like);
}

// A contiguous [rows, cols] tensor.
inline Tensor empty_2d(int64_t rows, int64_t cols, ScalarType dtype, const Tensor& like) {
  return empty_strided({rows, cols}, {std::max<int64_t>(cols, 1), 1}, dtype, like);
}

// An empty [0] tensor: the SE mean output an op was not asked for.
inline Tensor empty_none(ScalarType dtype, const Tensor& like) { return empty_strided({0}, {1}, dtype, like); }

inline bool is_supported_dtype(ScalarType t) {
  return t == ScalarType::Float || t == ScalarType::Half || t == ScalarType::BFloat16;
}

inline void check_same_device(const Tensor& a, const char* a_name, const Tensor& b,
                              const char* b_name) {
  STD_TORCH_CHECK(a.get_device_index() == b.get_device_index() && a.is_cuda() == b.is_cuda(),
                  b_name, " must be on the same device as ", a_name);
}

inline bool is_row_major(const Tensor& t) { return t.dim() == 2 && t.stride(1) == 1 && t.stride(0) == t.size(1); }

// mnv3::pointwise_bias_act's operands beside the weights, checked the same way
// by its CPU and CUDA kernels: x channels-last dense 4-d or row-major 2-d;
// scale a row-major float32 [N, Cin]; residual y's shape, layout and dtype.
inline void check_pointwise_x(const Tensor& x) {
  STD_TORCH_CHECK((x.dim() == 4 && is_nhwc_dense(x)) || is_row_major(x),
                  "mnv3::pointwise_bias_act: x must be a channels-last dense 4-d tensor or a row-major 2-d one");
}

inline void check_pointwise_scale(const Tensor& x, const Tensor& scale) {
  const int64_t samples = x.size(0), K = x.size(1);
  STD_TORCH_CHECK(is_row_major(scale) && scale.size(0) == samples && scale.size(1) == K &&
                      scale.scalar_type() == ScalarType::Float,
                  "scale must be a row-major float32 [N, Cin] = [", samples, ", ", K, "] matrix");
  check_same_device(x, "x", scale, "scale");
}

inline void check_pointwise_residual(const Tensor& x, const Tensor& y, const Tensor& residual) {
  bool same_shape = residual.dim() == y.dim();
  for (int64_t d = 0; same_shape && d < y.dim(); ++d) same_shape = residual.size(d) == y.size(d);
  STD_TORCH_CHECK(same_shape && residual.scalar_type() == y.scalar_type() &&
                      (y.dim() == 4 ? is_nhwc_dense(residual) : is_row_major(residual)),
                  "residual must be a tensor of the output's shape, layout and dtype");
  check_same_device(x, "x", residual, "residual");
}

// The plain [Cout, Cin] weight and [Cout] bias of a CUDA 1x1 conv over x's
// Cin channels (pointwise_bias_act, pointwise_dwconv's expand), of x's dtype
// and device: the CUDA kernels read no panels.  Returns Cout.
inline int64_t check_plain_pointwise_weights(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  const int64_t K = x.size(1);
  STD_TORCH_CHECK(weight.dim() == 2 && weight.size(1) == K && weight.scalar_type() == x.scalar_type(),
                  "weight must be a [Cout, Cin] matrix with Cin = ", K,
                  " and x's dtype (the CUDA kernel reads no panels: pass the plain weight)");
  const int64_t Nc = weight.size(0);
  STD_TORCH_CHECK(bias.dim() == 1 && bias.size(0) == Nc && bias.scalar_type() == x.scalar_type(),
                  "bias must be a [Cout] vector with Cout = ", Nc, " and x's dtype");
  check_same_device(x, "x", weight, "weight");
  check_same_device(x, "x", bias, "bias");
  return Nc;
}

// The geometry of a convolution (kernel kh x kw) on an N x C x H x W input,
// checked: positive kernel, stride and dilation, non-negative padding, a
// non-empty output.
inline DwGeometry conv_geometry(int64_t N, int64_t C, int64_t H, int64_t W, int64_t kh, int64_t kw,
                                const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
                                const std::vector<int64_t>& dilation) {
  STD_TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
                  "stride, padding and dilation must have 2 elements each");
  DwGeometry g{};
  g.N = N;
  g.C = C;
  g.H = H;
  g.W = W;
  g.kh = kh;
  g.kw = kw;
  g.sh = stride[0];
  g.sw = stride[1];
  g.ph = padding[0];
  g.pw = padding[1];
  g.dh = dilation[0];
  g.dw = dilation[1];
  STD_TORCH_CHECK(g.kh >= 1 && g.kw >= 1, "kernel size must be positive");
  STD_TORCH_CHECK(g.sh >= 1 && g.sw >= 1, "stride must be positive");
  STD_TORCH_CHECK(g.dh >= 1 && g.dw >= 1, "dilation must be positive");
  STD_TORCH_CHECK(g.ph >= 0 && g.pw >= 0, "padding must be non-negative");
  g.OH = conv_out_size(g.H, g.kh, g.sh, g.ph, g.dh);
  g.OW = conv_out_size(g.W, g.kw, g.sw, g.pw, g.dw);
  STD_TORCH_CHECK(g.OH >= 1 && g.OW >= 1, "the output would be empty: input ", g.H, "x", g.W,
                  " is smaller than the dilated kernel");
  return g;
}

// The geometry of a depthwise conv over an [N, C, H, W] input, after checking
// its filter and bias shapes and its conv arguments (the names are the op's
// argument names, for the error messages).
inline DwGeometry dw_geometry(int64_t N, int64_t C, int64_t H, int64_t W, const Tensor& weight,
                              const Tensor& bias, const std::vector<int64_t>& stride,
                              const std::vector<int64_t>& padding,
                              const std::vector<int64_t>& dilation,
                              const char* weight_name = "weight", const char* bias_name = "bias") {
  STD_TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
                  "stride, padding and dilation must have 2 elements each");
  STD_TORCH_CHECK(weight.dim() == 4 && weight.size(0) == C && weight.size(1) == 1, weight_name,
                  " must have shape [C, 1, kh, kw] with C = ", C);
  STD_TORCH_CHECK(bias.dim() == 1 && bias.size(0) == C, bias_name, " must have shape [C] with C = ", C);
  return conv_geometry(N, C, H, W, weight.size(2), weight.size(3), stride, padding, dilation);
}

// Validates the arguments of mnv3::dwconv_bias_act and returns its geometry.
inline DwGeometry check_dwconv_args(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                    const std::vector<int64_t>& stride,
                                    const std::vector<int64_t>& padding,
                                    const std::vector<int64_t>& dilation) {
  STD_TORCH_CHECK(x.dim() == 4, "x must be a 4-d tensor [N, C, H, W], got ", x.dim(), " dims");
  STD_TORCH_CHECK(is_supported_dtype(x.scalar_type()), "x must be float32, float16 or bfloat16");
  STD_TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "weight must have the dtype of x");
  STD_TORCH_CHECK(bias.scalar_type() == x.scalar_type(), "bias must have the dtype of x");
  check_same_device(x, "x", weight, "weight");
  check_same_device(x, "x", bias, "bias");
  return dw_geometry(x.size(0), x.size(1), x.size(2), x.size(3), weight, bias, stride, padding, dilation);
}

// Validates the arguments of mnv3::se_excite_scale; returns the squeeze width Cr.
// An SE block's fc weights for C channels (w1 [Cr, C], b1 [Cr], w2 [C, Cr],
// b2 [C]), all of `dtype` (the dtype of `of`, named in the error) and on the
// device of `like`; returns Cr.
inline int64_t check_se_weights(int64_t C, ScalarType dtype, const char* of, const Tensor& like, const char* like_name,
                                const Tensor& w1, const Tensor& b1, const Tensor& w2, const Tensor& b2) {
  STD_TORCH_CHECK(w1.dim() == 2 && w1.size(1) == C, "w1 must have shape [Cr, C] with C = ", C);
  const int64_t Cr = w1.size(0);
  STD_TORCH_CHECK(b1.dim() == 1 && b1.size(0) == Cr, "b1 must have shape [Cr] with Cr = ", Cr);
  STD_TORCH_CHECK(w2.dim() == 2 && w2.size(0) == C && w2.size(1) == Cr,
                  "w2 must have shape [C, Cr] = [", C, ", ", Cr, "]");
  STD_TORCH_CHECK(b2.dim() == 1 && b2.size(0) == C, "b2 must have shape [C] with C = ", C);
  for (const Tensor* t : {&w1, &b1, &w2, &b2}) {
    STD_TORCH_CHECK(t->scalar_type() == dtype, "SE weights must have the dtype of ", of);
  }
  check_same_device(like, like_name, w1, "w1");
  check_same_device(like, like_name, b1, "b1");
  check_same_device(like, like_name, w2, "w2");
  check_same_device(like, like_name, b2, "b2");
  return Cr;
}

inline int64_t check_se_args(const Tensor& x, const Tensor& pooled, const Tensor& w1,
                             const Tensor& b1, const Tensor& w2, const Tensor& b2) {
  STD_TORCH_CHECK(x.dim() == 4, "x must be a 4-d tensor [N, C, H, W], got ", x.dim(), " dims");
  STD_TORCH_CHECK(is_supported_dtype(x.scalar_type()), "x must be float32, float16 or bfloat16");
  const int64_t N = x.size(0), C = x.size(1);
  STD_TORCH_CHECK(pooled.dim() == 2 && pooled.size(0) == N && pooled.size(1) == C,
                  "pooled must have shape [N, C] = [", N, ", ", C, "]");
  STD_TORCH_CHECK(pooled.scalar_type() == ScalarType::Float || pooled.scalar_type() == x.scalar_type(),
                  "pooled must be float32 or have the dtype of x");
  check_same_device(x, "x", pooled, "pooled");
  return check_se_weights(C, x.scalar_type(), "x", x, "x", w1, b1, w2, b2);
}

// Calls fn(T{}) with T the C++ element type of `dtype` (float, Half, BFloat16).
template <typename Fn>
void dispatch_float_types(ScalarType dtype, Fn&& fn) {
  switch (dtype) {
    case ScalarType::Float:
      fn(float{});
      break;
    case ScalarType::Half:
      fn(c10::Half{});
      break;
    case ScalarType::BFloat16:
      fn(c10::BFloat16{});
      break;
    default:
      STD_TORCH_CHECK(false, "unsupported dtype: expected float32, float16 or bfloat16");
  }
}

}  // namespace mnv3
