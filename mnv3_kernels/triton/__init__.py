"""Triton implementations of the mnv3 ops (selected by backends.py).

Not implemented yet: issue #4 adds the kernels.  availability() says so, so
`python -m mnv3_kernels.info` and backend selection stay truthful.
"""

from __future__ import annotations


def availability(device_type: str) -> tuple[bool, str]:
    return False, "the Triton kernels are not implemented yet"
