"""Every numerical tolerance of the project (tests and the benchmark's
correctness check), in one place, with its reason.

fp32 ops: our kernels compute the same sums as PyTorch in a different order
(fp32 accumulation, at most 25 taps or C terms per output), so results agree
to a few ulps of the operands' magnitude: rtol = atol = 1e-5 leaves ~10x
headroom over the largest differences seen (about 4e-6 on values of O(10)).

fp16 / bf16: the flash-attention rule.  Our error against the fp32 reference
(computed on the same, upcast inputs) must be at most LOWP_FACTOR times
PyTorch's own low-precision error against that reference, plus half an ulp
of the output's magnitude for the final rounding to the low-precision dtype.

Models: logits after ~60 layers with randomized BatchNorm statistics.  fp32
folding changes each layer's rounding (w*g/sqrt(v+eps) is rounded once
instead of applied after the conv), so errors compound; MODEL_FP32 bounds the
max abs logit difference relative to the logits' scale.  Seen on CPU: ~1e-7
on logits of ~0.4 (2.5e-7 relative), so 1e-5 leaves ~40x headroom for other
convolution algorithms (cuDNN, oneDNN) without hiding a wrong layer, which
moves logits by orders of magnitude more.  Some models are ill-conditioned in
fp32 (the seed's hand-written MobileNetV3 with BatchNorm statistics calibrated
on 8 samples: BatchNorm on [N, C, 1, 1] SE activations gets variances ~1e-4,
and torchvision's own fp32 logits differ from a float64 run by ~5e-4
relative); for them a test may pass a float64 run of the unfused model, and
the bound is then at least MODEL_FACTOR times PyTorch's own fp32 error
against it (the flash-attention rule, as for fp16 / bf16 ops).
"""

from __future__ import annotations

import torch

OP_FP32 = {"rtol": 1e-5, "atol": 1e-5}
LOWP_FACTOR = 2.0
MODEL_FP32 = {"rtol": 1e-5, "atol": 1e-5}  # relative to max |logit|, see assert_model_close
MODEL_FACTOR = 2.0  # x PyTorch's own fp32 error against float64, when a float64 run is given


def assert_op_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """fp32 op outputs: elementwise within OP_FP32, same dtype, shape and strides."""
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual, expected, **OP_FP32)


def lowp_error_bound(torch_lowp: torch.Tensor, ref_fp32: torch.Tensor, dtype: torch.dtype) -> float:
    torch_err = (torch_lowp.float() - ref_fp32).abs().max().item() if ref_fp32.numel() else 0.0
    half_ulp = torch.finfo(dtype).eps / 2 * (ref_fp32.abs().max().item() if ref_fp32.numel() else 0.0)
    return LOWP_FACTOR * torch_err + half_ulp


def assert_lowp_close(
    actual: torch.Tensor, ref_fp32: torch.Tensor, torch_lowp: torch.Tensor, dtype: torch.dtype
) -> None:
    """fp16/bf16 outputs: max error vs the fp32 reference within the LOWP_FACTOR rule."""
    assert actual.shape == ref_fp32.shape, (actual.shape, ref_fp32.shape)
    ours = (actual.float() - ref_fp32).abs().max().item() if actual.numel() else 0.0
    bound = lowp_error_bound(torch_lowp, ref_fp32, dtype)
    assert ours <= bound, f"{dtype}: our max error {ours:.3g} > bound {bound:.3g} (PyTorch's own x{LOWP_FACTOR})"


def model_close(actual: torch.Tensor, expected: torch.Tensor,
                reference64: torch.Tensor | None = None) -> tuple[bool, float, float]:
    """(ok, max |diff|, bound) for fp32 logits: max |diff| <= atol + rtol * max |expected|
    (errors compound over depth, so the bound scales with the logits); with a float64
    run of the unfused model, at least MODEL_FACTOR x |expected - reference64|."""
    scale = expected.abs().max().item() if expected.numel() else 0.0
    diff = (actual.float() - expected.float()).abs().max().item() if expected.numel() else 0.0
    bound = MODEL_FP32["atol"] + MODEL_FP32["rtol"] * scale
    if reference64 is not None and expected.numel():
        bound = max(bound, MODEL_FACTOR * (expected.double() - reference64).abs().max().item())
    return diff <= bound, diff, bound


def assert_model_close(actual: torch.Tensor, expected: torch.Tensor,
                       reference64: torch.Tensor | None = None) -> None:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    ok, diff, bound = model_close(actual, expected, reference64)
    assert ok, f"max |logit diff| {diff:.3g} > {bound:.3g} (logit scale {expected.abs().max().item():.3g})"
