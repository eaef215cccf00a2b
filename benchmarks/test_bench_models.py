"""Whole models: torchvision eager (NCHW, channels_last) vs the fused model (and on CPU its
frozen copy, mnv3_kernels.freeze), batch 1 and 8."""

from __future__ import annotations

import pytest
import torch
from conftest import sync

import mnv3_kernels as mk
from mnv3_kernels.testing import randomize_batchnorm, randomize_classifier

tvm = pytest.importorskip("torchvision.models")


@pytest.mark.parametrize("batch", (1, 8))
@pytest.mark.parametrize("arch", ("mobilenet_v3_large", "mobilenet_v3_small"))
@pytest.mark.parametrize("variant", ("eager", "eager_channels_last", "fused", "fused_frozen"))
def test_model_latency(benchmark, device, arch, batch, variant):
    if variant == "fused_frozen" and device.type != "cpu":
        pytest.skip("mnv3_kernels.freeze is for fp32 CPU inference")
    tv = getattr(tvm, arch)()
    randomize_batchnorm(tv)
    randomize_classifier(tv)
    tv = tv.eval().to(device)
    x = torch.randn(batch, 3, 224, 224, device=device)
    model = {"eager": lambda: tv, "eager_channels_last": lambda: tv.to(memory_format=torch.channels_last),
             "fused": lambda: mk.fuse(tv), "fused_frozen": lambda: mk.freeze(tv)}[variant]()
    if variant == "eager_channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    wait = sync(device)
    benchmark.group = f"{arch} batch {batch} {device.type}"
    benchmark.extra_info["images"] = batch

    def run():
        with torch.inference_mode():
            model(x)
        wait()

    benchmark.pedantic(run, warmup_rounds=3, rounds=20, iterations=1)
