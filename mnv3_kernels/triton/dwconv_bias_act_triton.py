"""mnv3::dwconv_bias_act_triton: depthwise conv + bias + activation (+ the SE
squeeze) in Triton: kernel, launcher and op registration.

Tiling: a program computes a BLOCK_H x BLOCK_W tile of output pixels for
BLOCK_C channels of one image, accumulating the kh*kw taps in fp32.  Strides
are arguments, so one kernel serves NCHW, channels-last and strided views;
each layout has its own autotuner (channels-last: wide channel blocks, the
channel vector is contiguous; NCHW: one or a few channels, wide rows).

Squeeze: deterministic, no atomics.  Each program writes its tile's partial
sum of the activated fp32 values, divided by OH*OW, into a buffer
[N, tiles, C]; mean = partials.sum(1).  The spatial tile is therefore chosen
by the launcher from the shape (it fixes the number of partials), and only
BLOCK_C / num_warps are autotuned.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import layout, ops
from .tuning import autotuned, batch_bucket, check_int32_span, launchable, register_op

ACTIVATION_CODES = {name: code for code, name in enumerate(ops.ACTIVATIONS)}


@triton.jit
def _activate(v, ACT: tl.constexpr):
    # Same formulas as csrc/common/activation.h (identity, relu, relu6, hardswish).
    if ACT == 1:
        v = tl.maximum(v, 0.0)
    elif ACT == 2:
        v = tl.minimum(tl.maximum(v, 0.0), 6.0)
    elif ACT == 3:
        v = v * tl.minimum(tl.maximum(v + 3.0, 0.0), 6.0) / 6.0
    return v


@triton.jit
def _dwconv_bias_act_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, part_ptr,
    C, H, W, OH, OW, TILES_W, TILES,
    sxn, sxc, sxh, sxw,
    swc, swh, sww, sb,
    syn, syc, syh, syw,
    BATCH_BUCKET,  # the batch's size class for the autotune key (tuning.batch_bucket); not read
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    ACT: tl.constexpr, WITH_MEAN: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)  # = n * TILES + tile: also the row of this program's partial sums
    n = pid // TILES
    tile = pid % TILES
    oh = (tile // TILES_W) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None, None]
    ow = (tile % TILES_W) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :, None]
    c_vec = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c = c_vec[None, None, :]
    c_ok = c < C

    x_img = x_ptr + n * sxn + c * sxc
    acc = tl.zeros([BLOCK_H, BLOCK_W, BLOCK_C], dtype=tl.float32)
    for i in tl.static_range(KH):
        ih = oh * SH - PH + i * DH
        row_ok = (ih >= 0) & (ih < H) & c_ok
        for j in tl.static_range(KW):
            iw = ow * SW - PW + j * DW
            ok = row_ok & (iw >= 0) & (iw < W)
            xv = tl.load(x_img + ih * sxh + iw * sxw, mask=ok, other=0.0)
            wv = tl.load(w_ptr + c * swc + i * swh + j * sww, mask=c_ok, other=0.0)
            acc += xv.to(tl.float32) * wv.to(tl.float32)

    bias = tl.load(b_ptr + c * sb, mask=c_ok, other=0.0).to(tl.float32)
    out = _activate(acc + bias, ACT)
    out_ok = (oh < OH) & (ow < OW) & c_ok
    y_offs = n * syn + c * syc + oh * syh + ow * syw
    tl.store(y_ptr + y_offs, out.to(y_ptr.dtype.element_ty), mask=out_ok)

    if WITH_MEAN:
        tile_sum = tl.sum(tl.sum(tl.where(out_ok, out, 0.0), axis=0), axis=0)
        # Divided here, so that the sum of a row of partials over the tiles is the mean.
        tl.store(part_ptr + pid * C + c_vec, tile_sum / (OH * OW), mask=c_vec < C)


_KEY = ["C", "OH", "OW", "KH", "SH", "BATCH_BUCKET"]
# Channels contiguous (channels-last): a 32-pixel tile times a channel vector.
CHANNELS_LAST_CONFIGS = [
    triton.Config({"BLOCK_C": 16}, num_warps=1),
    triton.Config({"BLOCK_C": 32}, num_warps=2),
    triton.Config({"BLOCK_C": 64}, num_warps=2),
    triton.Config({"BLOCK_C": 64}, num_warps=4),
    triton.Config({"BLOCK_C": 128}, num_warps=4),
]
# Rows contiguous (NCHW, strided views): a 128-pixel tile of a few channels.
ROWS_CONFIGS = [
    triton.Config({"BLOCK_C": 1}, num_warps=2),
    triton.Config({"BLOCK_C": 2}, num_warps=4),
    triton.Config({"BLOCK_C": 4}, num_warps=4),
]
_dwconv_channels_last = autotuned(
    _dwconv_bias_act_kernel, CHANNELS_LAST_CONFIGS, triton.Config({"BLOCK_C": 16}, num_warps=4), _KEY
)
_dwconv_rows = autotuned(_dwconv_bias_act_kernel, ROWS_CONFIGS, triton.Config({"BLOCK_C": 8}, num_warps=4), _KEY)


def _spatial_tile(oh: int, ow: int, channels_contiguous: bool) -> tuple[int, int]:
    """BLOCK_H x BLOCK_W: 32 pixels when a thread loads channel vectors, 128
    when it loads along rows; no wider or taller than the output needs."""
    pixels, max_w = (32, 8) if channels_contiguous else (128, 32)
    block_w = min(max_w, triton.next_power_of_2(ow))
    block_h = min(pixels // block_w, triton.next_power_of_2(oh))
    return block_h, block_w


def _outputs(x, weight, bias, stride, padding, dilation, activation, with_mean):
    """y, the squeeze partials and the spatial tiling (BLOCK_H, BLOCK_W, tiles
    per row, tiles per image): what the launch allocates and needs."""
    n, c, oh, ow = ops.check_dwconv_args(x, weight, bias, stride, padding, dilation, activation)
    y = layout.empty_4d(x, (n, c, oh, ow))
    check_int32_span("x", x)
    check_int32_span("y", y)
    block_h, block_w = _spatial_tile(oh, ow, channels_contiguous=x.stride(1) == 1)
    tiles_w = triton.cdiv(ow, block_w)
    tiles = triton.cdiv(oh, block_h) * tiles_w
    if with_mean:
        partials = torch.empty((n, tiles, c), dtype=torch.float32, device=x.device)
    else:
        partials = x.new_empty((0,), dtype=torch.float32)
    return y, partials, (block_h, block_w, tiles_w, tiles)


def _mean(partials: torch.Tensor, with_mean: bool) -> torch.Tensor:
    return partials.sum(dim=1) if with_mean else partials


def dwconv_bias_act_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    activation: str,
    with_mean: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    y, partials, tiling = _outputs(x, weight, bias, stride, padding, dilation, activation, with_mean)
    block_h, block_w, tiles_w, tiles = tiling
    n, c, oh, ow = y.shape
    kernel = _dwconv_channels_last if x.stride(1) == 1 else _dwconv_rows

    def grid(meta):
        return (n * tiles, triton.cdiv(c, meta["BLOCK_C"]))

    launchable(kernel)[grid](
        x, weight, bias, y, partials,
        c, x.shape[2], x.shape[3], oh, ow, tiles_w, tiles,
        *x.stride(),
        weight.stride(0), weight.stride(2), weight.stride(3), bias.stride(0),
        *y.stride(),
        batch_bucket(n),
        KH=weight.shape[2], KW=weight.shape[3], SH=stride[0], SW=stride[1],
        PH=padding[0], PW=padding[1], DH=dilation[0], DW=dilation[1],
        ACT=ACTIVATION_CODES[activation], WITH_MEAN=with_mean,
        BLOCK_H=block_h, BLOCK_W=block_w,
    )  # fmt: skip
    return y, _mean(partials, with_mean)


def _dwconv_bias_act_fake(x, weight, bias, stride, padding, dilation, activation, with_mean):
    y, partials, _ = _outputs(x, weight, bias, stride, padding, dilation, activation, with_mean)
    return y, _mean(partials, with_mean)


register_op("mnv3::dwconv_bias_act_triton", ops.DWCONV_SCHEMA, dwconv_bias_act_triton, _dwconv_bias_act_fake)
