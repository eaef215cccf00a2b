"""The fused MobileNetV3 on CUDA: against torchvision (fp32 with TF32 off, and
fp16 by the low-precision rule), inside a CUDA graph, and under
torch.compile(mode="reduce-overhead").  Needs a GPU and torchvision."""

import pytest
import torch

import mnv3_kernels as mk
from tolerances import assert_lowp_close, assert_model_close

from mnv3_kernels.testing import randomize_batchnorm, randomize_classifier

tv_models = pytest.importorskip("torchvision.models", reason="torchvision is not installed")

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.usefixtures("no_tf32"),  # fp32 comparisons mean fp32 (conftest.py)
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible)"),
]
DEV = "cuda"
ARCHS = ["mobilenet_v3_large", "mobilenet_v3_small"]


def torchvision_model(arch: str, seed: int = 0) -> torch.nn.Module:
    """Random weights, BatchNorm statistics and classifier (so folding is not a no-op and the
    logits are of O(1)); the same seed gives the same model."""
    torch.manual_seed(seed)
    model = getattr(tv_models, arch)(weights=None)
    generator = torch.Generator().manual_seed(seed)
    randomize_batchnorm(model, generator)
    randomize_classifier(model, generator)
    return model.eval()


def ours(arch: str, tv: torch.nn.Module) -> torch.nn.Module:
    ctor = getattr(mk, arch, None)
    model = ctor() if callable(ctor) else None
    assert isinstance(model, torch.nn.Module), (
        f"mnv3_kernels.{arch}() must build a torch.nn.Module (got {type(model).__name__})"
    )
    model.load_state_dict(tv.state_dict())
    return model.eval()


def images(batch, h=224, w=224, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, h, w, generator=g).to(DEV, dtype)


@pytest.mark.parametrize("batch,h,w", [(1, 224, 224), (3, 197, 223)])
@pytest.mark.parametrize("arch", ARCHS)
def test_fused_matches_torchvision_fp32(arch, batch, h, w):
    tv = torchvision_model(arch).to(DEV)
    x = images(batch, h, w)
    with torch.inference_mode():
        expected = tv(x)
        assert_model_close(ours(arch, tv).to(DEV)(x), expected)
        assert_model_close(mk.fuse(tv)(x), expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_fp16_within_lowp_rule(arch):
    """Our fp16 logits' error vs the fp32 torchvision logits is at most LOWP_FACTOR x
    torchvision's own fp16 error (plus half an fp16 ulp of the logits' scale)."""
    tv = torchvision_model(arch).to(DEV)
    x = images(2)
    with torch.inference_mode():
        ref = tv(x).float()
        tv_half = torchvision_model(arch).to(DEV).half()(x.half())
        fused = ours(arch, tv).to(DEV).half()(x.half())
    assert_lowp_close(fused, ref, tv_half, torch.float16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("arch", ARCHS)
def test_fused_model_in_cuda_graph(arch, dtype):
    model = ours(arch, torchvision_model(arch)).to(DEV, dtype).to(memory_format=torch.channels_last)
    x = images(1, dtype=dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        warm = torch.cuda.Stream()
        warm.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(warm):
            for _ in range(2):
                model(x)
        torch.cuda.current_stream().wait_stream(warm)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = model(x)
        x.copy_(images(1, dtype=dtype, seed=1))
        graph.replay()
        torch.cuda.synchronize()
        expected = model(x)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_model_compiles_reduce_overhead(arch):
    model = ours(arch, torchvision_model(arch)).to(DEV)
    x = images(2)
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model, mode="reduce-overhead")
        for _ in range(3):  # warm-up runs, then CUDA-graph replays
            got = compiled(x).clone()
    assert_model_close(got, expected)
