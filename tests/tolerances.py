"""The tests' view of the one tolerance table, mnv3_kernels/tolerances.py."""

from mnv3_kernels.tolerances import *  # noqa: F401,F403
from mnv3_kernels.tolerances import assert_lowp_close, assert_model_close, assert_op_close  # noqa: F401
