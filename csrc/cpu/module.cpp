// The Python module mnv3_kernels._C: importing it runs the static
// registrations of the CPU kernels.  No pybind11: ops are reached through
// torch.ops.mnv3.*.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "mnv3_kernels CPU kernels (registered as torch.ops.mnv3.*)", -1,
      nullptr};
  return PyModule_Create(&module_def);
}
}
