"""The CUDA emulator's own checks (csrc/cuda/emulation/): each kernel of
checker_kernels.cpp has one planted defect, and its launch must fail with a
message naming the kernel, the thread and the defect; one correct kernel (a
block reduction through shuffles, shared memory and barriers) must give the
closed-form sum.  Skipped unless built with MNV3_BUILD_EMULATED=1."""

import pytest

from mnv3_kernels import emulated

pytestmark = pytest.mark.skipif(not emulated.available(),
                                reason=f"the emulated CUDA kernels: {emulated.STATUS.reason}")

THREAD = r"thread \(\d+, \d+, \d+\) of block \(\d+, \d+, \d+\)"

# case -> what the error must say (a regex); the kernel's name comes first in every message.
PLANTED = {
    "exit_before_barrier": ("exit_before_barrier_kernel",
                            THREAD + r" exited while other threads of its block wait at __syncthreads "
                                     r"\(checker_kernels.cpp:\d+\)"),
    "two_barriers": ("two_barriers_kernel",
                     THREAD + r" waits at __syncthreads \(checker_kernels.cpp:\d+\) while " + THREAD
                     + r" waits at another one"),
    "shuffle_missing_lane": ("shuffle_missing_lane_kernel",
                             THREAD + r" waits at a shuffle with mask 0xffffffff \(checker_kernels.cpp:\d+\) "
                                      r"for lane 16, which exited"),
    "shuffle_partial_warp": ("shuffle_partial_warp_kernel",
                             THREAD + r": a shuffle .* with mask 0xffffffff names lanes 8.. of a warp that has 8 "
                                      r"threads \(the block has 40\)"),
    "misaligned_vector": ("misaligned_vector_kernel",
                          THREAD + r": a vector load of 16 bytes at 0x[0-9a-f]+, which is not 16-byte aligned"),
    "misaligned_ldg": ("misaligned_ldg_kernel",
                       THREAD + r": __ldg of 16 bytes at 0x[0-9a-f]+, which is not 16-byte aligned"),
    "shared_overflow": ("shared_overflow_kernel",
                        r"thread \(32, 0, 0\) of block \(0, 0, 0\) wrote past the end of dynamic shared memory "
                        r"\(128 bytes asked by the launch\)"),
    "grid_y_over_limit": ("noop_kernel", r"grid \(1, 65536, 1\) is over CUDA's limits"),
    "block_over_limit": ("noop_kernel", r"block \(64, 17, 1\) has 1088 threads, over CUDA's 1024"),
    "shared_over_limit": ("noop_kernel", r"49156 bytes of dynamic shared memory, over the 48 KB"),
}


def test_every_checker_case_is_tested():
    assert set(emulated.module().checker_cases()) == set(PLANTED) | {"sum"}


def test_correct_kernel_runs():
    n = 3 * 256  # block_sum_kernel: 3 blocks of 256 threads, each adds its global index
    assert emulated.module().run_checker_case("sum") == n * (n - 1) / 2


@pytest.mark.parametrize("case", sorted(PLANTED))
def test_planted_defect_is_caught(case):
    kernel, message = PLANTED[case]
    if case == "shared_overflow" and emulated.module().asan():
        pytest.skip("under AddressSanitizer the overflow is ASan's to report (it aborts the process)")
    with pytest.raises(RuntimeError, match=rf"mnv3: CUDA launch of {kernel} failed: .*{message}"):
        emulated.module().run_checker_case(case)


def test_unknown_case_raises_value_error():
    with pytest.raises(ValueError, match="no checker case 'nosuch'"):
        emulated.module().run_checker_case("nosuch")
