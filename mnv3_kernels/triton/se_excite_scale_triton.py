"""mnv3::se_excite_scale_triton: the SE excite (gate) and scale in Triton:
kernels, launcher and op registration.

Three launches: one small kernel run twice computes the excite in fp32,
hidden[N, Cr] = relu(w1 @ pooled + b1), then gate[N, C] = gate(w2 @ hidden +
b2), a program per 32 rows of a sample (the gate reads the hidden layer once
computed, where one kernel recomputed it in every channel program, 30 times at
C = 960); then a memory-bound one streams
y = x * gate over [BLOCK_P pixels x BLOCK_C channels] tiles, autotuned per
layout and batch size class.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import layout, ops
from .tuning import autotuned, batch_bucket, check_int32_span, launchable, register_op

GATE_CODES = {name: code for code, name in enumerate(ops.GATES)}
assert GATE_CODES == {"hardsigmoid": 0, "sigmoid": 1}, "_unit's codes follow ops.GATES"


@triton.jit
def _unit(v, UNIT: tl.constexpr):
    # Same formulas as csrc/common/se.h.  UNIT 0: the hidden layer's relu; else
    # the gate's code (GATE_CODES) + 1: 2 sigmoid, 1 hardsigmoid = relu6(v + 3) / 6.
    if UNIT == 0:
        v = tl.maximum(v, 0.0)
    elif UNIT == 2:
        v = 1.0 / (1.0 + tl.exp(-v))
    else:
        v = tl.minimum(tl.maximum(v + 3.0, 0.0), 6.0) / 6.0
    return v


@triton.jit
def _se_fc_kernel(
    in_ptr, w_ptr, b_ptr, out_ptr,
    K, ROWS,
    sin_n, sin_k, sw_r, sw_k, sb,
    UNIT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    # out[n, r] = unit(w[r, :] . in[n, :] + b[r]) in fp32 for this program's
    # BLOCK_R rows r of sample n: one SE fc layer (hidden: w1 over pooled; gate:
    # w2 over hidden).
    n = tl.program_id(0)
    r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < ROWS
    acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        v = tl.load(in_ptr + n * sin_n + k * sin_k, mask=k_ok, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + r[:, None] * sw_r + k[None, :] * sw_k, mask=r_ok[:, None] & k_ok[None, :], other=0.0)
        acc += tl.sum(w.to(tl.float32) * v[None, :], axis=1)
    b = tl.load(b_ptr + r * sb, mask=r_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + n * ROWS + r, _unit(acc + b, UNIT), mask=r_ok)


@triton.jit
def _se_scale_kernel(
    x_ptr, gate_ptr, y_ptr,
    C, HW, W,
    sxn, sxc, sxh, sxw, syn, syc, syp,
    BATCH_BUCKET,  # the batch's size class for the autotune key (tuning.batch_bucket); not read
    X_PIXELS_FLAT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    tiles = tl.cdiv(HW, BLOCK_P)
    n = pid // tiles
    p = (pid % tiles) * BLOCK_P + tl.arange(0, BLOCK_P)[:, None]
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    c_ok = c < C
    ok = (p < HW) & c_ok
    # A flat pixel index keeps the contiguity of dense rows visible to the compiler.
    x_pix = p * sxw if X_PIXELS_FLAT else (p // W) * sxh + (p % W) * sxw
    xv = tl.load(x_ptr + n * sxn + c * sxc + x_pix, mask=ok, other=0.0)
    g = tl.load(gate_ptr + n * C + c, mask=c_ok, other=0.0)
    y = xv.to(tl.float32) * g
    tl.store(y_ptr + n * syn + c * syc + p * syp, y.to(y_ptr.dtype.element_ty), mask=ok)


_KEY = ["C", "HW", "BATCH_BUCKET"]
CHANNELS_LAST_CONFIGS = [
    triton.Config({"BLOCK_P": 16, "BLOCK_C": 64}, num_warps=4),
    triton.Config({"BLOCK_P": 32, "BLOCK_C": 32}, num_warps=4),
    triton.Config({"BLOCK_P": 8, "BLOCK_C": 128}, num_warps=4),
    triton.Config({"BLOCK_P": 32, "BLOCK_C": 128}, num_warps=8),
]
ROWS_CONFIGS = [
    triton.Config({"BLOCK_P": 128, "BLOCK_C": 4}, num_warps=4),
    triton.Config({"BLOCK_P": 256, "BLOCK_C": 2}, num_warps=4),
    triton.Config({"BLOCK_P": 512, "BLOCK_C": 1}, num_warps=4),
    triton.Config({"BLOCK_P": 64, "BLOCK_C": 8}, num_warps=2),
]
_INTERPRETER_CONFIG = triton.Config({"BLOCK_P": 64, "BLOCK_C": 16}, num_warps=4)
_scale_channels_last = autotuned(_se_scale_kernel, CHANNELS_LAST_CONFIGS, _INTERPRETER_CONFIG, _KEY)
_scale_rows = autotuned(_se_scale_kernel, ROWS_CONFIGS, _INTERPRETER_CONFIG, _KEY)
_EXCITE_BLOCKS = {"BLOCK_R": 32, "BLOCK_K": 64}


def _output(x, pooled, w1, b1, w2, b2, gate):
    ops.check_se_args(x, pooled, w1, b1, w2, b2, gate)
    y = layout.empty_4d(x, x.shape)
    check_int32_span("x", x)
    check_int32_span("y", y)
    return y


def se_excite_scale_triton(
    x: torch.Tensor,
    pooled: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    gate: str,
) -> torch.Tensor:
    y = _output(x, pooled, w1, b1, w2, b2, gate)
    n, c, h, w = x.shape
    cr = w1.shape[0]
    hidden = torch.empty((n, cr), dtype=torch.float32, device=x.device)
    gates = torch.empty((n, c), dtype=torch.float32, device=x.device)
    for src, fc_w, fc_b, out, unit in ((pooled, w1, b1, hidden, 0), (hidden, w2, b2, gates, GATE_CODES[gate] + 1)):
        rows, k = fc_w.shape
        launchable(_se_fc_kernel)[(n, triton.cdiv(rows, _EXCITE_BLOCKS["BLOCK_R"]))](
            src, fc_w, fc_b, out,
            k, rows,
            *src.stride(), *fc_w.stride(), fc_b.stride(0),
            UNIT=unit, **_EXCITE_BLOCKS,
        )  # fmt: skip

    # y comes from empty_4d, so its pixels are always flat with stride syw.
    sxn, sxc, sxh, sxw = x.stride()
    syn, syc, _, syw = y.stride()
    kernel = _scale_channels_last if sxc == 1 else _scale_rows

    def grid(meta):
        return (n * triton.cdiv(h * w, meta["BLOCK_P"]), triton.cdiv(c, meta["BLOCK_C"]))

    launchable(kernel)[grid](
        x, gates, y,
        c, h * w, w,
        sxn, sxc, sxh, sxw, syn, syc, syw,
        batch_bucket(n),
        X_PIXELS_FLAT=(sxh == w * sxw),
    )  # fmt: skip
    return y


register_op("mnv3::se_excite_scale_triton", ops.SE_SCHEMA, se_excite_scale_triton, _output)
