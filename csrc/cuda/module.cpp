// The Python module mnv3_kernels._C_cuda: importing it runs the static
// registrations of the CUDA kernels.  No pybind11: ops are reached through
// torch.ops.mnv3.*.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

extern "C" {
PyObject* PyInit__C_cuda(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C_cuda", "mnv3_kernels CUDA kernels (registered as torch.ops.mnv3.*)", -1,
      nullptr};
  return PyModule_Create(&module_def);
}
}
