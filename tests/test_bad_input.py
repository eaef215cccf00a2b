"""Bad input gets a Python exception that names the argument, never a crash."""

from __future__ import annotations

import pytest
import torch

import mnv3_kernels as mk


def dw_args(**overrides):
    args = dict(x=torch.randn(2, 8, 7, 7), weight=torch.randn(8, 1, 3, 3), bias=torch.randn(8), stride=1,
                padding=1, dilation=1, activation="relu")
    args.update(overrides)
    return args


def se_args(**overrides):
    args = dict(x=torch.randn(2, 8, 5, 5), pooled=torch.randn(2, 8), w1=torch.randn(4, 8), b1=torch.randn(4),
                w2=torch.randn(8, 4), b2=torch.randn(8), gate="hardsigmoid")
    args.update(overrides)
    return args


@pytest.mark.parametrize(
    "overrides,exc,match",
    [
        (dict(x=torch.randn(8, 7, 7)), ValueError, r"x must be a 4-d tensor \[N, C, H, W\], got shape \[8, 7, 7\]"),
        (dict(x=torch.randn(2, 8, 7, 7, 1)), ValueError, r"x must be a 4-d tensor"),
        (dict(x=torch.randn(2, 8, 7, 7).double()), TypeError, r"x must be float32, float16 or bfloat16"),
        (dict(x=torch.randint(0, 3, (2, 8, 7, 7))), TypeError, r"x must be float32"),
        (dict(x="not a tensor"), TypeError, r"x must be a torch.Tensor"),
        (dict(weight=torch.randn(8, 1, 3, 3).half()), TypeError, r"weight must have the dtype of x \(torch.float32\)"),
        (dict(bias=torch.randn(8).bfloat16()), TypeError, r"bias must have the dtype of x"),
        (dict(weight=torch.randn(72, 3, 3)), ValueError, r"weight must have shape \[C, 1, kh, kw\] with C = 8, got \[72, 3, 3\]"),
        (dict(weight=torch.randn(8, 2, 3, 3)), ValueError, r"weight must have shape \[C, 1, kh, kw\]"),
        (dict(weight=torch.randn(9, 1, 3, 3)), ValueError, r"with C = 8, got \[9, 1, 3, 3\]"),
        (dict(bias=torch.randn(7)), ValueError, r"bias must have shape \[C\] with C = 8, got \[7\]"),
        (dict(activation="gelu"), ValueError, r"activation must be one of .*'hardswish'.*got 'gelu'"),
        (dict(stride=0), ValueError, r"stride must be positive"),
        (dict(stride=(1, 2, 3)), TypeError, r"stride must be an int or a pair of ints"),
        (dict(padding=-1), ValueError, r"padding must be non-negative"),
        (dict(dilation=0), ValueError, r"dilation must be positive"),
        (dict(padding=0, weight=torch.randn(8, 1, 9, 9)), ValueError, r"x of spatial size 7x7 is smaller than the dilated kernel"),
        (dict(weight=torch.randn(8, 1, 0, 3)), ValueError, r"weight must have a non-empty kernel"),
    ],
)
def test_dwconv_bad_input(overrides, exc, match):
    with pytest.raises(exc, match=match):
        mk.dwconv_bias_act(**dw_args(**overrides))


@pytest.mark.skipif(not torch._C._dispatch_has_kernel_for_dispatch_key("mnv3::dwconv_bias_act", "CPU"),
                    reason="the CPU extension is not built")
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_dwconv_kernel_refuses_an_input_smaller_than_the_kernel(stride):
    """The C++ kernel's own check (the op called directly): a 2x2 input under an
    unpadded 3x3 kernel has no output at any stride (truncating division once gave
    one output row for stride > 1)."""
    op = torch.ops.mnv3.dwconv_bias_act.default
    with pytest.raises(RuntimeError, match="the output would be empty"):
        op(torch.randn(1, 8, 2, 2), torch.randn(8, 1, 3, 3), torch.randn(8), [stride, stride], [0, 0], [1, 1],
           "relu", False)


@pytest.mark.parametrize(
    "overrides,exc,match",
    [
        (dict(x=torch.randn(8, 5, 5)), ValueError, r"x must be a 4-d tensor"),
        (dict(pooled=torch.randn(2, 9)), ValueError, r"pooled must have shape \[N, C\] = \[2, 8\], got \[2, 9\]"),
        (dict(pooled=torch.randn(2, 8).double()), TypeError, r"pooled must be float32 or have the dtype of x"),
        (dict(w1=torch.randn(4, 9)), ValueError, r"w1 must have shape \[Cr, C\] with C = 8, got \[4, 9\]"),
        (dict(b1=torch.randn(5)), ValueError, r"b1 must have shape \[Cr\] with Cr = 4, got \[5\]"),
        (dict(w2=torch.randn(8, 5)), ValueError, r"w2 must have shape \[C, Cr\] = \[8, 4\], got \[8, 5\]"),
        (dict(b2=torch.randn(4)), ValueError, r"b2 must have shape \[C\] with C = 8"),
        (dict(w1=torch.randn(4, 8).half()), TypeError, r"w1 must have the dtype of x"),
        (dict(w2=torch.randn(8, 4, 3, 3)), ValueError, r"w2 given as a conv weight must be 1x1"),
        (dict(gate="relu"), ValueError, r"gate must be one of \('hardsigmoid', 'sigmoid'\), got 'relu'"),
    ],
)
def test_se_bad_input(overrides, exc, match):
    with pytest.raises(exc, match=match):
        mk.se_excite_scale(**se_args(**overrides))


def test_se_accepts_1x1_conv_weights():
    a = se_args()
    y = mk.se_excite_scale(**{**a, "w1": a["w1"][:, :, None, None], "w2": a["w2"][:, :, None, None]})
    torch.testing.assert_close(y, mk.se_excite_scale(**a))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for a second device")
def test_tensors_on_different_devices():
    with pytest.raises(ValueError, match=r"weight must be on the device of x"):
        mk.dwconv_bias_act(**dw_args(weight=torch.randn(8, 1, 3, 3, device="cuda")))
    with pytest.raises(ValueError, match=r"w2 must be on the device of x"):
        mk.se_excite_scale(**se_args(w2=torch.randn(8, 4, device="cuda")))


def test_tensors_on_different_devices_meta():
    """The device check, without a GPU: a meta-device weight beside a CPU input."""
    with pytest.raises(ValueError, match=r"weight must be on the device of x \(cpu\), got meta"):
        mk.dwconv_bias_act(**dw_args(weight=torch.randn(8, 1, 3, 3, device="meta")))
    with pytest.raises(ValueError, match=r"pooled must be on the device of x"):
        mk.se_excite_scale(**se_args(pooled=torch.randn(2, 8, device="meta")))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: torch.ops.mnv3.dwconv_bias_act(torch.randn(8, 7, 7), torch.randn(8, 1, 3, 3), torch.randn(8),
                                                [1, 1], [1, 1], [1, 1], "relu", False), "x must be a 4-d tensor"),
        (lambda: torch.ops.mnv3.dwconv_bias_act(torch.randn(1, 8, 7, 7), torch.randn(9, 1, 3, 3), torch.randn(8),
                                                [1, 1], [1, 1], [1, 1], "relu", False), "weight must have shape"),
        (lambda: torch.ops.mnv3.dwconv_bias_act(torch.randn(1, 8, 7, 7), torch.randn(8, 1, 3, 3), torch.randn(8),
                                                [1, 1], [1, 1], [1, 1], "tanh", False), "activation must be one of"),
        (lambda: torch.ops.mnv3.se_excite_scale(torch.randn(1, 8, 2, 2), torch.randn(1, 8), torch.randn(4, 8),
                                                torch.randn(4), torch.randn(8, 3), torch.randn(8), "sigmoid"),
         "w2 must have shape"),
    ],
)
def test_direct_op_calls_check_their_arguments_too(call, match):
    """torch.ops.mnv3.* skips the Python API: the C++ kernels refuse bad input themselves."""
    pytest.importorskip("mnv3_kernels._C", reason="the CPU extension is not built")
    with pytest.raises(RuntimeError, match=match):
        call()


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("not a model",), {}, r"fuse\(model\): model must be a torch.nn.Module, got builtins.str"),
        ((torch.nn.Conv2d,), {}, r"fuse\(model\): model must be a torch.nn.Module"),  # the class, not a module
        ((torch.nn.ReLU(),), {"inplace": 1}, r"fuse\(model, inplace=...\): inplace must be a bool, got 1"),
        ((torch.nn.ReLU(),), {"verbose": "yes"}, r"fuse\(model, verbose=...\): verbose must be a bool"),
    ],
    ids=["str", "class", "inplace", "verbose"],
)
def test_fuse_rejects_bad_arguments(args, kwargs, match):
    with pytest.raises(TypeError, match=match):
        mk.fuse(*args, **kwargs)


def test_unknown_backend_name():
    with pytest.raises(ValueError, match=r"backend must be one of auto, native, triton, reference; got 'cuda-fast'"):
        mk.set_backend("cuda-fast")


# ------------------------------------------------------------------ the model's entry
@pytest.mark.parametrize("x,exc,match", [
    (torch.randn(3, 64, 64), ValueError, r"x must be a 4-d batch of images \[N, 3, H, W\], got shape \[3, 64, 64\]; "
                                         r"one image \[C, H, W\] is x.unsqueeze\(0\)"),
    (torch.randn(1, 1, 64, 64), ValueError, r"takes 3-channel images \[N, 3, H, W\], got 1 channels"),
    (torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8), TypeError,
     r"weights are torch.float32 and x is torch.uint8: convert with x.to\(torch.float32\) / 255"),
    (torch.randn(1, 3, 64, 64, dtype=torch.float16), TypeError,
     r"weights are torch.float32 and x is torch.float16: convert with x.to\(torch.float32\), or the model"),
    ([[1.0]], TypeError, r"x must be a torch.Tensor"),
])
@pytest.mark.parametrize("mode", ["inference_mode", "no_grad", "train"])
def test_model_names_the_callers_input(x, exc, match, mode):
    """Errors about the input name the tensor the caller passed, not an inner
    activation or a kernel argument; on every path (the fast plan cached by an earlier
    valid call, the module path, training)."""
    model = mk.mobilenet_v3_small()
    model.train(mode == "train")
    ctx = torch.inference_mode() if mode == "inference_mode" else torch.no_grad()
    with ctx:
        if mode != "train":
            model(torch.randn(1, 3, 64, 64))  # a valid call first: the fast plan is cached
        with pytest.raises(exc, match=match):
            model(x)
