"""A frozen plan's weights copied into one buffer on transparent huge pages.

A forward streams every weight of the model once (MNASNet 1.0: 17 MB), and in
4 KB pages each page is a TLB miss of its own: freeze() copies the weights of
its segments into one 2 MB-aligned buffer that Linux is asked to back with
huge pages (madvise MADV_HUGEPAGE: effective under the transparent-huge-page
setting "madvise", Ubuntu's default and that of the machines measured here,
or "always").  Measured on Zen 5 (AVX-512, 2 threads), interleaved
processes against the build before (ab_builds.py, 5 pairs): batch 1 MNASNet
0.93x the time, MobileNetV2 0.93x, timm Large 0.95x, Large 0.95x, Small and
LR-ASPP unchanged; batch 8 0.97-0.99x.  Huge pages for the activations as well
(torch's THP_MEM_ALLOC_ENABLE) measured no further gain.  The cost is paid
once, in freeze(): faulting in 22 MB of huge pages took 30-60 ms (4 KB pages:
~6 ms), which is why the live plan of the drop-in MobileNetV3, rebuilt after
every weight change, keeps ordinary copies.

Where the OS gives no huge pages, the buffer is ordinary memory: the same
copies, contiguous.
"""

from __future__ import annotations

import mmap

import torch

HUGE_PAGE = 2 << 20  # bytes; also the buffer's alignment
ALIGN = 64  # bytes between tensors: a cache line, the widest vector load


def _span(t: torch.Tensor) -> int:
    """Elements from t's copy's first element to its last (as laid out by _strides); 0 when empty."""
    if t.numel() == 0:
        return 0
    return 1 + sum((size - 1) * stride for size, stride in zip(t.shape, _strides(t)))


def _strides(t: torch.Tensor) -> tuple:
    """The strides t.clone() would give: t's own where t is dense and non-overlapping,
    else contiguous ones (a meta tensor: no memory)."""
    return torch.empty_like(t, device="meta").stride()


def _huge_page_bytes(size: int) -> torch.Tensor:
    """A uint8 CPU tensor of `size` bytes starting on a huge-page boundary, its memory
    advised for transparent huge pages where the platform has them (a private
    anonymous mapping: the kernel gives shared ones huge pages only under another
    setting), else ordinary memory."""
    flags = getattr(mmap, "MAP_PRIVATE", None), getattr(mmap, "MAP_ANONYMOUS", None)
    if None in flags:  # not a POSIX mmap
        return torch.empty(size, dtype=torch.uint8)
    mm = mmap.mmap(-1, size + HUGE_PAGE, flags=flags[0] | flags[1])
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None:
        try:
            mm.madvise(advice)
        except OSError:  # a kernel without THP: ordinary pages
            pass
    flat = torch.frombuffer(mm, dtype=torch.uint8)  # keeps mm alive; pages touched only when written
    start = -flat.data_ptr() % HUGE_PAGE
    return flat[start:start + size]


def in_one_buffer(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Copies of `tensors` (CPU tensors), as t.clone() makes them (sizes, dtypes and dense
    strides kept), each ALIGN-aligned, in one buffer on huge pages where the OS allows."""
    offsets, total = [], 0
    for t in tensors:
        if t.device.type != "cpu":
            raise ValueError(f"in_one_buffer(tensors): tensors must be CPU tensors, got one on {t.device}")
        offsets.append(total)
        total += -(-_span(t) * t.element_size() // ALIGN) * ALIGN
    flat = _huge_page_bytes(max(total, ALIGN))
    copies = []
    for t, offset in zip(tensors, offsets):
        storage = flat[offset:offset + _span(t) * t.element_size()].view(t.dtype)
        copy = torch.as_strided(storage, t.shape, _strides(t))
        copy.copy_(t)
        copies.append(copy)
    return copies
