"""The mnv3 custom ops: schemas (defined once, here), argument checks and fake
kernels.  The bottom layer: the C++ modules, the Triton kernels, the plan and
the functional API (functional.py, which picks a backend) build on it, and it
imports none of them.

Schemas are defined in Python so the ops exist even when no extension was
built; the C++ extensions only register implementations for them.

    mnv3::dwconv_bias_act(x, weight, bias, stride, padding, dilation, activation, with_mean)
        -> (y, mean)
      y = act(depthwise_conv2d(x, weight) + bias), dtype and layout of x
      (channels-last out iff x is channels-last dense, see layout.py);
      mean = y's spatial mean per (n, c) in fp32, shape [N, C] when with_mean,
      else an empty [0] tensor.  BatchNorm is folded into weight/bias by the caller.
    mnv3::se_excite_scale(x, pooled, w1, b1, w2, b2, gate) -> y
      y = x * gate(w2 @ relu(w1 @ pooled + b1) + b2), dtype and layout of x.

    mnv3::pointwise_bias_act(x, weight, bias, activation, scale, residual) -> y
      y = act(x' @ weight.T + bias) (+ residual), x' = x * scale[n] per sample
      when scale is given (the SE gate, applied where the 1x1 projection reads
      its input).  x: channels-last dense [N, Cin, H, W] (a 1x1 convolution on
      its [N*H*W, Cin] rows; y is channels-last) or row-major [M, Cin] (a
      Linear); weight [Cout, Cin], or its panels [ceil(Cout/16), Cin, 16]
      (layout.pack_pointwise_weight: what the kernel reads; a [Cout, Cin] weight
      is packed on every call, cpu_conv.prepack packs once).  CPU: fp32, the GEMM
      of the fp32 CPU fast path (cpu_conv.py).  CUDA (csrc/cuda/pointwise_bias_act_cuda.cu):
      fp32, fp16 or bf16 with fp32 accumulation, plain [Cout, Cin] weight only;
      scale is fp32, residual of x's dtype.  It is not one of the
      backend-dispatched ops (backends.OPS): the fused models' 1x1 convolutions
      on GPUs still run cuDNN / cuBLAS.
    mnv3::pointwise_dwconv(x, weight, bias, activation, dw_weight, dw_bias, stride, padding,
                           dilation, dw_activation, with_mean) -> (y, mean)
      = dwconv_bias_act(pointwise_bias_act(x, weight, bias, activation), dw_weight, dw_bias,
                        stride, padding, dilation, dw_activation, with_mean)
      in one pass: an inverted residual block's expand and depthwise convs, without
      writing the expanded activation; x channels-last, plain or panel weight as
      pointwise_bias_act's.  CPU: fp32.  CUDA (csrc/cuda/pointwise_dwconv_cuda.cu):
      fp32, fp16 or bf16, plain weight, dilated span up to PWDW_MAX_SPAN["cuda"].
      Outside backends.OPS.
    mnv3::conv_bias_act(x, weight, bias, stride, padding, dilation, activation) -> y
      y = act(conv2d(x, weight, bias, stride, padding, dilation)), groups 1, weight
      [Cout, Cin, kh, kw]: the fast path's 3x3 stem.  x in any layout (the model's
      NCHW input is read in place); y is always channels-last, the layout every
      later op of the fast path reads (the one exception to layout.py's rule).
      CPU: fp32.  CUDA: fp32, fp16 or bf16, a direct convolution (the stem's
      few taps).  Outside backends.OPS.
    mnv3::se_gate(pooled, w1, b1, w2, b2, gate) -> g
      g = gate(relu(pooled @ w1.T + b1) @ w2.T + b2): an SE block's [N, C] gate
      from its [N, C] squeeze, the fast path's input scale for the projection
      (pointwise_bias_act's `scale`).  w1 [Cr, C] and w2 [C, Cr], each also
      accepted as panels like pointwise_bias_act's weight.  g is fp32.  CPU:
      fp32.  CUDA (the excite half of se_excite_scale's kernels): weights fp32,
      fp16 or bf16, plain only, pooled fp32 or their dtype.  Outside
      backends.OPS (se_excite_scale is the dispatched SE op).
    mnv3::run_plan(inputs, tensors, program) -> outputs
      A compiled plan (mnv3_kernels/plan: the ops above, step by step, as
      `program` lists them, plan/steps.py) in one op call, without a Python step
      or a dispatch per layer.  fp32, CPU only, outside backends.OPS.

All are inference ops: their backward raises.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import layout
from .plan import interpreter
from .vocabulary import ACTIVATIONS, GATES  # noqa: F401  (the one vocabulary; re-exported)

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

DWCONV_SCHEMA = (
    "(Tensor x, Tensor weight, Tensor bias, int[2] stride, int[2] padding, int[2] dilation, "
    "str activation, bool with_mean) -> (Tensor, Tensor)"
)
SE_SCHEMA = "(Tensor x, Tensor pooled, Tensor w1, Tensor b1, Tensor w2, Tensor b2, str gate) -> Tensor"

_lib = torch.library.Library("mnv3", "DEF")  # noqa: TOR901 - kept alive for the process
_lib.define("dwconv_bias_act" + DWCONV_SCHEMA)
_lib.define("se_excite_scale" + SE_SCHEMA)
POINTWISE_SCHEMA = ("(Tensor x, Tensor weight, Tensor bias, str activation, Tensor? scale=None, "
                    "Tensor? residual=None) -> Tensor")
_lib.define("pointwise_bias_act" + POINTWISE_SCHEMA)
POINTWISE_DW_SCHEMA = ("(Tensor x, Tensor weight, Tensor bias, str activation, Tensor dw_weight, Tensor dw_bias, "
                       "int[2] stride, int[2] padding, int[2] dilation, str dw_activation, bool with_mean) "
                       "-> (Tensor, Tensor)")
_lib.define("pointwise_dwconv" + POINTWISE_DW_SCHEMA)
CONV_SCHEMA = ("(Tensor x, Tensor weight, Tensor bias, int[2] stride, int[2] padding, int[2] dilation, "
               "str activation) -> Tensor")
_lib.define("conv_bias_act" + CONV_SCHEMA)
SE_GATE_SCHEMA = "(Tensor pooled, Tensor w1, Tensor b1, Tensor w2, Tensor b2, str gate) -> Tensor"
_lib.define("se_gate" + SE_GATE_SCHEMA)
RUN_PLAN_SCHEMA = "(Tensor[] inputs, Tensor[] tensors, int[] program) -> Tensor[]"
_lib.define("run_plan" + RUN_PLAN_SCHEMA)


# --------------------------------------------------------------------------- checks
def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def _check_float_tensor(name: str, t, dtype: torch.dtype | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtype is None and t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name} must have the dtype of x ({dtype}), got {t.dtype}")


def _check_device(name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    if t.device != x.device:
        raise ValueError(f"{name} must be on the device of x ({x.device}), got {t.device}")


def _pair(name: str, v) -> list[int]:
    if isinstance(v, int):
        return [v, v]
    if isinstance(v, Sequence) and len(v) == 2 and all(isinstance(e, int) for e in v):
        return [int(v[0]), int(v[1])]
    raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")


def conv_out_size(size, k: int, s: int, p: int, d: int):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def check_dwconv_args(x, weight, bias, stride, padding, dilation, activation) -> tuple:
    """Raises a clear error for bad arguments; returns the output shape [N, C, OH, OW]."""
    _check_float_tensor("x", x)
    if x.dim() != 4:
        raise ValueError(f"x must be a 4-d tensor [N, C, H, W], got shape {_shape(x)}")
    n, c, h, w = x.shape
    _check_float_tensor("weight", weight, x.dtype)
    _check_float_tensor("bias", bias, x.dtype)
    _check_device("weight", weight, x)
    _check_device("bias", bias, x)
    if weight.dim() != 4 or weight.shape[0] != c or weight.shape[1] != 1:
        raise ValueError(f"weight must have shape [C, 1, kh, kw] with C = {c}, got {_shape(weight)}")
    if bias.dim() != 1 or bias.shape[0] != c:
        raise ValueError(f"bias must have shape [C] with C = {c}, got {_shape(bias)}")
    return (n, c, *_conv_out_hw(x, weight, stride, padding, dilation, activation))


def _conv_out_hw(x, weight, stride, padding, dilation, activation) -> tuple:
    """Checks a conv's geometry and activation; returns its output's (OH, OW)."""
    h, w = x.shape[2], x.shape[3]
    kh, kw = weight.shape[2], weight.shape[3]
    if kh < 1 or kw < 1:
        raise ValueError(f"weight must have a non-empty kernel, got {_shape(weight)}")
    if len(stride) != 2 or min(stride) < 1:
        raise ValueError(f"stride must be positive, got {stride}")
    if len(padding) != 2 or min(padding) < 0:
        raise ValueError(f"padding must be non-negative, got {padding}")
    if len(dilation) != 2 or min(dilation) < 1:
        raise ValueError(f"dilation must be positive, got {dilation}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    oh = conv_out_size(h, kh, stride[0], padding[0], dilation[0])
    ow = conv_out_size(w, kw, stride[1], padding[1], dilation[1])
    if oh < 1 or ow < 1:
        raise ValueError(
            f"x of spatial size {h}x{w} is smaller than the dilated kernel "
            f"({kh}x{kw}, dilation {dilation}, padding {padding}): the output would be empty"
        )
    return oh, ow


def check_conv_args(x, weight, bias, stride, padding, dilation, activation, kernel: str | None = None) -> tuple:
    """Raises a clear error for bad arguments of mnv3::conv_bias_act; returns y's shape.
    `kernel` as for check_pointwise_args: "cpu" (float32) or "cuda" (float32,
    float16 or bfloat16); by default x's device's."""
    _check_kernel_input("x", x, _kernel_for(x, kernel))
    if x.dim() != 4:
        raise ValueError(f"x must be a 4-d tensor [N, C, H, W], got shape {_shape(x)}")
    _check_float_tensor("weight", weight, x.dtype)
    _check_float_tensor("bias", bias, x.dtype)
    _check_device("weight", weight, x)
    _check_device("bias", bias, x)
    if weight.dim() != 4 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight must have shape [Cout, Cin, kh, kw] with Cin = {x.shape[1]}, got {_shape(weight)}")
    if bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
        raise ValueError(f"bias must have shape [Cout] with Cout = {weight.shape[0]}, got {_shape(bias)}")
    return (x.shape[0], weight.shape[0], *_conv_out_hw(x, weight, stride, padding, dilation, activation))


def check_se_args(x, pooled, w1, b1, w2, b2, gate) -> None:
    _check_float_tensor("x", x)
    if x.dim() != 4:
        raise ValueError(f"x must be a 4-d tensor [N, C, H, W], got shape {_shape(x)}")
    n, c = x.shape[0], x.shape[1]
    if not isinstance(pooled, torch.Tensor):
        raise TypeError(f"pooled must be a torch.Tensor, got {type(pooled).__name__}")
    if pooled.dtype not in (torch.float32, x.dtype):
        raise TypeError(f"pooled must be float32 or have the dtype of x ({x.dtype}), got {pooled.dtype}")
    if pooled.dim() != 2 or pooled.shape[0] != n or pooled.shape[1] != c:
        raise ValueError(f"pooled must have shape [N, C] = [{n}, {c}], got {_shape(pooled)}")
    for name, t in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
        _check_float_tensor(name, t, x.dtype)
    if w1.dim() != 2 or w1.shape[1] != c:
        raise ValueError(f"w1 must have shape [Cr, C] with C = {c}, got {_shape(w1)}")
    cr = w1.shape[0]
    if b1.dim() != 1 or b1.shape[0] != cr:
        raise ValueError(f"b1 must have shape [Cr] with Cr = {cr}, got {_shape(b1)}")
    if w2.dim() != 2 or w2.shape[0] != c or w2.shape[1] != cr:
        raise ValueError(f"w2 must have shape [C, Cr] = [{c}, {cr}], got {_shape(w2)}")
    if b2.dim() != 1 or b2.shape[0] != c:
        raise ValueError(f"b2 must have shape [C] with C = {c}, got {_shape(b2)}")
    for name, t in (("pooled", pooled), ("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
        _check_device(name, t, x)
    if gate not in GATES:
        raise ValueError(f"gate must be one of {GATES}, got {gate!r}")


def _kernel_for(t, kernel: str | None) -> str:
    """The kernel a call of the ops with a CPU and a CUDA kernel of their own (pointwise_bias_act,
    se_gate, conv_bias_act) reaches: `kernel` when given (the emulated CUDA kernels run on CPU tensors), else
    the one of t's device."""
    if kernel is not None:
        return kernel
    return "cuda" if isinstance(t, torch.Tensor) and t.device.type == "cuda" else "cpu"


def _check_kernel_input(name: str, t, kernel: str) -> None:
    """The first operand of a call reaching `kernel`: a float tensor; for the CPU kernel
    float32 on the CPU (float16 and bfloat16 run on the CUDA kernel)."""
    _check_float_tensor(name, t)
    if kernel == "cpu":
        if t.dtype != torch.float32:
            raise TypeError(f"{name} must be float32 for the CPU kernel (float16 and bfloat16 run on CUDA), "
                            f"got {t.dtype}")
        if t.device.type != "cpu":
            raise ValueError(f"{name} must be a CPU tensor for the CPU kernel, got {t.device}")


def check_pointwise_args(x, weight, bias, activation, scale, residual, kernel: str | None = None) -> tuple:
    """Raises a clear error for bad arguments of mnv3::pointwise_bias_act; returns y's shape.

    `kernel` is the implementation the call reaches: "cpu" (float32, weight
    plain or as panels) or "cuda" (float32, float16 or bfloat16, plain weight
    only; also the emulated CUDA kernel, on CPU tensors); by default the one of
    x's device."""
    kernel = _kernel_for(x, kernel)
    _check_kernel_input("x", x, kernel)
    if x.dim() == 4:
        if not layout.is_nhwc_dense(x):
            raise ValueError("x must be channels-last dense (x.contiguous(memory_format=torch.channels_last))")
    elif x.dim() != 2 or not x.is_contiguous():
        raise ValueError(f"x must be a channels-last 4-d tensor or a contiguous 2-d one, got shape {_shape(x)}")
    cin = x.shape[1]
    cout = _check_fc("weight", "bias", x, weight, bias, x.dtype, panels=kernel == "cpu")[1]
    _check_device("weight", weight, x)
    _check_device("bias", bias, x)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    out_shape = (x.shape[0], cout, *x.shape[2:])
    if scale is not None:
        _check_float_tensor("scale", scale, torch.float32)
        _check_device("scale", scale, x)
        if scale.dim() != 2 or list(scale.shape) != [x.shape[0], cin] or not scale.is_contiguous():
            raise ValueError(f"scale must be a contiguous [N, Cin] = [{x.shape[0]}, {cin}] tensor, "
                             f"got shape {_shape(scale)}")
    if residual is not None:
        _check_float_tensor("residual", residual, x.dtype)
        _check_device("residual", residual, x)
        dense = layout.is_nhwc_dense(residual) if x.dim() == 4 else residual.is_contiguous()
        if tuple(residual.shape) != out_shape or not dense:
            raise ValueError(f"residual must have the output's shape {list(out_shape)} and layout "
                             f"({'channels-last' if x.dim() == 4 else 'contiguous'}), got {_shape(residual)}")
    return out_shape


# --------------------------------------------------------------------------- fake kernels
@torch.library.register_fake("mnv3::dwconv_bias_act")
def _dwconv_bias_act_fake(x, weight, bias, stride, padding, dilation, activation, with_mean):
    out_shape = check_dwconv_args(x, weight, bias, stride, padding, dilation, activation)
    y = layout.empty_4d(x, out_shape)
    mean_shape = (x.shape[0], x.shape[1]) if with_mean else (0,)
    return y, x.new_empty(mean_shape, dtype=torch.float32)


@torch.library.register_fake("mnv3::se_excite_scale")
def _se_excite_scale_fake(x, pooled, w1, b1, w2, b2, gate):
    check_se_args(x, pooled, w1, b1, w2, b2, gate)
    return layout.empty_4d(x, x.shape)


@torch.library.register_fake("mnv3::pointwise_bias_act")
def _pointwise_bias_act_fake(x, weight, bias, activation, scale=None, residual=None, *, kernel=None):
    out_shape = check_pointwise_args(x, weight, bias, activation, scale, residual, kernel)
    if x.dim() == 4:
        return torch.empty(out_shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    return x.new_empty(out_shape)


# The largest dilated span ((k - 1) * dilation + 1) of pointwise_dwconv's depthwise
# kernel, per kernel: the CPU kernel keeps a ring of that many expanded rows
# (kMaxDwSpan, csrc/cpu/kernels/kernels.h); the CUDA kernel's window and filter
# must fit shared memory (kMaxSpan, csrc/cuda/pointwise_dwconv_cuda.cu).  The plan
# compiler fuses no larger one for either target.
PWDW_MAX_SPAN = {"cpu": 16, "cuda": 10}


def check_pointwise_dwconv_args(x, weight, bias, activation, dw_weight, dw_bias, stride, padding, dilation,
                                dw_activation, kernel: str | None = None) -> tuple:
    """Raises a clear error for bad arguments of mnv3::pointwise_dwconv; returns y's shape.
    `kernel` as for check_pointwise_args: "cpu" (float32) or "cuda" (float32,
    float16 or bfloat16, plain weight); by default x's device's."""
    kernel = _kernel_for(x, kernel)
    hidden = check_pointwise_args(x, weight, bias, activation, None, None, kernel=kernel)
    if x.dim() != 4:
        raise ValueError(f"x must be a 4-d tensor [N, C, H, W], got shape {_shape(x)}")
    if not isinstance(dw_weight, torch.Tensor) or dw_weight.dim() != 4 or dw_weight.shape[2] != dw_weight.shape[3]:
        raise ValueError(f"dw_weight must have shape [Chid, 1, k, k], got "
                         f"{_shape(dw_weight) if isinstance(dw_weight, torch.Tensor) else dw_weight!r}")
    span = (dw_weight.shape[2] - 1) * dilation[0] + 1
    if span > PWDW_MAX_SPAN[kernel]:
        raise ValueError(f"the dilated kernel may span at most {PWDW_MAX_SPAN[kernel]} rows on the {kernel.upper()} "
                         f"kernel, got k={dw_weight.shape[2]} dilation={dilation[0]}")
    # The depthwise half on an input of the expanded shape (meta: no data).
    return check_dwconv_args(torch.empty(hidden, dtype=x.dtype, device="meta"), dw_weight.to("meta"),
                             dw_bias.to("meta") if isinstance(dw_bias, torch.Tensor) else dw_bias,
                             stride, padding, dilation, dw_activation)


def check_se_gate_args(pooled, w1, b1, w2, b2, gate, kernel: str | None = None) -> tuple:
    """Raises a clear error for bad arguments of mnv3::se_gate; returns g's shape.
    `kernel` as for check_pointwise_args: "cpu" (float32, contiguous pooled,
    weights plain or panels) or "cuda" (weights float32, float16 or bfloat16,
    pooled float32 or their dtype, plain weights); by default pooled's device's."""
    kernel = _kernel_for(pooled, kernel)
    _check_kernel_input("pooled", pooled, kernel)
    if kernel == "cpu":
        if pooled.dim() != 2 or not pooled.is_contiguous():
            raise ValueError(f"pooled must be a contiguous [N, C] matrix, got shape {_shape(pooled)}")
        dtype = torch.float32
    else:
        if pooled.dim() != 2:
            raise ValueError(f"pooled must be an [N, C] matrix, got shape {_shape(pooled)}")
        _check_float_tensor("w1", w1)
        dtype = w1.dtype
        if pooled.dtype not in (torch.float32, dtype):
            raise TypeError(f"pooled must be float32 or have the dtype of w1 ({dtype}), got {pooled.dtype}")
    panels = kernel == "cpu"
    hidden = _check_fc("w1", "b1", pooled, w1, b1, dtype, panels)
    for name, t in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
        _check_device(name, t, pooled)
    if _check_fc("w2", "b2", pooled.new_empty(hidden, device="meta"), w2, b2, dtype, panels)[1] != pooled.shape[1]:
        raise ValueError(f"w2 and b2 must have C = {pooled.shape[1]} output channels, got {_shape(b2)}")
    if gate not in GATES:
        raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
    return tuple(pooled.shape)


def _check_fc(wname: str, bname: str, x, weight, bias, dtype=torch.float32, panels: bool = True) -> tuple:
    """An fc layer's [Cout, Cin] weight (or its panels, where the kernel reads them) and [Cout]
    bias, of `dtype`, on the rows of x; returns the output's shape."""
    _check_float_tensor(wname, weight, dtype)
    _check_float_tensor(bname, bias, dtype)
    cin = x.shape[1]
    if bias.dim() != 1:
        raise ValueError(f"{bname} must have shape [Cout], got {_shape(bias)}")
    if weight.dim() == 3 and not panels:
        raise ValueError(f"{wname} must be the plain [Cout, Cin] matrix: the CUDA kernel reads no panels, "
                         f"got shape {_shape(weight)}")
    if weight.dim() == 3:
        cout = bias.shape[0]
        panels = [-(-cout // layout.PANEL), cin, layout.PANEL]
        if _shape(weight) != panels or not weight.is_contiguous():
            raise ValueError(f"{wname} given as panels must be a contiguous [ceil(Cout/16), Cin, 16] = {panels} "
                             f"tensor (layout.pack_pointwise_weight), got shape {_shape(weight)}")
    elif weight.dim() != 2 or weight.shape[1] != cin or bias.shape[0] != weight.shape[0]:
        raise ValueError(f"{wname} must have shape [Cout, Cin] with Cin = {cin} and {bname} [Cout], "
                         f"got {_shape(weight)} and {_shape(bias)}")
    else:
        cout = weight.shape[0]
    return (x.shape[0], cout)


@torch.library.register_fake("mnv3::run_plan")
def _run_plan_fake(inputs, tensors, program):
    # The plan's interpreter on the ops' fakes: every step checks its arguments.
    return interpreter.interpret(inputs, tensors, program, interpreter.MnvOps())


@torch.library.register_fake("mnv3::se_gate")
def _se_gate_fake(pooled, w1, b1, w2, b2, gate, *, kernel=None):
    return pooled.new_empty(check_se_gate_args(pooled, w1, b1, w2, b2, gate, kernel), dtype=torch.float32)


@torch.library.register_fake("mnv3::conv_bias_act")
def _conv_bias_act_fake(x, weight, bias, stride, padding, dilation, activation, *, kernel=None):
    out_shape = check_conv_args(x, weight, bias, stride, padding, dilation, activation, kernel)
    return torch.empty(out_shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)


@torch.library.register_fake("mnv3::pointwise_dwconv")
def _pointwise_dwconv_fake(x, weight, bias, activation, dw_weight, dw_bias, stride, padding, dilation,
                           dw_activation, with_mean, *, kernel=None):
    out_shape = check_pointwise_dwconv_args(x, weight, bias, activation, dw_weight, dw_bias, stride, padding,
                                            dilation, dw_activation, kernel)
    y = torch.empty(out_shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    return y, x.new_empty((x.shape[0], out_shape[1]) if with_mean else (0,), dtype=torch.float32)


def _inference_only(op_name: str):
    def backward(ctx, *grads):
        raise RuntimeError(
            f"mnv3::{op_name} is an inference op and has no backward. To train or take gradients, "
            "run the model in train() mode, or in eval() mode with autograd enabled: the mnv3_kernels "
            "models then run their ordinary (unfused) modules."
        )

    def setup_context(ctx, inputs, output):
        pass

    torch.library.register_autograd(f"mnv3::{op_name}", backward, setup_context=setup_context)


_inference_only("dwconv_bias_act")
_inference_only("se_excite_scale")
_inference_only("pointwise_bias_act")
_inference_only("pointwise_dwconv")
_inference_only("conv_bias_act")
_inference_only("se_gate")
_inference_only("run_plan")
