"""The Triton backend against the pure-PyTorch reference.

Triton reads TRITON_INTERPRET when the kernels are defined, so the CPU run
needs its own process with the variable set from the start:

    TRITON_INTERPRET=1 python -m pytest -q tests/test_triton.py

Without it this file runs on a CUDA GPU (compiled kernels, plus bf16, larger
MobileNetV3 shapes and the check that torch.compile traces into the kernels),
and skips itself when there is neither.
"""

from __future__ import annotations

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

if not INTERPRET and not torch.cuda.is_available():
    pytest.skip(
        "Triton tests need a CUDA GPU, or Triton's interpreter in a process of their own: "
        "TRITON_INTERPRET=1 python -m pytest -q tests/test_triton.py",
        allow_module_level=True,
    )
pytest.importorskip("triton", reason="triton is not installed (pip install 'mnv3_kernels[triton]')")

import mnv3_kernels  # noqa: E402
import mnv3_kernels.triton as triton_backend  # noqa: E402
from mnv3_kernels import backends, reference  # noqa: E402
from mnv3_kernels.ops import ACTIVATIONS, GATES  # noqa: E402

from tolerances import assert_lowp_close, assert_model_close, assert_op_close  # noqa: E402

DEVICE = "cpu" if INTERPRET else "cuda"
LOWP_DTYPES = [
    torch.float16,
    pytest.param(
        torch.bfloat16,
        marks=pytest.mark.skipif(INTERPRET, reason="Triton's interpreter does not support bfloat16"),
    ),
]
LAYOUTS = ("nchw", "channels_last", "nchw_view", "channels_last_view")

# (N, C, H, W), (kh, kw), stride, padding, dilation: odd C and H/W, k 3/5, stride 1/2, dilation 2.
DW_GEOMETRIES = [
    ((2, 13, 15, 15), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((1, 13, 15, 15), (3, 3), (2, 2), (1, 1), (1, 1)),
    ((1, 16, 7, 7), (5, 5), (1, 1), (2, 2), (1, 1)),
    ((2, 13, 15, 15), (5, 5), (2, 2), (2, 2), (1, 1)),
    ((1, 8, 15, 15), (3, 3), (1, 1), (2, 2), (2, 2)),
    ((1, 5, 9, 12), (3, 5), (1, 2), (0, 2), (1, 1)),
    ((1, 6, 3, 3), (3, 3), (1, 1), (0, 0), (1, 1)),  # a 1x1 output: sizes of 1 specialize on a GPU
]
if not INTERPRET:  # MobileNetV3 layer shapes, too slow for the interpreter
    DW_GEOMETRIES += [
        ((2, 16, 112, 112), (3, 3), (2, 2), (1, 1), (1, 1)),
        ((2, 72, 56, 56), (5, 5), (2, 2), (2, 2), (1, 1)),
        ((2, 960, 7, 7), (5, 5), (1, 1), (2, 2), (1, 1)),
    ]
# (N, C, H, W), Cr: C > 64 and Cr > 32 run the gate kernel's loops more than once.
SE_SHAPES = [((2, 13, 15, 15), 5), ((1, 72, 7, 7), 40)]
if not INTERPRET:
    SE_SHAPES += [((2, 96, 14, 14), 24), ((2, 960, 7, 7), 240)]


def _id(v):
    return "x".join(map(str, v)) if isinstance(v, tuple) else str(v)


def make_x(shape, layout, dtype=torch.float32):
    """x of `shape` in one of LAYOUTS; the views are not dense, so their output is NCHW."""
    n, c, h, w = shape
    if layout == "nchw":
        return torch.randn(shape, device=DEVICE, dtype=dtype)
    if layout == "channels_last":
        return torch.randn(shape, device=DEVICE, dtype=dtype).contiguous(memory_format=torch.channels_last)
    if layout == "nchw_view":  # a spatial crop: rows are not adjacent
        return torch.randn((n, c, h + 2, w + 3), device=DEVICE, dtype=dtype)[:, :, 1 : h + 1, 2 : w + 2]
    base = torch.randn((n, c + 3, h, w), device=DEVICE, dtype=dtype)  # channels_last_view: a channel slice
    return base.contiguous(memory_format=torch.channels_last)[:, 1 : c + 1]


def dw_args(geometry, layout, dtype=torch.float32):
    shape, (kh, kw), stride, padding, dilation = geometry
    c = shape[1]
    x = make_x(shape, layout, dtype)
    weight = torch.randn((c, 1, kh, kw), device=DEVICE, dtype=dtype)
    bias = torch.randn((c,), device=DEVICE, dtype=dtype)
    return x, weight, bias, list(stride), list(padding), list(dilation)


def se_args(shape, cr, layout, dtype=torch.float32, pooled_dtype=torch.float32):
    n, c = shape[:2]
    x = make_x(shape, layout, dtype)
    pooled = torch.randn((n, c), device=DEVICE, dtype=pooled_dtype)
    w1 = torch.randn((cr, c), device=DEVICE, dtype=dtype) / c**0.5
    b1 = torch.randn((cr,), device=DEVICE, dtype=dtype)
    w2 = torch.randn((c, cr), device=DEVICE, dtype=dtype) / cr**0.5
    b2 = torch.randn((c,), device=DEVICE, dtype=dtype)
    return x, pooled, w1, b1, w2, b2


def upcast(args):
    return [a.float() if isinstance(a, torch.Tensor) else a for a in args]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --------------------------------------------------------------------------- availability
def test_available_here():
    ok, why = triton_backend.availability(DEVICE)
    assert ok, why


# --------------------------------------------------------------------------- dwconv_bias_act
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("geometry", DW_GEOMETRIES, ids=lambda g: "-".join(map(_id, g)))
def test_dwconv_fp32_matches_reference(geometry, activation, layout):
    args = dw_args(geometry, layout)
    y, mean = triton_backend.dwconv_bias_act(*args, activation, True)
    y_ref, mean_ref = reference.dwconv_bias_act(*args, activation, True)
    assert_op_close(y, y_ref)
    assert_op_close(mean, mean_ref)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_dwconv_output_layout_follows_x(layout):
    args = dw_args(DW_GEOMETRIES[0], layout)
    y, _ = triton_backend.dwconv_bias_act(*args, "relu", False)
    y_ref, _ = reference.dwconv_bias_act(*args, "relu", False)
    assert y.stride() == y_ref.stride()


def test_dwconv_without_mean_returns_empty_mean():
    _, mean = triton_backend.dwconv_bias_act(*dw_args(DW_GEOMETRIES[0], "channels_last"), "relu6", False)
    assert mean.shape == (0,) and mean.dtype == torch.float32


def test_dwconv_mean_is_deterministic():
    args = dw_args(DW_GEOMETRIES[-1], "channels_last")
    first = triton_backend.dwconv_bias_act(*args, "hardswish", True)[1]
    second = triton_backend.dwconv_bias_act(*args, "hardswish", True)[1]
    assert torch.equal(first, second)


@pytest.mark.parametrize("dtype", LOWP_DTYPES)
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("geometry", DW_GEOMETRIES, ids=lambda g: "-".join(map(_id, g)))
def test_dwconv_lowp_within_twice_torch_error(geometry, activation, layout, dtype):
    args = dw_args(geometry, layout, dtype)
    y, mean = triton_backend.dwconv_bias_act(*args, activation, True)
    y_lowp, mean_lowp = reference.dwconv_bias_act(*args, activation, True)
    y_ref, mean_ref = reference.dwconv_bias_act(*upcast(args), activation, True)
    assert y.dtype == dtype and mean.dtype == torch.float32
    assert_lowp_close(y, y_ref, y_lowp, dtype)
    assert_lowp_close(mean, mean_ref, mean_lowp, dtype)


# --------------------------------------------------------------------------- se_excite_scale
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("shape,cr", SE_SHAPES, ids=_id)
def test_se_fp32_matches_reference(shape, cr, gate, layout):
    args = se_args(shape, cr, layout)
    y = triton_backend.se_excite_scale(*args, gate)
    y_ref = reference.se_excite_scale(*args, gate)
    assert_op_close(y, y_ref)
    assert y.stride() == y_ref.stride()


@pytest.mark.parametrize("pooled_in_x_dtype", (False, True), ids=("pooled_fp32", "pooled_lowp"))
@pytest.mark.parametrize("dtype", LOWP_DTYPES)
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("shape,cr", SE_SHAPES, ids=_id)
def test_se_lowp_within_twice_torch_error(shape, cr, gate, layout, dtype, pooled_in_x_dtype):
    args = se_args(shape, cr, layout, dtype, dtype if pooled_in_x_dtype else torch.float32)
    y = triton_backend.se_excite_scale(*args, gate)
    y_lowp = reference.se_excite_scale(*args, gate)
    y_ref = reference.se_excite_scale(*upcast(args), gate)
    assert y.dtype == dtype
    assert_lowp_close(y, y_ref, y_lowp, dtype)


# --------------------------------------------------------------------------- every GPU config
def _gpu_config_cases():
    from mnv3_kernels.triton import dwconv_bias_act_triton as dw, se_excite_scale_triton as se

    for module, tuner, configs, layout in (
        (dw, "_dwconv_channels_last", dw.CHANNELS_LAST_CONFIGS, "channels_last"),
        (dw, "_dwconv_rows", dw.ROWS_CONFIGS, "nchw"),
        (se, "_scale_channels_last", se.CHANNELS_LAST_CONFIGS, "channels_last"),
        (se, "_scale_rows", se.ROWS_CONFIGS, "nchw"),
    ):
        for config in configs:
            yield pytest.param(module, tuner, config, layout, id=f"{tuner}-{config}".replace(" ", ""))


@pytest.mark.parametrize("module,tuner,config,layout", list(_gpu_config_cases()))
def test_every_autotune_config_matches_reference(module, tuner, config, layout, monkeypatch):
    """Pins the autotuner to one config (one config is never benchmarked), so the
    interpreter checks the tilings that only a GPU would pick."""
    monkeypatch.setattr(getattr(module, tuner), "configs", [config])
    if tuner.startswith("_dwconv"):
        args = dw_args(DW_GEOMETRIES[3], layout)
        got, want = (f(*args, "relu6", True) for f in (triton_backend.dwconv_bias_act, reference.dwconv_bias_act))
    else:
        args = se_args(*SE_SHAPES[1], layout)
        got, want = (f(*args, "sigmoid") for f in (triton_backend.se_excite_scale, reference.se_excite_scale))
    for actual, expected in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
        assert_op_close(actual, expected)


def test_batch_bucket_classes():
    from mnv3_kernels.triton.tuning import batch_bucket

    sizes = (1, 2, 4, 5, 16, 17, 64, 65, 256, 10**6)
    assert [batch_bucket(n) for n in sizes] == [0, 1, 1, 2, 2, 3, 3, 4, 4, 4]


@pytest.mark.parametrize("module,tuner", sorted({(m.__name__, t) for m, t, *_ in
                                                  (c.values for c in _gpu_config_cases())}))
def test_autotune_keys_include_the_batch_bucket(module, tuner):
    """A config tuned at batch 1 (a few programs) is not reused at batch 256."""
    import importlib

    assert "BATCH_BUCKET" in getattr(importlib.import_module(module), tuner).keys


# --------------------------------------------------------------------------- op registration
def test_dwconv_opcheck():
    triton_backend.register()
    args = dw_args(DW_GEOMETRIES[1], "channels_last")
    torch.library.opcheck(torch.ops.mnv3.dwconv_bias_act_triton.default, (*args, "hardswish", True))


def test_se_opcheck():
    triton_backend.register()
    args = se_args(*SE_SHAPES[0], "nchw")
    torch.library.opcheck(torch.ops.mnv3.se_excite_scale_triton.default, (*args, "sigmoid"))


def test_triton_ops_have_the_mnv3_schemas():
    triton_backend.register()
    for op in ("dwconv_bias_act", "se_excite_scale"):
        ours = torch.ops.mnv3.__getattr__(f"{op}_triton").default._schema
        contract = torch.ops.mnv3.__getattr__(op).default._schema
        assert [(a.name, str(a.type)) for a in ours.arguments] == [
            (a.name, str(a.type)) for a in contract.arguments
        ]
        assert [str(r.type) for r in ours.returns] == [str(r.type) for r in contract.returns]


def _dwconv_se_block(x, weight, bias, w1, b1, w2, b2):
    y, mean = triton_backend.dwconv_bias_act(x, weight, bias, [1, 1], [1, 1], [1, 1], "hardswish", True)
    return triton_backend.se_excite_scale(y, mean, w1, b1, w2, b2, "hardsigmoid")


def _block_inputs():
    x, weight, bias, *_ = dw_args(DW_GEOMETRIES[0], "channels_last")
    _, _, w1, b1, w2, b2 = se_args(x.shape, 5, "nchw")
    return x, weight, bias, w1, b1, w2, b2


def test_torch_compile_fullgraph_matches_eager():
    triton_backend.register()  # registration imports modules, which dynamo does not trace
    inputs = _block_inputs()
    torch._dynamo.reset()
    compiled = torch.compile(_dwconv_se_block, fullgraph=True)
    assert_op_close(compiled(*inputs), _dwconv_se_block(*inputs))


@pytest.mark.skipif(INTERPRET, reason="torch cannot trace interpreted kernels: the ops are opaque there")
def test_torch_compile_traces_into_the_kernels():
    from torch._inductor.utils import run_and_get_code

    triton_backend.register()
    torch._dynamo.reset()
    compiled = torch.compile(_dwconv_se_block, fullgraph=True)
    _, code = run_and_get_code(compiled, *_block_inputs())
    source = "\n".join(code)
    assert "_dwconv_bias_act_kernel" in source and "_se_scale_kernel" in source


# --------------------------------------------------------------------------- backend selection
def test_use_backend_triton_routes_the_functional_api(monkeypatch):
    calls = []
    real = triton_backend.dwconv_bias_act

    def spy(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(triton_backend, "dwconv_bias_act", spy)
    x, weight, bias, stride, padding, dilation = dw_args(DW_GEOMETRIES[0], "channels_last")
    with mnv3_kernels.use_backend("triton"):
        assert backends.resolve(x.device) is backends.Backend.TRITON
        y, mean = mnv3_kernels.functional.dwconv_bias_act(x, weight, bias, stride, padding, dilation, "relu", True)
    assert len(calls) == 1
    y_ref, mean_ref = reference.dwconv_bias_act(x, weight, bias, stride, padding, dilation, "relu", True)
    assert_op_close(y, y_ref)
    assert_op_close(mean, mean_ref)


def test_bad_arguments_raise_the_contract_errors():
    x, weight, bias, stride, padding, dilation = dw_args(DW_GEOMETRIES[0], "nchw")
    with pytest.raises(ValueError, match="activation must be one of"):
        triton_backend.dwconv_bias_act(x, weight, bias, stride, padding, dilation, "gelu", False)


# --------------------------------------------------------------------------- model
def test_fused_small_model_runs_end_to_end_on_triton(monkeypatch):
    factory = getattr(mnv3_kernels, "mobilenet_v3_small", None)
    if factory is None:
        pytest.skip("mnv3_kernels.mobilenet_v3_small does not exist on this branch yet")
    try:
        model = factory()
    except NotImplementedError as e:
        pytest.skip(f"mnv3_kernels.mobilenet_v3_small is not implemented yet: {e}")
    if not isinstance(model, torch.nn.Module):
        pytest.skip(f"mnv3_kernels.mobilenet_v3_small() is a stub here (returned {type(model).__name__})")

    calls = []
    for op in ("dwconv_bias_act", "se_excite_scale"):
        real = getattr(triton_backend, op)
        monkeypatch.setattr(triton_backend, op, lambda *a, _real=real, _op=op: calls.append(_op) or _real(*a))
    model = model.eval().to(DEVICE)
    x = torch.randn((1, 3, 64, 64), device=DEVICE)
    with torch.inference_mode():
        with mnv3_kernels.use_backend("triton"):
            logits = model(x)
        with mnv3_kernels.use_backend("reference"):
            expected = model(x)
    assert {"dwconv_bias_act", "se_excite_scale"} <= set(calls)
    assert_model_close(logits, expected)
