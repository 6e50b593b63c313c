// Whether the calling thread holds Python's GIL, and the GIL released for a scope. Compiled
// autograd calls a node's backward from Python, holding the GIL, where the engine never does.
// The Python module (csrc/python_module.cpp) installs the hooks; without Python (a C++ program)
// no thread holds it.
#pragma once

namespace pyops::gil {

struct Hooks {
  bool (*held)();
  void* (*release)();  // the thread's state, for restore
  void (*restore)(void*);
};

inline Hooks hooks{[] { return false; }, nullptr, nullptr};

class Released {
 public:
  Released() : state_(hooks.held() ? hooks.release() : nullptr) {}
  ~Released() {
    if (state_ != nullptr) hooks.restore(state_);
  }
  Released(const Released&) = delete;
  Released& operator=(const Released&) = delete;

 private:
  void* state_;
};

}  // namespace pyops::gil
