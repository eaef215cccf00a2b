// The Python module mnv3_kernels._C: importing it runs the static
// registrations of the CPU kernels.  No pybind11: ops are reached through
// torch.ops.mnv3.*; the one function here, cpu_isa(), says which vector ISA
// level the CPU kernels run (cpu_isa.h).
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "../common/python_list.h"
#include "cpu_isa.h"

namespace {

// Steals `value`; false (with the Python error set) when it is null or cannot be stored.
bool set_item(PyObject* dict, const char* key, PyObject* value) {
  if (value == nullptr) return false;
  const int rc = PyDict_SetItemString(dict, key, value);
  Py_DECREF(value);
  return rc == 0;
}

// cpu_isa() -> dict(level, lanes, reason, built, supported, features); raises
// RuntimeError when MNV3_CPU_ISA asks for a level this CPU or build lacks.
PyObject* cpu_isa(PyObject*, PyObject*) {
  const mnv3::CpuIsaChoice& c = mnv3::cpu_isa_choice();
  if (c.kernels == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, c.error.c_str());
    return nullptr;
  }
  PyObject* d = PyDict_New();
  if (d == nullptr) return nullptr;
  if (set_item(d, "level", PyUnicode_FromString(c.level.c_str())) &&
      set_item(d, "lanes", PyLong_FromLong(c.kernels->lanes)) &&
      set_item(d, "reason", PyUnicode_FromString(c.reason.c_str())) &&
      set_item(d, "built", mnv3::string_list(c.built)) && set_item(d, "supported", mnv3::string_list(c.supported)) &&
      set_item(d, "features", PyUnicode_FromString(c.features.c_str())))
    return d;
  Py_DECREF(d);
  return nullptr;
}

PyMethodDef methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS, "The vector ISA level the CPU kernels run, and why."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "mnv3_kernels CPU kernels (registered as torch.ops.mnv3.*)", -1, methods};
  return PyModule_Create(&module_def);
}
}
