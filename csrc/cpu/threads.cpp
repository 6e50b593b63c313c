// What pyops reads of a CPU kernel library through ctypes (pyops/_loader.py): whether its
// kernels run in parallel, and which threads ran them.
#include "common.h"

#define PYOPS_EXPORT extern "C" __attribute__((visibility("default")))

// 1 where at::parallel_for uses torch's thread pool: the library was compiled with OpenMP.
PYOPS_EXPORT int pyops_cpu_parallel() {
#ifdef INTRA_OP_PARALLEL
  return 1;
#else
  return 0;
#endif
}

// Switches the thread trace on or off and returns the threads seen since the last call (bit i:
// intra-op thread i), clearing them.
PYOPS_EXPORT uint64_t pyops_cpu_trace_threads(int on) {
  auto& trace = pyops::cpu::thread_trace;
  trace.on.store(on != 0, std::memory_order_relaxed);
  return trace.seen.exchange(0, std::memory_order_relaxed);
}
