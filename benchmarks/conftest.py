"""pytest-benchmark suite: `pytest benchmarks --benchmark-only` (CPU; CUDA too when present).

Each group holds a fused variant and what it replaces, measured side by side in
one run; compare them with the table pytest-benchmark prints (or
--benchmark-json).  Not part of the test suite: no timing is asserted.
"""

from __future__ import annotations

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_collection_modifyitems(config, items):
    if not config.pluginmanager.hasplugin("benchmark"):
        skip = pytest.mark.skip(reason="needs pytest-benchmark (pip install '.[bench]')")
        for item in items:
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def sync(device: torch.device):
    """A callable that waits for the device, for timing GPU work."""
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None
