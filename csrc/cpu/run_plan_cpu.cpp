// CPU kernel of mnv3::run_plan: a compiled plan (mnv3_kernels/plan) in one op
// call.  The program is a register machine over tensor values ("slots"),
// defined by the step table mnv3_kernels/plan/steps.py (its docstring: the
// header, the steps and their operands), which this file reads through the
// generated header (mnv3_generated.h: the step codes, kPlanStepInts); the
// Python interpreter (mnv3_kernels/plan/interpreter.py) is its reference.
// Each step calls its op's CPU kernel (cpu_ops.h) directly (pwdwpw: its two
// ops in one pass, pointwise_dwconv_project_cpu), or, for pool, add, act and
// resize, computes here.  Per step this saves the Python step, the dispatcher
// and the boxing of a custom op call (~5 us each, measured for a tiny
// pointwise_bias_act; MobileNetV3-Small runs ~45 steps).
#include "cpu_isa.h"
#include "cpu_ops.h"
#include "cpu_utils.h"
#include "pointwise_common.h"

#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

namespace mnv3 {
namespace {

// A new uninitialized float32 tensor of t's sizes in the layout the executor
// gives a step's output: channels-last dense when 4-d, row-major when 2-d.
Tensor empty_dense(const Tensor& t) {
  if (t.dim() == 4) return empty_4d(t.size(0), t.size(1), t.size(2), t.size(3), true, ScalarType::Float, t);
  return empty_2d(t.size(0), t.size(1), ScalarType::Float, t);
}

// t as a step reads it, rows of channels: a 4-d t channels-last dense, a 2-d
// t row-major; t itself when it already is (or has another rank), else a
// copy (aten::copy_: the model's NCHW input, a view).
Tensor channels_last_dense(const Tensor& t) {
  if (t.dim() == 4 ? is_nhwc_dense(t) : (t.dim() != 2 || is_row_major(t))) return t;
  STD_TORCH_CHECK(t.scalar_type() == ScalarType::Float, "mnv3::run_plan: the steps read float32 tensors");
  Tensor y = empty_dense(t);
  torch::stable::copy_(y, t);
  return y;
}

// The fp32 spatial mean [N, C] of a float32 4-d x in any layout (pool; se
// without its squeeze), over a channels-last dense x.
Tensor spatial_mean(const Tensor& x) {
  STD_TORCH_CHECK(x.dim() == 4 && x.scalar_type() == ScalarType::Float,
                  "mnv3::run_plan: the spatial mean (pool, se without a squeeze) needs a float32 4-d input");
  const Tensor y = channels_last_dense(x);
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

// Whether t is a float32 tensor of 2 or 4 dims (the elementwise steps' operands).
bool is_float_rows(const Tensor& t) {
  return (t.dim() == 2 || t.dim() == 4) && t.scalar_type() == ScalarType::Float;
}

// y = a + b (add): float32, one shape, 2-d or 4-d.
Tensor add(const Tensor& a_in, const Tensor& b_in) {
  bool same = is_float_rows(a_in) && is_float_rows(b_in) && a_in.dim() == b_in.dim();
  for (int64_t d = 0; same && d < a_in.dim(); ++d) same = a_in.size(d) == b_in.size(d);
  STD_TORCH_CHECK(same, "mnv3::run_plan: the add step needs two float32 tensors of one shape, 2-d or 4-d");
  check_same_device(a_in, "a", b_in, "b");
  const Tensor a = channels_last_dense(a_in), b = channels_last_dense(b_in);
  Tensor y = empty_dense(a);
  const float* ap = static_cast<const float*>(a.const_data_ptr());
  const float* bp = static_cast<const float*>(b.const_data_ptr());
  float* yp = static_cast<float*>(y.mutable_data_ptr());
  torch::stable::parallel_for(0, a.numel(), grain_for(1), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) yp[i] = ap[i] + bp[i];
  });
  return y;
}

// y = act(x) (act): float32, 2-d or 4-d.
Tensor act(const Tensor& x_in, Activation activation) {
  STD_TORCH_CHECK(is_float_rows(x_in), "mnv3::run_plan: the act step needs a float32 tensor, 2-d or 4-d");
  const Tensor x = channels_last_dense(x_in);
  Tensor y = empty_dense(x);
  const float* xp = static_cast<const float*>(x.const_data_ptr());
  float* yp = static_cast<float*>(y.mutable_data_ptr());
  dispatch_activation(activation, [&](auto act_tag) {
    constexpr Activation A = decltype(act_tag)::value;
    torch::stable::parallel_for(0, x.numel(), grain_for(1), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) yp[i] = activate<A>(xp[i]);
    });
  });
  return y;
}

// Bilinear source coordinates along one axis, as aten's upsample_bilinear2d
// computes them (area_pixel_compute_source_index, guard_index_and_lambda):
// output index o reads input indices i0[o] and i0[o] + step[o] with weights
// 1 - l[o] and l[o].
struct LinearAxis {
  std::vector<int64_t> i0, step;
  std::vector<float> l;
  LinearAxis(int64_t in, int64_t out, bool align_corners) : i0(out), step(out), l(out) {
    const float scale = !align_corners ? static_cast<float>(in) / static_cast<float>(out)
                        : out > 1      ? static_cast<float>(in - 1) / static_cast<float>(out - 1)
                                       : 0.f;
    for (int64_t o = 0; o < out; ++o) {
      float src = align_corners ? scale * static_cast<float>(o) : scale * (static_cast<float>(o) + 0.5f) - 0.5f;
      if (src < 0.f) src = 0.f;
      const int64_t i = std::min(static_cast<int64_t>(std::floor(src)), in - 1);
      i0[o] = i;
      step[o] = i < in - 1 ? 1 : 0;
      l[o] = std::min(std::max(src - static_cast<float>(i), 0.f), 1.f);
    }
  }
};

// y = bilinear interpolation of x to OH x OW (resize; F.interpolate's
// mode="bilinear", antialias off), x float32 4-d in any layout, y
// channels-last: rows of output pixels in parallel on the level's kernel
// (kernels/resize.cpp).  Why not aten's kernel: on the channels-last
// 21-channel maps of LR-ASPP's head it measured 725 us for the 224x224 output
// at batch 1, 2 threads (Zen 4), this one 190-290 us at each of the three
// levels (bound by the output's 4.2 MB of stores, not by the vector width).
Tensor resize_bilinear(const Tensor& x_in, int64_t OH, int64_t OW, bool align_corners) {
  STD_TORCH_CHECK(x_in.dim() == 4 && x_in.scalar_type() == ScalarType::Float,
                  "mnv3::run_plan: the resize step needs a float32 4-d x");
  STD_TORCH_CHECK(OH >= 1 && OW >= 1, "mnv3::run_plan: the resize step's output size must be at least 1 x 1, got ",
                  OH, " x ", OW);
  const Tensor x = channels_last_dense(x_in);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  STD_TORCH_CHECK(H >= 1 && W >= 1, "mnv3::run_plan: the resize step needs a non-empty x");
  Tensor y = empty_4d(N, C, OH, OW, true, ScalarType::Float, x);
  if (N == 0 || C == 0) return y;
  const LinearAxis rows(H, OH, align_corners), cols(W, OW, align_corners);
  const ResizeProblem p{static_cast<const float*>(x.const_data_ptr()), static_cast<float*>(y.mutable_data_ptr()),
                        N, C, H, W, OH, OW, rows.i0.data(), rows.step.data(), cols.i0.data(), cols.step.data(),
                        rows.l.data(), cols.l.data()};
  const CpuKernels& k = cpu_kernels();
  torch::stable::parallel_for(0, N * OH, grain_for(OW * C * 4),
                              [&](int64_t begin, int64_t end) { k.resize_rows(p, begin, end); });
  return y;
}

// Reads a program (steps.py: the header, then each step's code and operands in
// the step table's order) and checks it: every slot and tensor index in range,
// every slot read after an input or an earlier step wrote it, every code known,
// and each step exactly kPlanStepInts[code] ints long, as the executor reads it
// (so that the C++ and the table cannot drift apart).
class Decoder {
 public:
  Decoder(const std::vector<int64_t>& program, const std::vector<Tensor>& tensors, size_t n_inputs)
      : p_(program), tensors_(tensors) {
    const int64_t size = static_cast<int64_t>(p_.size());
    STD_TORCH_CHECK(size >= kPlanHeaderFixed, "mnv3::run_plan: the program is shorter than its header");
    n_slots_ = p_[0];
    const int64_t inputs = p_[1], n_outputs = p_[2];
    STD_TORCH_CHECK(n_outputs >= 0 && size >= kPlanHeaderFixed + n_outputs && 0 <= inputs && inputs <= n_slots_,
                    "mnv3::run_plan: the program is shorter than its header");
    for (int64_t i = kPlanHeaderFixed; i < kPlanHeaderFixed + n_outputs; ++i) {
      STD_TORCH_CHECK(p_[i] >= 0 && p_[i] < n_slots_, "mnv3::run_plan: output slot ", p_[i],
                      " is out of range (n_slots ", n_slots_, ")");
      outputs_.push_back(p_[i]);
    }
    STD_TORCH_CHECK(inputs == static_cast<int64_t>(n_inputs), "mnv3::run_plan: the program takes ", inputs,
                    " inputs, got ", n_inputs);
    written_.assign(static_cast<size_t>(n_slots_), false);
    std::fill(written_.begin(), written_.begin() + inputs, true);
    pc_ = kPlanHeaderFixed + n_outputs;
  }

  int64_t n_slots() const { return n_slots_; }
  int64_t step() const { return step_; }
  const std::vector<int64_t>& outputs() const { return outputs_; }
  bool written(int64_t slot) const { return written_[static_cast<size_t>(slot)]; }
  bool done() const { return pc_ == static_cast<int64_t>(p_.size()); }

  // The next step's code, its length checked.
  int64_t begin_step() {
    code_ = p_[static_cast<size_t>(pc_)];
    STD_TORCH_CHECK(code_ >= 0 && code_ < kPlanStepCount, "mnv3::run_plan: unknown step code ", code_);
    STD_TORCH_CHECK(pc_ + 1 + kPlanStepInts[code_] <= static_cast<int64_t>(p_.size()),
                    "mnv3::run_plan: the program ends inside step ", step_, " (", name(), ")");
    end_ = ++pc_ + kPlanStepInts[code_];
    return code_;
  }

  // After the step's operands: checks that it read the table's count, and
  // marks its output slots written (for the steps after it: a step reads its
  // inputs before it writes).
  void end_step() {
    STD_TORCH_CHECK(pc_ == end_, "mnv3::run_plan: the executor read ", pc_ - (end_ - kPlanStepInts[code_]),
                    " operand ints of step ", step_, " (", name(), "), the step table has ", kPlanStepInts[code_],
                    " (csrc/cpu/run_plan_cpu.cpp and mnv3_kernels/plan/steps.py disagree)");
    for (const int64_t s : pending_) written_[static_cast<size_t>(s)] = true;
    step_reads_.push_back(std::move(reads_));
    step_writes_.push_back(std::move(pending_));
    reads_.clear();
    pending_.clear();
    ++step_;
  }

  // The operands, one reader per kind of the step table (steps.INT_COUNT).
  int64_t out() { return wrote(slot(false)); }
  int64_t opt_out() { return wrote(slot(true)); }
  int64_t in() { return read(slot(false)); }
  int64_t opt_in() { return read(slot(true)); }
  const Tensor& tensor() {
    const int64_t k = next();
    STD_TORCH_CHECK(k >= 0 && k < static_cast<int64_t>(tensors_.size()), "mnv3::run_plan: step ", step_, " (",
                    name(), "): tensor index ", k, " is out of range (tensors has ", tensors_.size(), ")");
    return tensors_[static_cast<size_t>(k)];
  }
  std::vector<int64_t> pair() {
    const int64_t first = next();
    return {first, next()};
  }
  Activation act() { return static_cast<Activation>(code("act", kActivationCount)); }
  Gate gate() { return static_cast<Gate>(code("gate", kGateCount)); }
  bool flag() { return code("flag", 2) == 1; }

 private:
  const char* name() const { return kPlanStepNames[code_]; }

  int64_t next() {
    STD_TORCH_CHECK(pc_ < end_, "mnv3::run_plan: the executor reads more operand ints of step ", step_, " (",
                    name(), ") than the step table's ", kPlanStepInts[code_],
                    " (csrc/cpu/run_plan_cpu.cpp and mnv3_kernels/plan/steps.py disagree)");
    return p_[static_cast<size_t>(pc_++)];
  }
  int64_t slot(bool optional) {
    const int64_t s = next();
    STD_TORCH_CHECK((s >= 0 || (optional && s == -1)) && s < n_slots_, "mnv3::run_plan: step ", step_, " (",
                    name(), "): slot ", s, " is out of range (n_slots ", n_slots_, ")");
    return s;
  }
  int64_t wrote(int64_t s) {
    if (s != -1) pending_.push_back(s);
    return s;
  }
  int64_t read(int64_t s) {
    STD_TORCH_CHECK(s == -1 || written(s), "mnv3::run_plan: step ", step_, " (", name(), ") reads slot ", s,
                    " before any step wrote it");
    if (s != -1) reads_.push_back(s);
    return s;
  }
  int64_t code(const char* kind, int64_t count) {
    const int64_t v = next();
    STD_TORCH_CHECK(v >= 0 && v < count, "mnv3::run_plan: step ", step_, " (", name(), "): bad ", kind, " code ", v);
    return v;
  }

  const std::vector<int64_t>& p_;
  const std::vector<Tensor>& tensors_;
  int64_t n_slots_ = 0, pc_ = 0, end_ = 0, code_ = 0, step_ = 0;
  std::vector<int64_t> outputs_, pending_, reads_;
  std::vector<bool> written_;

 public:
  // After a whole pass: per step, the slots whose value no later step (nor the
  // outputs) reads: the executor drops them right after that step, so a forward
  // holds only its live activations and the allocator reuses the dead ones' memory
  // (measured on Large at batch 8: holding them until their slot was rewritten
  // cost ~35%, fresh pages for every large output).
  std::vector<std::vector<int64_t>> dead_after() const {
    std::vector<std::vector<int64_t>> dead(step_reads_.size());
    std::vector<bool> needed(static_cast<size_t>(n_slots_), false);  // needed after the step being looked at
    for (const int64_t s : outputs_) needed[static_cast<size_t>(s)] = true;
    for (size_t i = step_reads_.size(); i-- > 0;) {
      const std::vector<int64_t>& writes = step_writes_[i];
      for (const int64_t s : step_reads_[i]) {
        const bool rewritten = std::find(writes.begin(), writes.end(), s) != writes.end();
        const bool listed = std::find(dead[i].begin(), dead[i].end(), s) != dead[i].end();
        if (!needed[static_cast<size_t>(s)] && !rewritten && !listed) dead[i].push_back(s);
      }
      for (const int64_t s : writes) needed[static_cast<size_t>(s)] = false;
      for (const int64_t s : step_reads_[i]) needed[static_cast<size_t>(s)] = true;
    }
    return dead;
  }

 private:
  std::vector<std::vector<int64_t>> step_reads_, step_writes_;
};

// The executor's activation pool, lent to the ops while a forward runs
// (TensorLender, op_glue.h): a value the forward releases (dead after its last
// read, or overwritten) is kept, and a later output of the same sizes, strides
// and dtype reuses it; between calls the pool keeps what the last call
// released (so a forward's activations stay allocated, as an arena would keep
// them).  Why: released to malloc, the large activations went back to the OS
// at the end of a forward in some processes (whether glibc trims depends on
// everything else the process allocated) and were page-faulted in again by the
// next one: measured, Large at batch 8, 0 to ~3,300 minor faults per forward
// across nine processes of one build, 0 in five with the pool (the tensors a
// model allocates outside run_plan still go through malloc: README, freeze()).
// Only tensors allocated or lent during the call are kept: never the caller's
// inputs, never a returned output, never a value another slot still holds.
class ActivationPool final : public TensorLender {
 public:
  void begin_call() {
    ++call_;
    owned_.clear();
  }
  // Drops what the last call released and this one did not reuse.
  void end_call() {
    free_.erase(std::remove_if(free_.begin(), free_.end(), [&](const Entry& e) { return e.call != call_; }),
                free_.end());
  }

  std::optional<Tensor> lend(std::initializer_list<int64_t> sizes, std::initializer_list<int64_t> strides,
                             int32_t dtype, int32_t device_type, int32_t device_index) override {
    if (sizes.size() > kMaxDim) return std::nullopt;
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->dtype != dtype || it->device_type != device_type || it->device_index != device_index ||
          it->dim != sizes.size() || !std::equal(sizes.begin(), sizes.end(), it->sizes.begin()) ||
          !std::equal(strides.begin(), strides.end(), it->strides.begin()))
        continue;
      Tensor t = std::move(it->tensor);
      free_.erase(it);
      owned_.push_back(t.const_data_ptr());
      return t;
    }
    return std::nullopt;
  }
  void made(const Tensor& t) override { owned_.push_back(t.const_data_ptr()); }

  // t, just taken out of its slot: kept when this call allocated it and no slot
  // still holds its memory; else dropped.
  void release(Tensor t, const std::vector<std::optional<Tensor>>& slots) {
    const void* data = t.const_data_ptr();
    if (data == nullptr || std::find(owned_.begin(), owned_.end(), data) == owned_.end()) return;
    // (No step today outputs a tensor sharing a slot value's memory; this keeps
    // one that would from being lent while a slot still reads it.)
    for (const std::optional<Tensor>& v : slots)
      if (v.has_value() && v->const_data_ptr() == data) return;
    Entry e{std::move(t)};
    e.dim = static_cast<size_t>(e.tensor.dim());
    if (e.dim > kMaxDim) return;
    for (size_t d = 0; d < e.dim; ++d) {
      e.sizes[d] = e.tensor.size(static_cast<int64_t>(d));
      e.strides[d] = e.tensor.stride(static_cast<int64_t>(d));
    }
    TORCH_ERROR_CODE_CHECK(aoti_torch_get_dtype(e.tensor.get(), &e.dtype));
    TORCH_ERROR_CODE_CHECK(aoti_torch_get_device_type(e.tensor.get(), &e.device_type));
    TORCH_ERROR_CODE_CHECK(aoti_torch_get_device_index(e.tensor.get(), &e.device_index));
    e.call = call_;
    free_.push_back(std::move(e));
  }

 private:
  static constexpr size_t kMaxDim = 4;
  struct Entry {
    Tensor tensor;
    size_t dim = 0;
    std::array<int64_t, kMaxDim> sizes{}, strides{};
    int32_t dtype = 0, device_type = 0, device_index = 0;
    int64_t call = 0;
  };
  std::vector<Entry> free_;
  std::vector<const void*> owned_;  // data of the tensors allocated or lent during this call
  int64_t call_ = 0;
};

const char* name_of(Activation a) { return kActivationNames[static_cast<int>(a)]; }
const char* name_of(Gate g) { return kGateNames[static_cast<int>(g)]; }

}  // namespace

std::vector<Tensor> run_plan_cpu(const std::vector<Tensor>& inputs, const std::vector<Tensor>& tensors,
                                 const std::vector<int64_t>& program) {
  // Two passes over the program with the same reads: the first only checks it
  // (a bad program raises before any kernel runs), the second runs it.
  static_assert(kPlanStepCount == 11, "a step added to mnv3_kernels/plan/steps.py needs its case below");
  std::vector<std::optional<Tensor>> slots;
  std::vector<int64_t> output_slots;
  std::vector<std::vector<int64_t>> dead;  // per step, from the checking pass
  static thread_local ActivationPool pool;  // one per calling thread (the ops allocate on it)
  pool.begin_call();
  const TensorLender::Scope lending(&pool);
  for (const bool run : {false, true}) {
    Decoder d(program, tensors, inputs.size());
    if (run) {
      slots.resize(static_cast<size_t>(d.n_slots()));
      std::copy(inputs.begin(), inputs.end(), slots.begin());
    }
    // get: a slot's value (the decoder checked that a step wrote it); get_opt: an
    // opt_in slot's value as the step reads it, or none (-1); set: a step's output.
    auto get = [&](int64_t s) -> const Tensor& { return *slots[static_cast<size_t>(s)]; };
    auto get_opt = [&](int64_t s) -> std::optional<Tensor> {
      return s == -1 ? std::nullopt : std::optional<Tensor>(channels_last_dense(get(s)));
    };
    // take: a slot's value out of it, for the pool once the slot holds its new value.
    auto take = [&](int64_t s) {
      std::optional<Tensor> old = std::move(slots[static_cast<size_t>(s)]);
      slots[static_cast<size_t>(s)].reset();
      return old;
    };
    auto set = [&](int64_t s, const Tensor& value) {
      if (s == -1) return;
      std::optional<Tensor> old = take(s);
      slots[static_cast<size_t>(s)] = value;
      if (old.has_value()) pool.release(*std::move(old), slots);
    };
    while (!d.done()) {
      const int64_t code = d.begin_step();
      switch (code) {
        case kStepConv: {
          const int64_t y = d.out(), x = d.in();
          const Tensor &w = d.tensor(), &b = d.tensor();
          const std::vector<int64_t> s = d.pair(), p = d.pair(), dl = d.pair();
          const Activation a = d.act();
          if (run) set(y, conv_bias_act_cpu(get(x), w, b, s, p, dl, name_of(a)));
          break;
        }
        case kStepDw: {
          const int64_t y = d.out(), mean = d.opt_out(), x = d.in();
          const Tensor &w = d.tensor(), &b = d.tensor();
          const std::vector<int64_t> s = d.pair(), p = d.pair(), dl = d.pair();
          const Activation a = d.act();
          if (run) {
            const auto [yv, mv] = dwconv_bias_act_cpu(get(x), w, b, s, p, dl, name_of(a), mean != -1);
            set(y, yv);
            set(mean, mv);
          }
          break;
        }
        case kStepPwdw: {
          const int64_t y = d.out(), mean = d.opt_out(), x = d.in();
          const Tensor &w = d.tensor(), &b = d.tensor();
          const Activation a = d.act();
          const Tensor &dw_w = d.tensor(), &dw_b = d.tensor();
          const std::vector<int64_t> s = d.pair(), p = d.pair(), dl = d.pair();
          const Activation dw_a = d.act();
          if (run) {
            const auto [yv, mv] = pointwise_dwconv_cpu(channels_last_dense(get(x)), w, b, name_of(a), dw_w, dw_b, s,
                                                       p, dl, name_of(dw_a), mean != -1);
            set(y, yv);
            set(mean, mv);
          }
          break;
        }
        case kStepPw: {
          const int64_t y = d.out(), x = d.in(), scale = d.opt_in(), residual = d.opt_in();
          const Tensor &w = d.tensor(), &b = d.tensor();
          const Activation a = d.act();
          if (run)
            set(y, pointwise_bias_act_cpu(channels_last_dense(get(x)), w, b, name_of(a), get_opt(scale),
                                          get_opt(residual)));
          break;
        }
        case kStepGate: {
          const int64_t g = d.out(), mean = d.in();
          const Tensor &w1 = d.tensor(), &b1 = d.tensor(), &w2 = d.tensor(), &b2 = d.tensor();
          const Gate kind = d.gate();
          if (run) set(g, se_gate_cpu(channels_last_dense(get(mean)), w1, b1, w2, b2, name_of(kind)));
          break;
        }
        case kStepSe: {
          const int64_t y = d.out(), x = d.in(), mean = d.opt_in();
          const Tensor &w1 = d.tensor(), &b1 = d.tensor(), &w2 = d.tensor(), &b2 = d.tensor();
          const Gate kind = d.gate();
          if (run) {
            const Tensor& xv = get(x);
            set(y, se_excite_scale_cpu(xv, mean == -1 ? spatial_mean(xv) : get(mean), w1, b1, w2, b2, name_of(kind)));
          }
          break;
        }
        case kStepPool: {
          const int64_t y = d.out(), x = d.in();
          if (run) set(y, spatial_mean(get(x)));
          break;
        }
        case kStepAdd: {
          const int64_t y = d.out(), a = d.in(), b = d.in();
          if (run) set(y, add(get(a), get(b)));
          break;
        }
        case kStepAct: {
          const int64_t y = d.out(), x = d.in();
          const Activation a = d.act();
          if (run) set(y, act(get(x), a));
          break;
        }
        case kStepResize: {
          const int64_t y = d.out(), x = d.in(), like = d.opt_in();
          const std::vector<int64_t> size = d.pair();
          const bool align_corners = d.flag();
          if (run) {
            const Tensor& xv = get(x);
            if (like != -1) STD_TORCH_CHECK(get(like).dim() == 4, "mnv3::run_plan: the resize step's like must be 4-d");
            set(y, like == -1 ? resize_bilinear(xv, size[0], size[1], align_corners)
                              : resize_bilinear(xv, get(like).size(2), get(like).size(3), align_corners));
          }
          break;
        }
        case kStepPwdwpw: {
          const int64_t y = d.out(), x = d.in(), residual = d.opt_in();
          const Tensor &w = d.tensor(), &b = d.tensor();
          const Activation a = d.act();
          const Tensor &dw_w = d.tensor(), &dw_b = d.tensor();
          const std::vector<int64_t> s = d.pair(), p = d.pair(), dl = d.pair();
          const Activation dw_a = d.act();
          const Tensor &pw_w = d.tensor(), &pw_b = d.tensor();
          const Activation pw_a = d.act();
          if (run)
            set(y, pointwise_dwconv_project_cpu(channels_last_dense(get(x)), w, b, name_of(a), dw_w, dw_b, s, p, dl,
                                                name_of(dw_a), pw_w, pw_b, name_of(pw_a), get_opt(residual)));
          break;
        }
        default:  // a step added to steps.py without its case here
          STD_TORCH_CHECK(false, "mnv3::run_plan: step code ", code, " has no case in the C++ executor");
      }
      if (run)
        for (const int64_t s : dead[static_cast<size_t>(d.step())]) {
          std::optional<Tensor> old = take(s);
          if (old.has_value()) pool.release(*std::move(old), slots);
        }
      d.end_step();
    }
    if (!run) dead = d.dead_after();
    for (const int64_t s : d.outputs())
      STD_TORCH_CHECK(d.written(s), "mnv3::run_plan: output slot ", s, " is never written");
    output_slots = d.outputs();
  }
  std::vector<Tensor> outputs;
  outputs.reserve(output_slots.size());
  for (const int64_t s : output_slots) outputs.push_back(*slots[static_cast<size_t>(s)]);
  pool.end_call();
  return outputs;
}

}  // namespace mnv3

STABLE_TORCH_LIBRARY_IMPL(mnv3, CPU, m) {
  m.impl("run_plan", TORCH_BOX(&mnv3::run_plan_cpu));
}
