// The Python module pyops._C: it carries the operator schemas (csrc/ops.cpp is linked in) and
// the facts fixed at compile time, which pyops.build_info() reports, the list of activations
// (csrc/activations.h), the GIL hooks of csrc/gil.h, and direct(): operators called from
// Python without torch.ops' generic argument parsing.
#include <Python.h>

#include "activations.h"
#include "gil.h"

#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/headeronly/version.h>

#include <memory>
#include <string>

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

// An operator's default overload called with positional tensors (torch.Tensor or Parameter),
// ints, floats and bools: what torch.ops would do, without its generic argument parsing, which
// costs more than a small kernel. An argument torch.nn.functional would refuse raises its
// TypeError; anything else (keywords, a subclass, a torch-function mode, another Python type)
// goes to the OpOverload itself, so that semantics and errors stay torch.ops'.
struct Direct {
  PyMethodDef method;
  std::string name;
  c10::OperatorHandle op;
  PyObject* overload;  // owned
};

bool to_ivalue(PyObject* obj, const c10::TypePtr& type, c10::IValue& out) {
  switch (type->kind()) {
    case c10::TypeKind::TensorType:
      if (!THPVariable_CheckExact(obj)) return false;
      out = THPVariable_Unpack(obj);
      return true;
    case c10::TypeKind::OptionalType:
      if (obj == Py_None) {
        out = c10::IValue();
        return true;
      }
      return to_ivalue(obj, type->containedType(0), out);
    case c10::TypeKind::IntType: {
      if (!PyLong_CheckExact(obj)) return false;
      const long long value = PyLong_AsLongLong(obj);
      if (value == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return false;
      }
      out = static_cast<int64_t>(value);
      return true;
    }
    case c10::TypeKind::FloatType: {
      if (PyFloat_CheckExact(obj)) {
        out = PyFloat_AS_DOUBLE(obj);
        return true;
      }
      if (!PyLong_CheckExact(obj)) return false;
      const double value = PyLong_AsDouble(obj);
      if (value == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return false;
      }
      out = value;
      return true;
    }
    case c10::TypeKind::BoolType:
      if (!PyBool_Check(obj)) return false;
      out = obj == Py_True;
      return true;
    default:
      return false;
  }
}

// Whether torch's argument parser refuses obj for an argument of `type` where the OpOverload
// would raise a RuntimeError or take it (a bool or a dtype as an int). Tensor subclasses and
// other objects with __torch_function__ are left to the OpOverload.
bool refused(PyObject* obj, const c10::TypePtr& type) {
  if (THPVariable_Check(obj) || PyObject_HasAttrString(obj, "__torch_function__")) return false;
  switch (type->kind()) {
    case c10::TypeKind::OptionalType:
      return obj != Py_None && refused(obj, type->containedType(0));
    case c10::TypeKind::TensorType:
      return true;
    case c10::TypeKind::IntType:  // (an array converts to a number, but torch takes none)
      return PyBool_Check(obj) || !PyIndex_Check(obj) || PySequence_Check(obj);
    case c10::TypeKind::FloatType:
    case c10::TypeKind::BoolType:
      return !PyNumber_Check(obj) || PyComplex_Check(obj) || PySequence_Check(obj);
    default:
      return false;
  }
}

// torch.nn.functional's TypeError for a refused argument.
PyObject* argument_error(const c10::FunctionSchema& schema, size_t i, PyObject* obj) {
  const auto& argument = schema.arguments()[i];
  auto type = argument.type();
  if (type->kind() == c10::TypeKind::OptionalType) type = type->containedType(0);
  const std::string op = schema.name().substr(schema.name().find("::") + 2);
  const std::string name = argument.name() == "self" ? "input" : argument.name();
  PyErr_Format(PyExc_TypeError, "%s(): argument '%s' (position %zu) must be %s, not %s",
               op.c_str(), name.c_str(), i + 1, type->str().c_str(), Py_TYPE(obj)->tp_name);
  return nullptr;
}

// Returns the GIL when the call ends, by return or exception.
struct WithoutGil {
  PyThreadState* state = PyEval_SaveThread();
  ~WithoutGil() { PyEval_RestoreThread(state); }
};

PyObject* call_direct(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  auto* direct = static_cast<Direct*>(PyCapsule_GetPointer(self, nullptr));
  HANDLE_TH_ERRORS
  const auto& arguments = direct->op.schema().arguments();
  const auto given = static_cast<size_t>(nargs);
  bool plain = kwnames == nullptr && given <= arguments.size() &&
               !at::impl::torch_function_mode_enabled();
  torch::jit::Stack stack;
  stack.reserve(arguments.size());
  for (size_t i = 0; plain && i < arguments.size(); ++i) {
    if (i < given) {
      plain = to_ivalue(args[i], arguments[i].type(), stack.emplace_back());
      if (!plain && refused(args[i], arguments[i].type())) {
        return argument_error(direct->op.schema(), i, args[i]);
      }
    } else if (arguments[i].default_value()) {
      stack.push_back(*arguments[i].default_value());
    } else {
      plain = false;
    }
  }
  if (!plain) return PyObject_Vectorcall(direct->overload, args, nargs, kwnames);
  {
    WithoutGil released;
    direct->op.callBoxed(stack);
  }
  if (stack.empty()) Py_RETURN_NONE;
  if (stack.size() == 1) return THPVariable_Wrap(std::move(stack[0]).toTensor());
  PyObject* tuple = PyTuple_New(static_cast<Py_ssize_t>(stack.size()));
  if (tuple == nullptr) return nullptr;
  for (size_t i = 0; i < stack.size(); ++i) {
    PyObject* item = THPVariable_Wrap(std::move(stack[i]).toTensor());
    if (item == nullptr) {
      Py_DECREF(tuple);
      return nullptr;
    }
    PyTuple_SET_ITEM(tuple, static_cast<Py_ssize_t>(i), item);
  }
  return tuple;
  END_HANDLE_TH_ERRORS
}

// direct(name, overload): the callable for operator `name` ("pyops::relu") whose OpOverload
// is `overload`; the OpOverload itself when its outputs are not all tensors.
PyObject* direct(PyObject*, PyObject* args) {
  const char* name = nullptr;
  PyObject* overload = nullptr;
  if (!PyArg_ParseTuple(args, "sO", &name, &overload)) return nullptr;
  HANDLE_TH_ERRORS
  const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
  for (const auto& ret : op.schema().returns()) {
    if (ret.type()->kind() != c10::TypeKind::TensorType) {
      Py_INCREF(overload);
      return overload;
    }
  }
  auto owned = std::make_unique<Direct>(Direct{{}, op.schema().name(), op, overload});
  owned->method = {owned->name.c_str(), reinterpret_cast<PyCFunction>(call_direct),
                   METH_FASTCALL | METH_KEYWORDS, nullptr};
  PyObject* capsule = PyCapsule_New(owned.get(), nullptr, [](PyObject* capsule) {
    auto* direct = static_cast<Direct*>(PyCapsule_GetPointer(capsule, nullptr));
    Py_DECREF(direct->overload);
    delete direct;
  });
  if (capsule == nullptr) return nullptr;
  Py_INCREF(overload);
  Direct* raw = owned.release();
  PyObject* function = PyCFunction_NewEx(&raw->method, capsule, nullptr);
  Py_DECREF(capsule);
  return function;
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"direct", direct, METH_VARARGS, "An operator called without torch.ops' argument parsing."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "pyops compiled core", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C() {
  pyops::gil::hooks = {[] { return PyGILState_Check() != 0; },
                       []() -> void* { return PyEval_SaveThread(); },
                       [](void* state) {
                         PyEval_RestoreThread(static_cast<PyThreadState*>(state));
                       }};
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
