"""The plan compiler's CUDA target: a whole forward's steps on the CUDA kernels.

A model compiled for plan.compiler.CUDA (plain weights, every step) is run
by the plan's interpreter on the handwritten CUDA kernels (interpreter.KernelOps):
`emulated`, the kernels under the CUDA emulator on CPU tensors (CI), and
`cuda` on a GPU when one is visible.  Its output is checked against the eager
model (fp32: the model tolerance; fp16: the LOWP rule of the eager model run
in fp16), the kernel launches of a Large forward are
counted from the emulator's launch log, and on a GPU the plan replays in a
CUDA graph and mk.freeze of a model on the GPU (FrozenCudaModel: this plan,
a CUDA graph per input shape) matches eager (the device check runs this
file's GPU tests).
"""

from __future__ import annotations

import collections
import copy

import pytest
import torch
from tolerances import assert_lowp_close, assert_model_close

from mnv3_kernels import emulated, zoo
from mnv3_kernels.plan import compiler, interpreter
from mnv3_kernels.testing import calibrate_batchnorm

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible)")
pytestmark = pytest.mark.usefixtures("no_tf32")  # on a GPU the stem conv runs cuDNN (conftest.py)


@pytest.fixture(params=[
    pytest.param("cuda", marks=[pytest.mark.cuda, requires_gpu], id="cuda"),
    pytest.param("emulated", id="emulated", marks=pytest.mark.skipif(
        not emulated.available(), reason=f"the emulated CUDA kernels: {emulated.STATUS.reason}")),
])
def target(request):
    """(device of the plan's tensors, the kernels' op namespace)."""
    if request.param == "cuda":
        return "cuda", torch.ops.mnv3
    return "cpu", getattr(torch.ops, emulated.NAMESPACE)


SIZE = (65, 71)  # odd: every stride-2 layer rounds


def _model(name: str):
    model = zoo.build(name, seed=0)
    calibrate_batchnorm(model, torch.randn(4, 3, *SIZE, generator=torch.Generator().manual_seed(1)))
    return model.eval()


def _run(plan, x, ops) -> torch.Tensor:
    (segment,) = plan.segments
    return interpreter.interpret([x], segment.tensors, segment.program, ops)[0]


@pytest.fixture(scope="module", params=["large", "small"])
def compiled(request):
    model = _model(request.param)
    with torch.no_grad():
        return model, compiler.compile_model(model, compiler.CUDA)


def test_the_cuda_target_lowers_the_whole_forward(compiled):
    _, plan = compiled
    assert len(plan.segments) == 1 and not plan.left_alone, plan.describe()
    steps = set(plan.segments[0].steps)
    assert "pwdw" in steps and steps <= compiler.CUDA.steps  # the expands fused into their depthwise convs
    assert all(t.dim() != 3 for t in plan.segments[0].tensors)  # no CPU panels: plain weights


@pytest.mark.parametrize("batch", [1, 3])
def test_fp32_plan_on_the_cuda_kernels_matches_eager(compiled, batch, target):
    model, plan = compiled
    device, namespace = target
    x = torch.randn(batch, 3, *SIZE, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        expected = model(x)
        segment = plan.segments[0]
        tensors = [t.to(device) for t in segment.tensors]
        out = interpreter.interpret([x.to(device)], tensors, segment.program, interpreter.KernelOps(namespace))[0]
    assert_model_close(out.cpu(), expected)


def test_fp16_plan_on_the_cuda_kernels(compiled, target):
    """The plan's weights in fp16 (folded in fp32, then rounded): against the fp32 eager
    model within the LOWP rule of the eager model run in fp16 by PyTorch."""
    model, plan = compiled
    device, namespace = target
    x = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(7))
    segment = plan.segments[0]
    half = [t.half() for t in segment.tensors]
    with torch.no_grad():
        expected = model(x)
        own = copy.deepcopy(model).half()(x.half())
        out = interpreter.interpret([x.half().to(device)], [t.to(device) for t in half], segment.program,
                                    interpreter.KernelOps(namespace))[0]
    assert out.dtype == torch.float16
    assert_lowp_close(out.cpu(), expected, own, torch.float16)


@pytest.mark.cuda
@requires_gpu
def test_the_plan_replays_in_a_cuda_graph(compiled):
    """The plan's steps on the CUDA kernels, captured once and replayed on new inputs
    written into the captured input: the same outputs as running the steps again."""
    _, plan = compiled
    segment = plan.segments[0]
    tensors = [t.half().cuda() for t in segment.tensors]
    ops = interpreter.KernelOps(torch.ops.mnv3)
    x = torch.randn(2, 3, *SIZE, device="cuda", dtype=torch.float16)

    def step():
        return interpreter.interpret([x], tensors, segment.program, ops)[0]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        out = step()
    for seed in (1, 2):
        x.copy_(torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).to(x))
        graph.replay()
        torch.cuda.synchronize()
        with torch.no_grad():
            assert torch.equal(out, step())


KERNEL_LAUNCHES = interpreter.KernelOps.LAUNCHES
LAUNCH_TARGET = 45  # the CUDA fast-path issue's budget for a frozen Large forward


def _launches_of_a_large_forward():
    model = _model("large")
    with torch.no_grad():
        plan = compiler.compile_model(model, compiler.CUDA)
        emulated.module().launch_log()
        _run(plan, torch.randn(1, 3, 224, 224), interpreter.KernelOps(getattr(torch.ops, emulated.NAMESPACE)))
    return plan.segments[0].steps, emulated.module().launch_log()


@pytest.fixture(scope="module")
def large_launches():
    if not emulated.available():
        pytest.skip(f"the emulated CUDA kernels: {emulated.STATUS.reason}")
    return _launches_of_a_large_forward()


def test_large_forward_launches_one_kernel_per_step(large_launches):
    """Each step launches what KernelOps.LAUNCHES says and nothing more (at 224 x 224,
    batch 1: the depthwise squeezes over many blocks finish in the same launch; the
    stem is conv_direct_kernel)."""
    steps, log = large_launches
    counts = collections.Counter(steps)
    assert len(log) == sum(KERNEL_LAUNCHES.get(s, 0) * n for s, n in counts.items()), (counts, len(log))


def test_large_forward_within_the_launch_budget(large_launches):
    """The CUDA fast-path issue's budget: 42 kernel launches (the stem, 14 pwdw, one dw,
    15 projections, 8 SE gates, the head's 1x1 conv and the classifier's two Linears)
    + the pool's mean: 43."""
    steps, log = large_launches
    others = sum(1 for s in steps if s not in KERNEL_LAUNCHES)  # pool: PyTorch's mean, one launch at least
    assert len(log) + others <= LAUNCH_TARGET


# ------------------------------------------------------------------ freeze() on CUDA
@pytest.mark.cuda
@requires_gpu
@pytest.mark.parametrize("name", ["large", "small"])
def test_freeze_on_cuda_matches_eager_and_replays_per_shape(name):
    """mk.freeze of an fp16 model on the GPU: a FrozenCudaModel whose forward (a CUDA graph
    per input shape) matches the eager fp32 model within the LOWP rule of eager fp16,
    on two shapes and again on new values of the first; each call returns fresh tensors."""
    import mnv3_kernels as mk
    from mnv3_kernels.freeze import FrozenCudaModel

    model = _model(name)
    half = copy.deepcopy(model).half().cuda()
    frozen = mk.freeze(half)
    assert isinstance(frozen, FrozenCudaModel)
    for batch, size, seed in ((1, (224, 224), 0), (3, SIZE, 1), (1, (224, 224), 2)):
        x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            expected, own = model(x), half(x.half().cuda()).cpu()
        first = frozen(x.half().cuda())
        second = frozen(x.half().cuda())
        assert first.data_ptr() != second.data_ptr() and torch.equal(first, second)
        assert_lowp_close(first.cpu(), expected, own, torch.float16)
    assert len(frozen._graphs) == 2 and all(g is not None for g in frozen._graphs.values())


@pytest.mark.cuda
@requires_gpu
def test_freeze_on_cuda_refuses_what_it_cannot_run():
    import mnv3_kernels as mk

    frozen = mk.freeze(_model("small").half().cuda())
    with pytest.raises(ValueError, match="must be a torch.float16 cuda:0 tensor"):
        frozen(torch.randn(1, 3, 64, 64, device="cuda"))
    with pytest.raises(ValueError, match="must be a torch.float16 cuda:0 tensor"):
        frozen(torch.randn(1, 3, 64, 64).half())
    with pytest.raises(RuntimeError, match="cannot be converted or moved"):
        frozen.float()
    with pytest.raises(RuntimeError, match="cannot be put in train mode"):
        frozen.train()
    mixed = _model("small").cuda()
    mixed.classifier.half()
    with pytest.raises(ValueError, match="on one device in one dtype"):
        mk.freeze(mixed)
