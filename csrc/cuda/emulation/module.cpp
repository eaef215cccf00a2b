// The Python module mnv3_kernels._C_emulated (MNV3_BUILD_EMULATED=1):
// importing it registers the CUDA kernels, compiled as host C++ and run by the
// emulator, as the ops mnv3_emulated::* on CPU tensors (cuda_utils.cuh).  Its
// functions serve the tests: the launches the emulator ran, and the kernels
// with planted defects that show each of its checks firing.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <exception>
#include <stdexcept>

#include "../../common/python_list.h"
#include "checker_kernels.h"
#include "emulator.h"

namespace {

// launch_log() -> [(kernel, grid, block, dynamic_smem_bytes)], the launches
// since the last call, oldest first.
PyObject* launch_log(PyObject*, PyObject*) {
  return mnv3::list_of(mnv3::emu::take_launch_records(), [](const mnv3::emu::LaunchRecord& r) {
    return Py_BuildValue("(s(III)(III)n)", r.kernel.c_str(), r.grid[0], r.grid[1], r.grid[2], r.block[0],
                         r.block[1], r.block[2], static_cast<Py_ssize_t>(r.dynamic_smem));
  });
}

PyObject* checker_cases(PyObject*, PyObject*) { return mnv3::string_list(mnv3::checker_cases()); }

// run_checker_case(name) -> float; RuntimeError with the emulator's message
// when the case's planted defect is caught.
PyObject* run_checker_case(PyObject*, PyObject* arg) {
  const char* name = PyUnicode_AsUTF8AndSize(arg, nullptr);
  if (name == nullptr) return nullptr;
  try {
    return PyFloat_FromDouble(mnv3::run_checker_case(name));
  } catch (const std::invalid_argument& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  return nullptr;
}

PyObject* asan(PyObject*, PyObject*) {
#if defined(__SANITIZE_ADDRESS__)
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

PyMethodDef methods[] = {
    {"launch_log", launch_log, METH_NOARGS, "The launches the emulator ran since the last call."},
    {"checker_cases", checker_cases, METH_NOARGS, "The names of the planted-defect kernels."},
    {"run_checker_case", run_checker_case, METH_O, "Runs one planted-defect kernel."},
    {"asan", asan, METH_NOARGS, "Whether this module was built with AddressSanitizer."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

extern "C" {
PyObject* PyInit__C_emulated(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C_emulated",
      "mnv3_kernels CUDA kernels run by the CUDA emulator on CPU tensors (torch.ops.mnv3_emulated.*)", -1, methods};
  return PyModule_Create(&module_def);
}
}
