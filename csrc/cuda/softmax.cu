// softmax, log_softmax and their backward ops on CUDA, over the {outer, dim, inner} layout of
// tensor_utils.h (a transposed input is permuted, not copied).
//   inner == 1: a block per row (row_walk.cuh): held in registers when it fits (read once);
//               a longer forward row, on sm_90, split over a cluster of blocks that each hold
//               a slice (read once); else an online max-and-sum pass and a write pass. 16-byte
//               packs when aligned.
//   inner > 1:  a thread per column; neighbouring threads read neighbouring columns, so the
//               loads along the reduced dim coalesce.
#include "row_walk.cuh"
#include "../kernel_lists.h"
#include "../softmax.h"

namespace pyops::cuda {
namespace {

// softmax or log_softmax of the row `walk` walks, by the threads sharing that walk.
template <typename scalar_t, typename Walk, typename T = at::opmath_type<scalar_t>>
__device__ __forceinline__ void softmax_row(const Walk& walk, const scalar_t* in, scalar_t* out,
                                            int64_t n, bool log, Shared<T>& shared) {
  const MaxSum<T> total = walk.max_sum(in, n, shared);
  const T log_sum = ::log(total.sum), scale = T(1) / total.sum;
  walk.map(in, out, n, [&](int64_t, scalar_t v) {
    const T shifted = static_cast<T>(v) - total.max;
    return log ? shifted - log_sum : fast_exp(shifted) * scale;
  });
}

template <typename scalar_t, int kPacks>
__global__ void __launch_bounds__(row_kernel_threads(kPacks))
softmax_rows_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out, int64_t rows,
                    int64_t n, bool packed, bool log) {
  __shared__ Shared<at::opmath_type<scalar_t>> shared;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    softmax_row(row_walk<scalar_t, kPacks>(in, r, n, packed), in, out, n, log, shared);
  }
}

// ---- rows longer than a block holds: a cluster of blocks per row (sm_90) ---------------------

// Launched in clusters of kClusterBlocks along x: cluster c walks rows c, c + clusters, ...
template <typename scalar_t, int kPacks>
__global__ void __launch_bounds__(row_kernel_threads(kPacks))
softmax_cluster_rows_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                            int64_t rows, int64_t n, bool log) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  __shared__ Shared<at::opmath_type<scalar_t>> shared;
  const int64_t rank = cooperative_groups::this_cluster().block_rank();
  for (int64_t r = blockIdx.x / kClusterBlocks; r < rows; r += gridDim.x / kClusterBlocks) {
    softmax_row(ClusterWalk<scalar_t, kPacks>(in, r, n, rank), in, out, n, log, shared);
  }
#endif
}

template <typename scalar_t>
__global__ void softmax_columns_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                       int64_t outer, int64_t n, int64_t inner, bool log) {
  Shared<at::opmath_type<scalar_t>> unused;  // a thread per column shares nothing
  const int64_t columns = outer * inner;
  for (int64_t c = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; c < columns;
       c += int64_t{blockDim.x} * gridDim.x) {
    softmax_row(ThreadWalk{(c / inner) * n * inner + c % inner, inner}, in, out, n, log, unused);
  }
}

template <typename T>
__device__ __forceinline__ T softmax_grad_term(T g, T y, bool log) { return log ? g : g * y; }

template <typename T>
__device__ __forceinline__ T softmax_grad(T g, T y, T total, bool log) {
  return log ? g - fast_exp(y) * total : y * (g - total);
}

// The backward of the row (or cluster slice) that y and g hold in registers, the same packs of
// out and grad; reduce(part) sums the threads' parts over the whole row.
template <typename scalar_t, int kPacks, typename Reduce, typename T = at::opmath_type<scalar_t>>
__device__ __forceinline__ void softmax_backward_cached(const CachedWalk<scalar_t, kPacks>& y,
                                                        const CachedWalk<scalar_t, kPacks>& g,
                                                        scalar_t* result, bool log, Reduce reduce) {
  T part = 0;
#pragma unroll
  for (int k = 0; k < kPacks; ++k) {
    if (threadIdx.x + int64_t{k} * blockDim.x >= y.packs) continue;
#pragma unroll
    for (int j = 0; j < vec_size<scalar_t>(); ++j) {
      part += softmax_grad_term<T>(g.cache[k].v[j], y.cache[k].v[j], log);
    }
  }
  const T total = reduce(part);
  Pack<scalar_t>* row = reinterpret_cast<Pack<scalar_t>*>(result + y.base);
#pragma unroll
  for (int k = 0; k < kPacks; ++k) {
    const int64_t p = threadIdx.x + int64_t{k} * blockDim.x;
    if (p >= y.packs) continue;
    Pack<scalar_t> value;
#pragma unroll
    for (int j = 0; j < vec_size<scalar_t>(); ++j) {
      const T grad_in = softmax_grad<T>(g.cache[k].v[j], y.cache[k].v[j], total, log);
      value.v[j] = static_cast<scalar_t>(grad_in);
    }
    row[p] = value;
  }
}

// grad_in = y * (g - sum(g * y)) for softmax, g - exp(y) * sum(g) for log_softmax. Cached: both
// rows in registers, each read once.
template <typename scalar_t, int kPacks>
__global__ void __launch_bounds__(row_kernel_threads(kPacks))
softmax_backward_rows_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ out,
                             scalar_t* __restrict__ result, int64_t rows, int64_t n, bool packed,
                             bool log) {
  using T = at::opmath_type<scalar_t>;
  __shared__ Shared<T> shared;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const auto y = row_walk<scalar_t, kPacks>(out, r, n, packed);
    if constexpr (kPacks == 0) {
      T part = 0;
      y.read(out, n, [&](int64_t i, scalar_t yv) {
        part += softmax_grad_term<T>(grad[y.at(i)], yv, log);
      });
      const T total = y.sum(part, shared);
      y.map(out, result, n, [&](int64_t i, scalar_t yv) {
        return softmax_grad<T>(grad[y.at(i)], yv, total, log);
      });
    } else {
      const CachedWalk<scalar_t, kPacks> g(grad, r * n, n);
      softmax_backward_cached(y, g, result, log, [&](T part) { return y.sum(part, shared); });
    }
  }
}

// The backward of rows one block cannot hold: a cluster of blocks per row (sm_90), each holding
// its slice of out and grad; launched along x, cluster c walking rows c, c + clusters, ...
template <typename scalar_t, int kPacks>
__global__ void __launch_bounds__(row_kernel_threads(kPacks))
softmax_backward_cluster_rows_kernel(const scalar_t* __restrict__ grad,
                                     const scalar_t* __restrict__ out,
                                     scalar_t* __restrict__ result, int64_t rows, int64_t n,
                                     bool log) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using T = at::opmath_type<scalar_t>;
  __shared__ Shared<T> shared;
  const int64_t rank = cooperative_groups::this_cluster().block_rank();
  for (int64_t r = blockIdx.x / kClusterBlocks; r < rows; r += gridDim.x / kClusterBlocks) {
    const ClusterWalk<scalar_t, kPacks> y(out, r, n, rank);
    const CachedWalk<scalar_t, kPacks> g(grad, y.slice.base, y.count);
    softmax_backward_cached(y.slice, g, result, log, [&](T part) { return y.sum(part, shared); });
  }
#endif
}

template <typename scalar_t>
__global__ void softmax_backward_columns_kernel(const scalar_t* __restrict__ grad,
                                                const scalar_t* __restrict__ out,
                                                scalar_t* __restrict__ result, int64_t outer,
                                                int64_t n, int64_t inner, bool log) {
  using T = at::opmath_type<scalar_t>;
  const int64_t columns = outer * inner;
  for (int64_t c = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; c < columns;
       c += int64_t{blockDim.x} * gridDim.x) {
    const int64_t base = (c / inner) * n * inner + c % inner;
    const T total = blocked_sum<T>(n, [&](int64_t d) {
      return softmax_grad_term<T>(grad[base + d * inner], out[base + d * inner], log);
    });
    for (int64_t d = 0; d < n; ++d) {
      const int64_t at = base + d * inner;
      result[at] = static_cast<scalar_t>(softmax_grad<T>(grad[at], out[at], total, log));
    }
  }
}

// The kernels of csrc/softmax.h: a block (or a cluster) per row where the dim is innermost,
// a thread per position otherwise.
struct SoftmaxKernels {
  template <typename scalar_t>
  static void forward(const scalar_t* in, scalar_t* o, const Shape3& s, bool log) {
    const auto stream = at::cuda::getCurrentCUDAStream();
    if (s.inner == 1) {
      const bool packed = rows_packable(in, o, s.dim);
      const RowLaunch shape =
          row_launch<scalar_t>(s.dim, packed, max_packs_per_thread<scalar_t>(), 256);
      const RowLaunch cluster = packed && shape.packs_per_thread == 0
                                    ? cluster_row_launch<scalar_t>(
                                          s.dim, max_packs_per_thread<scalar_t>(), 256)
                                    : RowLaunch{0, 0};
      const auto kernel_of = [](auto packs) {
        return softmax_cluster_rows_kernel<scalar_t, decltype(packs)::value>;
      };
      if (!launch_clusters(cluster, kernel_of, s.outer, stream, in, o, s.outer, s.dim, log)) {
        with_packs_per_thread(shape, [&](auto packs) {
          softmax_rows_kernel<scalar_t, decltype(packs)::value>
              <<<row_blocks(s.outer), shape.threads, 0, stream>>>(in, o, s.outer, s.dim, packed,
                                                                  log);
        });
      }
    } else {
      softmax_columns_kernel<<<blocks_for(s.outer * s.inner), kThreads, 0, stream>>>(
          in, o, s.outer, s.dim, s.inner, log);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <typename scalar_t>
  static void backward(const scalar_t* gp, const scalar_t* yp, scalar_t* rp, const Shape3& s,
                       bool log) {
    const auto stream = at::cuda::getCurrentCUDAStream();
    if (s.inner == 1) {
      const bool packed = rows_packable(yp, rp, s.dim) && aligned16(gp);
      // two rows cached per block: half the packs per thread
      const int max_packs = max_packs_per_thread<scalar_t>() / 2;
      const RowLaunch shape = row_launch<scalar_t>(s.dim, packed, max_packs, 256);
      const RowLaunch cluster = packed && shape.packs_per_thread == 0
                                    ? cluster_row_launch<scalar_t>(s.dim, max_packs, 256)
                                    : RowLaunch{0, 0};
      const auto kernel_of = [](auto packs) {
        return softmax_backward_cluster_rows_kernel<scalar_t, decltype(packs)::value>;
      };
      if (!launch_clusters(cluster, kernel_of, s.outer, stream, gp, yp, rp, s.outer, s.dim, log)) {
        with_packs_per_thread(shape, [&](auto packs) {
          softmax_backward_rows_kernel<scalar_t, decltype(packs)::value>
              <<<row_blocks(s.outer), shape.threads, 0, stream>>>(gp, yp, rp, s.outer, s.dim,
                                                                  packed, log);
        });
      }
    } else {
      softmax_backward_columns_kernel<<<blocks_for(s.outer * s.inner), kThreads, 0, stream>>>(
          gp, yp, rp, s.outer, s.dim, s.inner, log);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CUDA, m) { PYOPS_SOFTMAX_KERNELS(m); }

}  // namespace pyops::cuda
