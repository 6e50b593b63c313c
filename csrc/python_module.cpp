// The Python module pyops._C: it carries the operator schemas (csrc/ops.cpp is linked in) and
// the facts fixed at compile time, which pyops.build_info() reports, the list of activations
// (csrc/activations.h), and the GIL hooks of csrc/gil.h.
#include <Python.h>

#include "activations.h"
#include "gil.h"

#include <torch/headeronly/version.h>

// setup.py passes the CUDA architectures as bare tokens (-DPYOPS_CUDA_ARCHS=8.0/9.0+PTX):
// a quoted string would not survive the build's shell.
#define PYOPS_STRINGIFY_(x) #x
#define PYOPS_STRINGIFY(x) PYOPS_STRINGIFY_(x)
#ifdef PYOPS_CUDA_ARCHS
#define PYOPS_CUDA_ARCHS_STRING PYOPS_STRINGIFY(PYOPS_CUDA_ARCHS)
#else
#define PYOPS_CUDA_ARCHS_STRING ""
#endif

namespace {

// "sigmoid:out ... silu:self ...": each activation and what its backward takes, for Python.
#define PYOPS_ACTIVATION_NAME(name, saved) #name ":" #saved " "
constexpr char kActivations[] = PYOPS_ACTIVATIONS(PYOPS_ACTIVATION_NAME);
#undef PYOPS_ACTIVATION_NAME

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "pyops compiled core", -1, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__C() {
  pyops::gil::hooks = {[] { return PyGILState_Check() != 0; },
                       []() -> void* { return PyEval_SaveThread(); },
                       [](void* state) { PyEval_RestoreThread(static_cast<PyThreadState*>(state)); }};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
#ifdef WITH_CUDA
  const long with_cuda = 1;
#else
  const long with_cuda = 0;
#endif
  if (PyModule_AddStringConstant(module, "torch_version", TORCH_VERSION) < 0 ||
      PyModule_AddIntConstant(module, "with_cuda", with_cuda) < 0 ||
      PyModule_AddStringConstant(module, "cuda_archs", PYOPS_CUDA_ARCHS_STRING) < 0 ||
      PyModule_AddStringConstant(module, "activations", kActivations) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
