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

PyObject* dims(const unsigned (&d)[3]) { return Py_BuildValue("(III)", d[0], d[1], d[2]); }

// launch_log() -> [(kernel, grid, block, dynamic_smem_bytes)], the launches
// since the last call, oldest first.
PyObject* launch_log(PyObject*, PyObject*) {
  const std::vector<mnv3::emu::LaunchRecord> records = mnv3::emu::take_launch_records();
  PyObject* list = PyList_New(0);
  if (list == nullptr) return nullptr;
  for (const auto& r : records) {
    PyObject* grid = dims(r.grid);
    PyObject* block = dims(r.block);
    PyObject* item = grid && block ? Py_BuildValue("(sOOn)", r.kernel.c_str(), grid, block,
                                                   static_cast<Py_ssize_t>(r.dynamic_smem))
                                   : nullptr;
    Py_XDECREF(grid);
    Py_XDECREF(block);
    if (item == nullptr || PyList_Append(list, item) != 0) {
      Py_XDECREF(item);
      Py_DECREF(list);
      return nullptr;
    }
    Py_DECREF(item);
  }
  return list;
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
