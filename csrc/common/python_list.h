// Python lists from C++ containers, for the extension modules' few
// CPython functions (csrc/cpu/module.cpp, csrc/cuda/emulation/module.cpp);
// limited API only.
#pragma once

#include <Python.h>

#include <string>
#include <vector>

namespace mnv3 {

// A Python list of make_item(x) for each x of items (make_item returns a new
// reference, or null with the Python error set).  A new reference, or null
// with the Python error set.
template <typename Items, typename MakeItem>
PyObject* list_of(const Items& items, MakeItem make_item) {
  PyObject* list = PyList_New(0);
  for (const auto& x : items) {
    PyObject* item = list ? make_item(x) : nullptr;
    if (item == nullptr || PyList_Append(list, item) != 0) {
      Py_XDECREF(item);
      Py_XDECREF(list);
      return nullptr;
    }
    Py_DECREF(item);
  }
  return list;
}

inline PyObject* string_list(const std::vector<std::string>& items) {
  return list_of(items, [](const std::string& s) { return PyUnicode_FromString(s.c_str()); });
}

}  // namespace mnv3
