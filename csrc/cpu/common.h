// Helpers shared by the CPU kernel families. Each CPU kernel library is compiled once per
// instruction set (see setup.py), so everything here is inline and ISA-neutral in source (but
// for one AVX-512 instruction in exp_of).
#pragma once

#include "../tensor_utils.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <tuple>

#ifdef __linux__
#include <sys/mman.h>
#endif
#ifdef CPU_CAPABILITY_AVX512
#include <immintrin.h>
#endif

namespace pyops::cpu {

// Half types compute in float; float and double in themselves.
template <typename scalar_t>
using acc_t = std::conditional_t<at::is_reduced_floating_point_v<scalar_t>, float, scalar_t>;

// exp of each lane. For float, inline instead of ATen's out-of-line Sleef call, whose cost
// bounds the softmax and cross-entropy rows: exp(r) * 2^n with n = round(x / ln 2), r reduced
// with ln 2 in two parts and exp(r) to degree 7 (|r| <= ln2 / 2). Within one ulp, as Sleef's
// (tests/test_softmax.py; figures in benchmarks/NOTES.md); exp(-inf) = 0, exp(inf) = inf, NaN
// stays NaN, results below FLT_MIN rounded once.
template <typename T>
inline at::vec::Vectorized<T> exp_of(const at::vec::Vectorized<T>& v) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, float>) {
    using V = at::vec::Vectorized<float>;
    // Clamped so that n stays in range (ATen's clamp on these ISAs passes NaN through).
    const V x = at::vec::clamp(v, V(-104.f), V(89.f));
    const V n = (x * V(1.44269504088896341f)).round();
    V r = at::vec::fmadd(n, V(-0.693145751953125f), x);
    r = at::vec::fmadd(n, V(-1.428606765330187e-06f), r);
    V p(1.f / 5040);
    for (const float c : {1.f / 720, 1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f}) {
      p = at::vec::fmadd(p, r, V(c));
    }
#ifdef CPU_CAPABILITY_AVX512
    return _mm512_scalef_ps(p, n);
#else
    // p * 2^n as two powers of two, each a normal float for n in [-150, 129].
    using VI = at::vec::Vectorized<int32_t>;
    const VI ni = at::vec::convert_to_int_of_same_size(n);
    const VI half = ni >> VI(1);
    const auto pow2 = [](const VI& e) { return at::vec::cast<float>((e + VI(127)) << VI(23)); };
    return p * pow2(half) * pow2(ni - half);
#endif
  }
#endif
  return v.exp();
}

// tanh of each lane, for float on the ISAs where exp_of is inline: ATen's Sleef tanh costs
// five times exp_of. |x| >= 1: 1 - 2 / (exp(2|x|) + 1), where the quotient is at most 0.31
// of the result, so that exp_of's error stays below an ulp; below, where it would not, an odd
// polynomial (least squares on Chebyshev nodes of [0, 1.1], 0.03 ulp from tanh). Sign and -0
// from x, NaN stays NaN.
template <typename T>
inline at::vec::Vectorized<T> tanh_of(const at::vec::Vectorized<T>& x) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, float>) {
    using V = at::vec::Vectorized<float>;
    const V a = x.abs();
    const V far = V(1.f) - V(2.f) / (exp_of(a + a) + V(1.f));
    const V s = a * a;
    V p(-3.0078441e-05f);
    for (const float c : {2.5441189e-04f, -1.0855170e-03f, 3.3202867e-03f, -8.7339664e-03f,
                          2.1831332e-02f, -5.3961787e-02f, 1.3333279e-01f, -3.3333331e-01f}) {
      p = at::vec::fmadd(p, s, V(c));
    }
    const V near = at::vec::fmadd(a * s, p, a);
    // Both are >= 0: x's sign bit ORed in (ATen's copysign is a Sleef call).
    return V::blendv(far, near, a < V(1.f)) | (x & V(-0.f));
  }
#endif
  return x.tanh();
}

// Asks Linux to back a fresh buffer with 2 MiB pages. A large new output otherwise costs one
// page fault per 4 KiB on first write, which takes longer than the arithmetic; this is what
// torch's own THP_MEM_ALLOC_ENABLE=1 does for every allocation.
inline void advise_huge_pages(void* data, size_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t{1} << 21;
  if (nbytes < 2 * kHugePage) return;
  const auto begin = (reinterpret_cast<uintptr_t>(data) + kHugePage - 1) & ~(kHugePage - 1);
  const auto end = (reinterpret_cast<uintptr_t>(data) + nbytes) & ~(kHugePage - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

// at::empty_like / at::empty for a kernel's output, with huge pages for large ones. Dense
// outputs come from the CPU allocator directly, as ATen's own kernels get theirs: through the
// dispatcher, at::empty_like costs a good part of a small call.
inline at::Tensor output_like(const at::Tensor& like) {
  at::Tensor out = like.is_non_overlapping_and_dense()
      ? at::Tensor(at::detail::empty_strided_cpu(like.sizes(), like.strides(), like.scalar_type()))
      : at::empty_like(like);
  advise_huge_pages(out.data_ptr(), out.nbytes());
  return out;
}

inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::detail::empty_cpu(sizes, options);
  advise_huge_pages(out.data_ptr(), out.nbytes());
  return out;
}

// ---- threads ---------------------------------------------------------------------------------

// Which of torch's intra-op threads ran pyops work while tracing was on (bit i: thread i), so
// that a test can prove no kernel runs serially. Off, it costs one relaxed load per chunk.
struct ThreadTrace {
  std::atomic<bool> on{false};
  std::atomic<uint64_t> seen{0};
};
inline ThreadTrace thread_trace;

// at::parallel_for, through which every CPU kernel splits its work. The libraries are built with
// OpenMP, as torch is, so this runs on torch's thread pool and honours torch.set_num_threads.
template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  at::parallel_for(begin, end, grain, [&](int64_t b, int64_t e) {
    if (thread_trace.on.load(std::memory_order_relaxed)) {
      thread_trace.seen.fetch_or(uint64_t{1} << (at::get_thread_num() % 64),
                                 std::memory_order_relaxed);
    }
    f(b, e);
  });
}

template <typename scalar_t>
inline at::vec::Vectorized<scalar_t> load(const scalar_t* p, int64_t count) {
  using Vec = at::vec::Vectorized<scalar_t>;
  return count == Vec::size() ? Vec::loadu(p) : Vec::loadu(p, count);
}

// `count` (at most Vectorized<T>::size()) elements of p as a vector of T, the accumulation type:
// half types widened to float on the way in, so no float copy of their data is needed.
template <typename T, typename S>
inline at::vec::Vectorized<T> load_as(const S* p, int64_t count) {
  if constexpr (std::is_same_v<S, T>) {
    return load(p, count);
  } else {
    at::vec::Vectorized<T> v;
    if (count == v.size()) {
      at::vec::load_to_float(p, v);  // a plain half-width load, not a masked one
      return v;
    }
    return std::get<0>(at::vec::convert_to_float<S>(at::vec::Vectorized<S>::loadu(p, count)));
  }
}

// 2 * Vectorized<T>::size() elements of p as two vectors of T, half types widened.
template <typename T, typename S>
inline std::tuple<at::vec::Vectorized<T>, at::vec::Vectorized<T>> load_two_as(const S* p) {
  using V = at::vec::Vectorized<T>;
  if constexpr (std::is_same_v<S, T>) {
    return {V::loadu(p), V::loadu(p + V::size())};
  } else {
    return at::vec::convert_to_float<S>(at::vec::Vectorized<S>::loadu(p));
  }
}

// out[i] = vec_fn(in0[i], in1[i], ...) for one whole vector of a half type Out (two float
// vectors): every input loaded once, widened to float, and the result rounded once.
template <typename Out, typename VecFn, typename... Inputs>
inline void map_half_vector(const VecFn& vec_fn, Out* out, const Inputs*... in) {
  const auto halves = std::make_tuple(load_two_as<float>(in)...);
  const auto lo = std::apply([&](const auto&... h) { return vec_fn(std::get<0>(h)...); }, halves);
  const auto hi = std::apply([&](const auto&... h) { return vec_fn(std::get<1>(h)...); }, halves);
  at::vec::convert_from_float<Out>(lo, hi).store(out);
}

// The first `count` lanes of v stored as S, rounded once where S is a half type.
template <typename S, typename T>
inline void store_as(S* p, int64_t count, const at::vec::Vectorized<T>& v) {
  if constexpr (std::is_same_v<S, T>) {
    v.store(p, count);
  } else {
    const auto rounded = at::vec::convert_from_float<S>(v, v);
    if (count < at::vec::Vectorized<T>::size()) return rounded.store(p, count);
    // A whole float vector fills half of `rounded`: copied out, as a masked store of it is
    // slow on some CPUs (AMD Zen 4).
    S lanes[at::vec::Vectorized<S>::size()];
    rounded.store(lanes);
    std::memcpy(p, lanes, count * sizeof(S));
  }
}

// out[i] = vec_fn(in0[i], in1[i], ...) for n a multiple of the vector size. Half types are
// widened to float for vec_fn and rounded once on store: ATen's own map() may compute them in 16
// bits on some ISAs. One compiled copy serves whole vectors and the padded tail below, so an
// element's bits do not depend on where a thread's share ends (the compiler contracts a*b+c
// into FMAs differently in different copies).
template <typename scalar_t, typename VecFn, typename... Inputs>
C10_NOINLINE void vec_map_whole(const VecFn& vec_fn, scalar_t* out, int64_t n,
                                const Inputs*... in) {
  using Vec = at::vec::Vectorized<scalar_t>;
  for (int64_t i = 0; i < n; i += Vec::size()) {
    if constexpr (at::is_reduced_floating_point_v<scalar_t>) {
      map_half_vector(vec_fn, out + i, (in + i)...);
    } else {
      vec_fn(Vec::loadu(in + i)...).store(out + i);
    }
  }
}

template <typename scalar_t, typename VecFn, typename... Inputs>
inline void vec_map(const VecFn& vec_fn, scalar_t* out, int64_t n, const Inputs*... in) {
  constexpr int64_t kSize = at::vec::Vectorized<scalar_t>::size();
  const int64_t whole = n - n % kSize;
  vec_map_whole(vec_fn, out, whole, in...);
  if (whole == n) return;
  const int64_t tail = n - whole;
  auto padded = std::make_tuple(std::array<Inputs, kSize>{}...);
  std::apply([&](auto&... buf) { (std::copy_n(in + whole, tail, buf.data()), ...); }, padded);
  std::array<scalar_t, kSize> result;
  std::apply(
      [&](const auto&... buf) { vec_map_whole(vec_fn, result.data(), kSize, buf.data()...); },
      padded);
  std::copy_n(result.data(), tail, out + whole);
}

// vec_map over n elements, split across threads.
template <typename scalar_t, typename VecFn, typename... Inputs>
void parallel_map(const VecFn& vec_fn, scalar_t* out, int64_t n, const Inputs*... in) {
  parallel_for(0, n, at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
    vec_map(vec_fn, out + begin, end - begin, (in + begin)...);
  });
}

// The CPU side of the host code shared with CUDA (csrc/activations.h, csrc/softmax.h, ...): no
// device guard, outputs with huge pages, maps split across threads.
struct Backend {
  struct Guard {
    explicit Guard(at::Device) {}
  };
  static at::Tensor output_like(const at::Tensor& like) { return cpu::output_like(like); }
  static at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return cpu::new_output(sizes, options);
  }
  template <typename Fn, typename scalar_t, typename... Inputs>
  static void map(const Fn& fn, scalar_t* out, int64_t n, const Inputs*... in) {
    parallel_map(fn, out, n, in...);
  }
};

}  // namespace pyops::cpu
