// A Python list of str from C++ strings, for the extension modules' few
// CPython functions (csrc/cpu/module.cpp, csrc/cuda/emulation/module.cpp);
// limited API only.
#pragma once

#include <Python.h>

#include <string>
#include <vector>

namespace mnv3 {

// A new reference, or null with the Python error set.
inline PyObject* string_list(const std::vector<std::string>& items) {
  PyObject* list = PyList_New(0);
  for (const std::string& s : items) {
    PyObject* item = list ? PyUnicode_FromString(s.c_str()) : nullptr;
    if (item == nullptr || PyList_Append(list, item) != 0) {
      Py_XDECREF(item);
      Py_XDECREF(list);
      return nullptr;
    }
    Py_DECREF(item);
  }
  return list;
}

}  // namespace mnv3
