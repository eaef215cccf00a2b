// CPU ops on the GEMM register tiles (kernels/gemm.cpp): mnv3::pointwise_bias_act
// (a 1x1 conv or Linear with bias, activation, SE scale and residual fused),
// mnv3::se_gate, mnv3::pointwise_dwconv (an inverted residual block's expand
// 1x1 conv + depthwise conv in one pass), mnv3::conv_bias_act (the dense
// stem), and mnv3::run_plan (a whole MobileNetV3 forward).  Here: argument
// checks, weight packing, allocation and the split between threads; the
// arithmetic runs on the vector ISA level's kernels (cpu_isa.h).  fp32 only:
// these ops back the fp32 CPU fast path; other dtypes run the reference.
#include "cpu_isa.h"
#include "cpu_utils.h"

#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <optional>
#include <vector>

namespace mnv3 {
namespace {

// p on the register tiles (M > 1) or the matrix-vector walk (M = 1), in parallel.
void run_pointwise(const PwProblem& p, Activation act) {
  const CpuKernels& k = cpu_kernels();
  const int64_t panels = (p.Nc + kPanel - 1) / kPanel, K = std::max<int64_t>(p.K, 1);
  if (p.M == 1) {  // a matrix-vector product: stream the weight panels
    const int64_t blocks = (p.Nc + k.gemv_columns - 1) / k.gemv_columns;
    torch::stable::parallel_for(0, blocks, grain_for(k.gemv_columns * K),
                                [&](int64_t begin, int64_t end) { k.pointwise_gemv(p, act, begin, end); });
    return;
  }
  const int64_t tasks = RowBlocks(p.M).count * panels;
  torch::stable::parallel_for(0, tasks, grain_for(kGemmBlockRows * kPanel * K), [&](int64_t begin, int64_t end) {
    std::vector<float> scaled(p.scale != nullptr ? kGemmBlockRows * p.K : 0);
    k.pointwise_tiles(p, act, scaled.data(), begin, end, false);
  });
}

// Checks the weight of a 1x1 conv on x's channels (a [Cout, Cin] matrix, or its
// panels: a contiguous [ceil(Cout/16), Cin, 16] tensor, Cout from the bias) and
// its [Cout] bias; returns Cout.
int64_t check_pointwise_weights(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                const char* wname = "weight", const char* bname = "bias") {
  const int64_t K = x.size(1);
  STD_TORCH_CHECK(weight.scalar_type() == ScalarType::Float && bias.scalar_type() == ScalarType::Float, wname,
                  " and ", bname, " must be float32");
  STD_TORCH_CHECK(bias.dim() == 1, bname, " must be a [Cout] vector");
  const bool panels = weight.dim() == 3;
  const int64_t Nc = panels ? bias.size(0) : weight.size(0);
  if (panels) {
    STD_TORCH_CHECK(weight.size(0) == (Nc + kPanel - 1) / kPanel && weight.size(1) == K &&
                        weight.size(2) == kPanel &&
                        (weight.size(0) * K == 0 ||  // no elements: any strides (torch calls that contiguous)
                         ((weight.size(0) == 1 || weight.stride(0) == K * kPanel) &&
                          (K == 1 || weight.stride(1) == kPanel) && weight.stride(2) == 1)),
                    wname, " given as panels must be a contiguous [ceil(Cout/16), Cin, 16] = [",
                    (Nc + kPanel - 1) / kPanel, ", ", K, ", 16] tensor (layout.pack_pointwise_weight)");
  } else {
    STD_TORCH_CHECK(weight.dim() == 2 && weight.size(1) == K, wname,
                    " must be a float32 [Cout, Cin] matrix with Cin = ", K, " (or its [ceil(Cout/16), Cin, 16] panels)");
    STD_TORCH_CHECK(bias.size(0) == Nc, bname, " must be a float32 [Cout] vector with Cout = ", Nc);
  }
  check_same_device(x, "x", weight, wname);
  check_same_device(x, "x", bias, bname);
  return Nc;
}

// The weight's panels ([ceil(Nc/16)][K][16], zero-padded): the tensor's memory
// when given so, else packed into `storage`.
const float* weight_panels(const Tensor& weight, int64_t K, int64_t Nc, std::vector<float>& storage) {
  const float* w = static_cast<const float*>(weight.const_data_ptr());
  if (weight.dim() == 3) return w;
  storage.assign(static_cast<size_t>((Nc + kPanel - 1) / kPanel * K * kPanel), 0.f);
  const int64_t s0 = weight.stride(0), s1 = weight.stride(1);
  for (int64_t n = 0; n < Nc; ++n)
    for (int64_t k = 0; k < K; ++k) storage[(n / kPanel * K + k) * kPanel + n % kPanel] = w[n * s0 + k * s1];
  return storage.data();
}

bool is_row_major(const Tensor& t) { return t.dim() == 2 && t.stride(1) == 1 && t.stride(0) == t.size(1); }

Tensor pointwise_bias_act_cpu(const Tensor& x, const Tensor& weight, const Tensor& bias,
                              const std::string& activation, std::optional<Tensor> scale,
                              std::optional<Tensor> residual) {
  STD_TORCH_CHECK(x.is_cpu(), "mnv3::pointwise_bias_act: x must be a CPU tensor");
  STD_TORCH_CHECK(x.scalar_type() == ScalarType::Float, "mnv3::pointwise_bias_act: x must be float32");
  STD_TORCH_CHECK((x.dim() == 4 && is_nhwc_dense(x)) || is_row_major(x),
                  "mnv3::pointwise_bias_act: x must be a channels-last dense 4-d tensor or a row-major 2-d one");
  const Activation act = parse_activation(activation);
  const int64_t K = x.size(1);
  const int64_t Nc = check_pointwise_weights(x, weight, bias);
  const int64_t samples = x.size(0);
  const int64_t rows_per_sample = x.dim() == 4 ? x.size(2) * x.size(3) : 1;
  const int64_t M = samples * rows_per_sample;
  if (scale.has_value()) {
    const Tensor& s = *scale;
    STD_TORCH_CHECK(is_row_major(s) && s.size(0) == samples && s.size(1) == K && s.scalar_type() == ScalarType::Float,
                    "scale must be a row-major float32 [N, Cin] = [", samples, ", ", K, "] matrix");
    check_same_device(x, "x", s, "scale");
  }
  Tensor y = x.dim() == 4 ? empty_4d(samples, Nc, x.size(2), x.size(3), true, ScalarType::Float, x)
                          : empty_2d(M, Nc, ScalarType::Float, x);
  if (residual.has_value()) {
    const Tensor& r = *residual;
    bool same_shape = r.dim() == y.dim();
    for (int64_t d = 0; same_shape && d < y.dim(); ++d) same_shape = r.size(d) == y.size(d);
    STD_TORCH_CHECK(same_shape && r.scalar_type() == ScalarType::Float &&
                        (y.dim() == 4 ? is_nhwc_dense(r) : is_row_major(r)),
                    "residual must be a float32 tensor of the output's shape and layout");
    check_same_device(x, "x", r, "residual");
  }
  if (M == 0 || Nc == 0) return y;

  std::vector<float> w_storage, b_storage;
  PwProblem p{};
  p.x = static_cast<const float*>(x.const_data_ptr());
  p.w = weight_panels(weight, K, Nc, w_storage);
  p.bias = vector_as_float<float>(bias, b_storage);
  p.scale = scale.has_value() ? static_cast<const float*>(scale->const_data_ptr()) : nullptr;
  p.res = residual.has_value() ? static_cast<const float*>(residual->const_data_ptr()) : nullptr;
  p.y = static_cast<float*>(y.mutable_data_ptr());
  p.ldy = Nc;
  p.M = M;
  p.K = K;
  p.Nc = Nc;
  p.rows_per_sample = rows_per_sample;

  run_pointwise(p, act);
  return y;
}

// ---------------------------------------------------------------------------
// mnv3::se_gate: an SE block's gate from its squeeze, G(W2 relu(W1 pooled + b1)
// + b2), its two fc layers on the GEMM above (matrix-vector walks at batch 1)
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
  std::vector<float> w1_storage, w2_storage, b1_storage, b2_storage;
  PwProblem p{};
  p.x = static_cast<const float*>(pooled.const_data_ptr());
  p.w = weight_panels(w1, C, Cr, w1_storage);
  p.bias = vector_as_float<float>(b1, b1_storage);
  p.y = static_cast<float*>(hidden.mutable_data_ptr());
  p.ldy = Cr;
  p.M = N;
  p.K = C;
  p.Nc = Cr;
  p.rows_per_sample = 1;
  if (Cr > 0) run_pointwise(p, Activation::ReLU);
  p.x = p.y;
  p.w = weight_panels(w2, Cr, C, w2_storage);
  p.bias = vector_as_float<float>(b2, b2_storage);
  p.y = static_cast<float*>(y.mutable_data_ptr());
  p.ldy = C;
  p.K = Cr;
  p.Nc = C;
  run_pointwise(p, Activation::Identity);
  float* out = p.y;
  dispatch_gate(kind, [&](auto gate_tag) {
    constexpr Gate G = decltype(gate_tag)::value;
    for (int64_t i = 0; i < N * C; ++i) out[i] = apply_gate<G>(out[i]);
  });
  return y;
}

// ---------------------------------------------------------------------------
// mnv3::pointwise_dwconv: the expand 1x1 conv and the depthwise conv of an
// inverted residual block in one pass, so the expanded activation (the
// block's widest tensor: 3.2 MB at 112x112x64 in MobileNetV3-Large) never
// goes to memory.  The expanded rows are zero-padded left and right and laid
// out in 16-channel blocks, so the depthwise tiles (kernels/dw_rows.cpp) have no borders
// and read their pixels at fixed offsets.  Images of width >= kRingMinWidth:
// a thread walks a band of output rows and keeps the expanded input rows it
// needs in a ring of (K-1)*dilation+1 rows; a row is computed (pw_rows) once
// per band, the first rows of a band again by the neighbouring band (the
// halo).  Smaller images: see pointwise_dwconv_cpu.

// From this input width on, pointwise_dwconv walks rows with a ring of
// expanded rows; below it, it expands the whole image first (measured on 2
// cores: a row of 7 or 14 pixels fills few GEMM register rows, and two threads
// would recompute a large share of halo rows).
constexpr int64_t kRingMinWidth = 56;

std::tuple<Tensor, Tensor> pointwise_dwconv_cpu(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                                const std::string& activation, const Tensor& dw_weight,
                                                const Tensor& dw_bias, const std::vector<int64_t>& stride,
                                                const std::vector<int64_t>& padding,
                                                const std::vector<int64_t>& dilation,
                                                const std::string& dw_activation, bool with_mean) {
  STD_TORCH_CHECK(x.is_cpu(), "mnv3::pointwise_dwconv: x must be a CPU tensor");
  STD_TORCH_CHECK(x.scalar_type() == ScalarType::Float && x.dim() == 4 && is_nhwc_dense(x),
                  "mnv3::pointwise_dwconv: x must be a float32 channels-last dense 4-d tensor");
  const int64_t Cin = x.size(1);
  const int64_t C = check_pointwise_weights(x, weight, bias);
  STD_TORCH_CHECK(dw_weight.scalar_type() == ScalarType::Float && dw_bias.scalar_type() == ScalarType::Float,
                  "dw_weight and dw_bias must be float32");
  check_same_device(x, "x", dw_weight, "dw_weight");
  check_same_device(x, "x", dw_bias, "dw_bias");
  const DwGeometry g = dw_geometry(x.size(0), C, x.size(2), x.size(3), dw_weight, dw_bias, stride, padding,
                                   dilation, "dw_weight", "dw_bias");
  STD_TORCH_CHECK(g.kh == g.kw && (g.kh - 1) * g.dh + 1 <= kMaxDwSpan,
                  "dw_weight must be a square kernel whose dilated span is at most ", kMaxDwSpan, " rows");
  DwProblem d{};
  static_cast<DwGeometry&>(d) = g;
  d.K = g.kh;
  const Activation act1 = parse_activation(activation);
  d.act = parse_activation(dw_activation);
  d.Cp = (C + kDwBlock - 1) / kDwBlock * kDwBlock;
  d.Wp = std::max(d.W + 2 * d.pw, dw_row_width(d));
  d.zero = zero_floats(d.Wp * kDwBlock);
  Tensor y = empty_4d(d.N, C, d.OH, d.OW, true, ScalarType::Float, x);
  Tensor mean = with_mean ? empty_2d(d.N, C, ScalarType::Float, x)
                          : empty_none(ScalarType::Float, x);
  if (d.N == 0 || C == 0) return {y, mean};

  // Depthwise taps [K*K][Cp] and bias [Cp], channel-padded with zeros: the
  // tensors' memory where they are laid out so already (a tap-major weight,
  // fused_layers.tap_major, with C a multiple of 16), else packed here.
  // (Strides read once: each Tensor accessor is a call through the stable ABI.)
  AlignedFloats wd, bd;
  const float* wsrc = static_cast<const float*>(dw_weight.const_data_ptr());
  const float* bsrc = static_cast<const float*>(dw_bias.const_data_ptr());
  const int64_t ws0 = dw_weight.stride(0), ws2 = dw_weight.stride(2), ws3 = dw_weight.stride(3);
  const int64_t bs0 = dw_bias.stride(0);
  if (C == d.Cp && ws0 == 1 && ws3 == C && ws2 == d.K * C && bs0 == 1) {
    d.w = wsrc;
    d.bias = bsrc;
  } else {
    wd.reset(d.K * d.K * d.Cp, true);
    bd.reset(d.Cp, true);
    float* wp = wd.data();
    for (int64_t kh = 0; kh < d.K; ++kh)
      for (int64_t kw = 0; kw < d.K; ++kw)
        for (int64_t c = 0; c < C; ++c) wp[(kh * d.K + kw) * d.Cp + c] = wsrc[c * ws0 + kh * ws2 + kw * ws3];
    for (int64_t c = 0; c < C; ++c) bd.data()[c] = bsrc[c * bs0];
    d.w = wd.data();
    d.bias = bd.data();
  }
  d.y = static_cast<float*>(y.mutable_data_ptr());
  const AlignedFloats row_sums(with_mean ? d.N * d.OH * d.Cp : 0);  // every (row, block) written
  d.row_sums = with_mean ? row_sums.data() : nullptr;

  std::vector<float> w_storage, b_storage;
  PwProblem pw{};
  pw.x = static_cast<const float*>(x.const_data_ptr());
  pw.w = weight_panels(weight, Cin, C, w_storage);
  pw.bias = vector_as_float<float>(bias, b_storage);
  pw.ldy = kDwBlock;  // the expanded rows in 16-channel blocks (a panel's outputs fill one block)
  pw.M = d.W;
  pw.K = Cin;
  pw.Nc = C;
  pw.rows_per_sample = 1;

  const int64_t R = (d.K - 1) * d.dh + 1;
  const int64_t row_work = d.OW * d.Cp * d.K * d.K + d.W * C * Cin;
  const CpuKernels& k = cpu_kernels();
  if (d.W >= kRingMinWidth) {
    PwProblem ring_pw = pw;
    ring_pw.panel_stride = d.block_stride = R * d.Wp * kDwBlock;
    torch::stable::parallel_for(0, d.N * d.OH, grain_for(row_work), [&](int64_t begin, int64_t end) {
      const AlignedFloats ring(R * d.Wp * d.Cp, true);
      std::vector<float*> out(static_cast<size_t>(d.W));
      int64_t tags[kMaxDwSpan];
      k.pointwise_dw_rows(ring_pw, d, act1, ring.data(), tags, out.data(), begin, end);
    });
  } else {
    // Small images: the expand GEMM over every pixel at once (full register
    // tiles), written into a row-padded copy of the expanded images in
    // 16-channel blocks ([Cp/16][count][H][Wp][16]; each row's left and right
    // padding zeroed by the GEMM, see PwProblem), then the depthwise rows from
    // it, block by block: a thread takes a range of channel blocks and runs
    // both halves on one block before the next (one parallel region; the
    // block it expanded is in its own cache, in L1 for a 7x7 or 14x14 image;
    // measured on 2 threads, 28x28 to 7x7: splitting rows in each half
    // separately cost up to 40 us a layer in the hand-over between them; all
    // of a thread's blocks expanded first outgrew L2 at batch 8: 28x28 40 ->
    // 240, 5x5, 1.64-1.87 -> 1.39-1.60 ms), a
    // zero row standing in above and below the image; samples in groups whose
    // copies fit the kept scratch.  Channels C..Cp of a pixel stay unset: the
    // depthwise loop computes those lanes but never stores them.  (A separate pass zeroing a padded border cost
    // up to 166 KB of single-threaded stores per call, 11x11 around 7x7 x 576.)
    const int64_t plane = d.H * d.Wp;
    const int64_t group = std::max<int64_t>(1, std::min<int64_t>(d.N, kKeptScratchFloats / (plane * d.Cp)));
    const Scratch buffer(group * plane * d.Cp);
    float* padded = buffer.data();
    for (int64_t n0 = 0; n0 < d.N; n0 += group) {
      const int64_t count = std::min(group, d.N - n0);
      PwProblem all = pw;
      all.x = pw.x + n0 * d.H * d.W * Cin;
      all.y = padded;
      all.M = count * d.H * d.W;
      all.out_w = d.W;
      all.Wp = d.Wp;
      all.pw = d.pw;
      all.panel_stride = d.block_stride = count * plane * kDwBlock;
      const int64_t panels = (C + kPanel - 1) / kPanel, rows = count * d.OH;
      torch::stable::parallel_for(0, panels, grain_for(all.M * kPanel * Cin + rows * d.OW * kDwBlock * d.K * d.K),
                                  [&](int64_t begin, int64_t end) {
                                    const int64_t blocks = RowBlocks(all.M).count;
                                    for (int64_t b = begin; b < end; ++b) {
                                      k.pointwise_tiles(all, act1, nullptr, b * blocks, (b + 1) * blocks, true);
                                      k.dw_image_rows(d, padded, n0, rows, b * rows, (b + 1) * rows);
                                    }
                                  });
    }
  }
  if (with_mean)
    mean_from_row_sums(d.row_sums, d.N, d.OH, d.OW, C, d.Cp, static_cast<float*>(mean.mutable_data_ptr()));
  return {y, mean};
}

// ---------------------------------------------------------------------------
// mnv3::conv_bias_act: a dense convolution (groups 1) with bias and activation,
// for layers with few input channels (MobileNetV3's 3x3 stem, 3 -> 16 channels)
// on the same register tiles: tile row i is output pixel (n, oh, ow0 + i), its
// inputs the window's (c, kh, kw) taps, read from x in place through a table of
// per-tap offsets, whatever x's layout (the model's NCHW input needs no
// channels-last copy first).  Pixels whose windows cross the border gather their
// taps, zeros outside, into a small buffer first.

Tensor conv_bias_act_cpu(const Tensor& x, const Tensor& weight, const Tensor& bias, const std::vector<int64_t>& stride,
                         const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation,
                         const std::string& activation) {
  STD_TORCH_CHECK(x.is_cpu(), "mnv3::conv_bias_act: x must be a CPU tensor");
  STD_TORCH_CHECK(x.scalar_type() == ScalarType::Float && x.dim() == 4,
                  "mnv3::conv_bias_act: x must be a float32 4-d tensor [N, C, H, W]");
  const int64_t C = x.size(1);
  STD_TORCH_CHECK(weight.scalar_type() == ScalarType::Float && weight.dim() == 4 && weight.size(1) == C,
                  "weight must be a float32 [Cout, Cin, kh, kw] tensor with Cin = ", C);
  const int64_t Cout = weight.size(0);
  STD_TORCH_CHECK(bias.scalar_type() == ScalarType::Float && bias.dim() == 1 && bias.size(0) == Cout,
                  "bias must be a float32 [Cout] vector with Cout = ", Cout);
  check_same_device(x, "x", weight, "weight");
  check_same_device(x, "x", bias, "bias");
  ConvProblem p{};
  static_cast<DwGeometry&>(p) = conv_geometry(x.size(0), C, x.size(2), x.size(3), weight.size(2), weight.size(3),
                                              stride, padding, dilation);
  p.Cout = Cout;
  const Activation act = parse_activation(activation);
  Tensor y = empty_4d(p.N, p.Cout, p.OH, p.OW, true, ScalarType::Float, x);
  if (p.N == 0 || p.Cout == 0) return y;

  // The weight as panels, taps k = (c * kh + i) * kw + j (weight.flatten(1)'s order),
  // and each tap's offset in x.  (Strides read once: each accessor is a call through
  // the stable ABI.)
  p.Kc = p.C * p.kh * p.kw;
  const int64_t panels = (p.Cout + kPanel - 1) / kPanel;
  std::vector<float> w(static_cast<size_t>(panels * p.Kc * kPanel), 0.f), b_storage;
  std::vector<int64_t> off(static_cast<size_t>(p.Kc));
  const float* wsrc = static_cast<const float*>(weight.const_data_ptr());
  const int64_t w0 = weight.stride(0), w1 = weight.stride(1), w2 = weight.stride(2), w3 = weight.stride(3);
  p.xn = x.stride(0);
  p.xc = x.stride(1);
  p.xh = x.stride(2);
  p.xw = x.stride(3);
  for (int64_t c = 0, k = 0; c < p.C; ++c)
    for (int64_t i = 0; i < p.kh; ++i)
      for (int64_t j = 0; j < p.kw; ++j, ++k) {
        off[k] = c * p.xc + i * p.dh * p.xh + j * p.dw * p.xw;
        for (int64_t o = 0; o < p.Cout; ++o)
          w[(o / kPanel * p.Kc + k) * kPanel + o % kPanel] = wsrc[o * w0 + c * w1 + i * w2 + j * w3];
      }
  p.x = static_cast<const float*>(x.const_data_ptr());
  p.w = w.data();
  p.bias = vector_as_float<float>(bias, b_storage);
  p.y = static_cast<float*>(y.mutable_data_ptr());
  p.off = off.data();
  p.ow_lo = std::min(p.OW, (p.pw + p.sw - 1) / p.sw);
  const int64_t last = p.W - 1 + p.pw - (p.kw - 1) * p.dw;  // the last window start inside x, padded coordinates
  p.ow_hi = std::max(p.ow_lo, last < 0 ? int64_t{0} : std::min(p.OW, last / p.sw + 1));
  const int64_t tasks = p.N * p.OH * panels;
  const CpuKernels& k = cpu_kernels();
  torch::stable::parallel_for(0, tasks, grain_for(p.OW * kPanel * p.Kc), [&](int64_t begin, int64_t end) {
    std::vector<float> gathered(static_cast<size_t>(kGemmBlockRows * p.Kc));
    k.conv_rows(p, act, gathered.data(), begin, end);
  });
  return y;
}

// ---------------------------------------------------------------------------
// mnv3::run_plan: the CPU fast plan of a whole MobileNetV3 forward in one op
// call.  `program` lists the plan's steps (ops.py: PLAN_* codes, then each
// step's tensor indices into `tensors` and its int arguments); each step calls
// the op's CPU kernel above directly.  Per step this saves the Python step, the
// dispatcher and the boxing of a custom op call (~5 us each, measured for a
// tiny pointwise_bias_act; MobileNetV3-Small runs ~45 steps).
enum PlanCode : int64_t { kPlanBlock = 0, kPlanConv = 1, kPlanDw = 2, kPlanPwDw = 3, kPlanGate = 4, kPlanPw = 5,
                          kPlanPool = 6 };

const char* activation_name(int64_t code) {
  static const char* const names[] = {"identity", "relu", "relu6", "hardswish"};
  STD_TORCH_CHECK(code >= 0 && code < 4, "mnv3::run_plan: bad activation code ", code);
  return names[code];
}

const char* gate_name(int64_t code) {
  STD_TORCH_CHECK(code == 0 || code == 1, "mnv3::run_plan: bad gate code ", code);
  return code == 0 ? "hardsigmoid" : "sigmoid";
}

// The spatial mean of a channels-last dense y: [N, C].
Tensor spatial_mean(const Tensor& y) {
  STD_TORCH_CHECK(y.dim() == 4 && is_nhwc_dense(y) && y.scalar_type() == ScalarType::Float,
                  "mnv3::run_plan: the pool step needs a float32 channels-last input");
  const int64_t N = y.size(0), C = y.size(1), HW = y.size(2) * y.size(3);
  Tensor out = empty_2d(N, C, ScalarType::Float, y);
  const float* src = static_cast<const float*>(y.const_data_ptr());
  float* dst = static_cast<float*>(out.mutable_data_ptr());
  const float inv = HW > 0 ? 1.f / static_cast<float>(HW) : 0.f;
  torch::stable::parallel_for(0, N, grain_for(HW * C), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      float* o = dst + n * C;
      std::fill(o, o + C, 0.f);
      for (int64_t p = 0; p < HW; ++p) {
        const float* row = src + (n * HW + p) * C;
        for (int64_t c = 0; c < C; ++c) o[c] += row[c];
      }
      for (int64_t c = 0; c < C; ++c) o[c] *= inv;
    }
  });
  return out;
}

Tensor run_plan_cpu(const Tensor& x, const std::vector<Tensor>& tensors, const std::vector<int64_t>& program) {
  size_t pc = 0;
  auto next = [&]() -> int64_t {
    STD_TORCH_CHECK(pc < program.size(), "mnv3::run_plan: program ends inside a step");
    return program[pc++];
  };
  auto tensor = [&]() -> const Tensor& {
    const int64_t k = next();
    STD_TORCH_CHECK(k >= 0 && k < static_cast<int64_t>(tensors.size()), "mnv3::run_plan: tensor index ", k,
                    " out of range");
    return tensors[static_cast<size_t>(k)];
  };
  auto pair = [&]() -> std::vector<int64_t> {
    const int64_t a = next();
    return {a, next()};
  };
  Tensor y = x, block_input = x, mean = x, gate = x;
  bool have_mean = false, have_gate = false;
  while (pc < program.size()) {
    const int64_t code = next();
    switch (code) {
      case kPlanBlock:
        block_input = y;
        break;
      case kPlanConv: {
        const Tensor& w = tensor();
        const Tensor& b = tensor();
        const std::vector<int64_t> s = pair(), p = pair(), d = pair();
        y = conv_bias_act_cpu(y, w, b, s, p, d, activation_name(next()));
        have_mean = false;
        break;
      }
      case kPlanDw: {
        const Tensor& w = tensor();
        const Tensor& b = tensor();
        const std::vector<int64_t> s = pair(), p = pair(), d = pair();
        const char* act = activation_name(next());
        have_mean = next() != 0;
        std::tie(y, mean) = dwconv_bias_act_cpu_kernel(y, w, b, s, p, d, act, have_mean);
        break;
      }
      case kPlanPwDw: {
        const Tensor& w = tensor();
        const Tensor& b = tensor();
        const char* act = activation_name(next());
        const Tensor& dw_w = tensor();
        const Tensor& dw_b = tensor();
        const std::vector<int64_t> s = pair(), p = pair(), d = pair();
        const char* dw_act = activation_name(next());
        have_mean = next() != 0;
        std::tie(y, mean) = pointwise_dwconv_cpu(y, w, b, act, dw_w, dw_b, s, p, d, dw_act, have_mean);
        break;
      }
      case kPlanGate: {
        const Tensor& w1 = tensor();
        const Tensor& b1 = tensor();
        const Tensor& w2 = tensor();
        const Tensor& b2 = tensor();
        const char* g = gate_name(next());
        STD_TORCH_CHECK(have_mean, "mnv3::run_plan: a gate step needs the squeeze of the step before it");
        gate = se_gate_cpu(mean, w1, b1, w2, b2, g);
        have_gate = true;
        have_mean = false;
        break;
      }
      case kPlanPw: {
        const Tensor& w = tensor();
        const Tensor& b = tensor();
        const char* act = activation_name(next());
        const bool scaled = next() != 0, residual = next() != 0;
        STD_TORCH_CHECK(!scaled || have_gate, "mnv3::run_plan: a scaled step needs a gate step before it");
        y = pointwise_bias_act_cpu(y, w, b, act, scaled ? std::optional<Tensor>(gate) : std::nullopt,
                                   residual ? std::optional<Tensor>(block_input) : std::nullopt);
        have_gate = have_mean = false;
        break;
      }
      case kPlanPool:
        y = spatial_mean(y);
        have_mean = have_gate = false;
        break;
      default:
        STD_TORCH_CHECK(false, "mnv3::run_plan: unknown step code ", code);
    }
  }
  return y;
}

}  // namespace
}  // namespace mnv3

STABLE_TORCH_LIBRARY_IMPL(mnv3, CPU, m) {
  m.impl("pointwise_bias_act", TORCH_BOX(&mnv3::pointwise_bias_act_cpu));
  m.impl("pointwise_dwconv", TORCH_BOX(&mnv3::pointwise_dwconv_cpu));
  m.impl("conv_bias_act", TORCH_BOX(&mnv3::conv_bias_act_cpu));
  m.impl("se_gate", TORCH_BOX(&mnv3::se_gate_cpu));
  m.impl("run_plan", TORCH_BOX(&mnv3::run_plan_cpu));
}
