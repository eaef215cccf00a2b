"""The names every layer of mnv3_kernels shares: activations and SE gates.

One owner.  Python reads the tuples below; the C++ and CUDA kernels read the
header setup.py generates from them (scripts/generate_headers.py ->
mnv3_generated.h: `enum class Activation`, `enum class Gate` and their names),
so an activation's integer code is its index here everywhere: in the kernels,
in the Triton kernels' constexpr codes and in the plan program.

This file imports nothing (setup.py loads it by path, before torch or the
package can be imported).
"""

# name -> code = index.  identity must stay 0 (the default of every op).
ACTIVATIONS = ("identity", "relu", "relu6", "hardswish")
GATES = ("hardsigmoid", "sigmoid")

# C++ enumerator spelling of each name (the kernels' `Activation::HardSwish`).
_CPP_NAMES = {"identity": "Identity", "relu": "ReLU", "relu6": "ReLU6", "hardswish": "HardSwish",
              "hardsigmoid": "HardSigmoid", "sigmoid": "Sigmoid"}


def activation_code(name: str) -> int:
    """The code of an activation name; raises naming the valid ones."""
    try:
        return ACTIVATIONS.index(name)
    except ValueError:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}") from None


def gate_code(name: str) -> int:
    try:
        return GATES.index(name)
    except ValueError:
        raise ValueError(f"gate must be one of {GATES}, got {name!r}") from None


def cpp_lines() -> list[str]:
    """The C++ declarations of this vocabulary (for the generated header)."""
    lines = []
    for enum, names in (("Activation", ACTIVATIONS), ("Gate", GATES)):
        members = ", ".join(f"{_CPP_NAMES[n]} = {i}" for i, n in enumerate(names))
        quoted = ", ".join(f'"{n}"' for n in names)
        lines += [f"enum class {enum} : int {{ {members} }};",
                  f"inline constexpr int k{enum}Count = {len(names)};",
                  f"inline constexpr const char* k{enum}Names[] = {{{quoted}}};"]
    return lines
