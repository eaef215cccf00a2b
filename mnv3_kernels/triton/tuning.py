"""What the Triton ops share: interpreter detection, the autotune wrapper,
the int32 index-range check, and how an op is launched and registered.

Imported only once triton imports (see __init__.py), never at package import.
"""

from __future__ import annotations

import os

import torch
import triton

from .. import ops

# Read once, when the kernels are defined: triton.jit builds an interpreted
# function iff TRITON_INTERPRET=1 at decoration time, so this flag says how the
# kernels of this process were built.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

INT32_MAX = 2**31 - 1


def autotuned(kernel, gpu_configs: list, interpreter_config, key: list[str], **kwargs):
    """triton.autotune over gpu_configs on a GPU; one fixed config under the
    interpreter (a single config is never benchmarked, and benchmarking in the
    interpreter would take minutes)."""
    configs = [interpreter_config] if INTERPRET else gpu_configs
    return triton.autotune(configs=configs, key=key, **kwargs)(kernel)


def batch_bucket(n: int) -> int:
    """The batch's size class in the autotune keys: 0 for 1, 1 for 2-4, 2 for 5-16,
    3 for 17-64, 4 above (a config tuned at batch 1, a few programs, is not
    reused at batch 256, thousands).  Passed to each kernel as BATCH_BUCKET, a
    plain int the kernels do not read: only the autotuner's key sees it."""
    bucket, top = 0, 1
    while n > top and bucket < 4:
        bucket, top = bucket + 1, top * 4
    return bucket


def check_int32_span(name: str, t: torch.Tensor) -> None:
    """The kernels index with int32: refuse, clearly, a tensor whose largest
    element offset does not fit (a MobileNetV3 activation is far below this)."""
    span = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()) if size > 0)
    if span > INT32_MAX:
        raise ValueError(
            f"{name} spans {span + 1} elements; the Triton kernels index with int32 and support at most "
            f"2^31 (split the batch, or use the native backend)"
        )


def launchable(kernel):
    """The kernel as the launcher calls it: wrapped for torch.compile on a GPU,
    as is under the interpreter (torch cannot trace an interpreted kernel)."""
    return kernel if INTERPRET else torch.library.wrap_triton(kernel)


def register_op(name: str, schema: str, impl, fake):
    """A triton_op on a GPU: torch.compile traces into the kernels, and the fake
    kernel is impl itself run on fake tensors.  Under the interpreter, whose
    kernels torch cannot trace, an opaque custom op with the given fake."""
    if INTERPRET:
        op = torch.library.custom_op(name, impl, mutates_args=(), schema=schema)
        op.register_fake(fake)
    else:
        op = torch.library.triton_op(name, impl, mutates_args=(), schema=schema)
    ops._inference_only(name.split("::")[1])  # backward raises, as for the mnv3 ops
    return op
