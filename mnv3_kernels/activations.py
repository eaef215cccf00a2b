"""How torch code spells the vocabulary's activations and gates (vocabulary.py
owns the names): module classes, functions and methods, one table each, read
by the drop-in layers (fused_layers), fuse() (fx_fuse) and the plan compiler.
The arithmetic of each is reference.ACTIVATION_FNS / GATE_FNS.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .vocabulary import ACTIVATIONS, GATES

# name -> module class, matched by exact type (a subclass may override forward)
MODULES: dict[str, type] = {"identity": nn.Identity, "relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish,
                            "hardsigmoid": nn.Hardsigmoid, "sigmoid": nn.Sigmoid}
# functions and Tensor methods that compute one of them (an fx node's target)
FUNCTIONS: dict[Callable, str] = {
    F.relu: "relu", torch.relu: "relu", F.relu_: "relu", torch.relu_: "relu", F.relu6: "relu6",
    F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
}
METHODS: dict[str, str] = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid"}
# activations no op computes, by function name (so a report can say "activation X not supported")
OTHER = {"silu", "gelu", "mish", "elu", "selu", "celu", "leaky_relu", "hardtanh", "tanh", "softplus", "prelu", "rrelu",
         "softsign", "logsigmoid", "swish", "hard_swish", "hard_sigmoid", "hard_mish", "tanhshrink", "hardshrink",
         "softshrink", "glu"}
assert set(MODULES) == set(ACTIVATIONS) | set(GATES)

_BY_TYPE = {cls: name for name, cls in MODULES.items()}


def module_name(module: nn.Module | None) -> str | None:
    """The vocabulary name a module computes (exact torch.nn class), else None."""
    return _BY_TYPE.get(type(module))


def activation_name(module: nn.Module | None) -> str | None:
    """The activation a module computes, 'identity' for None, None if it is not one of ACTIVATIONS."""
    if module is None:
        return "identity"
    name = module_name(module)
    return name if name in ACTIVATIONS else None


def gate_name(module: nn.Module) -> str | None:
    name = module_name(module)
    return name if name in GATES else None


def listed(names) -> str:
    """'(ReLU, ReLU6, Hardswish, identity)': names as their module classes, for messages."""
    return "(" + ", ".join(MODULES[n].__name__ if n != "identity" else "identity"
                           for n in sorted(names, key=lambda n: n == "identity")) + ")"
