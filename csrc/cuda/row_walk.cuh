// How a kernel walks the reduced dim ("row") of one position, shared by softmax and the losses:
//   CachedWalk:  a block per row, the row held in registers (16-byte packs), read from memory
//                once however many passes the kernel makes; rows up to 512 threads' packs.
//   BlockWalk:   a block per row of any length; every pass reads memory (16-byte packs where
//                aligned), the later passes backwards, so that they start on what the previous
//                pass left in L2.
//   ThreadWalk:  a thread per row, for rows strided in memory ({outer, dim, inner} with
//                inner > 1): neighbouring threads read neighbouring rows, so loads coalesce.
//   ClusterWalk: a cluster of kClusterBlocks blocks per row (sm_90), each holding a slice in
//                registers as CachedWalk does: rows up to kClusterBlocks times longer, read once.
// Each offers at(c), leader(), read(data, n, fn(c, value)), map(data, out, n, fn(c, value) -> T),
// sum(v, shared) and max_sum(x, n, shared[, load]) over the row (of load(value): by default the
// value widened to the accumulation type).
#pragma once

#include "common.cuh"

#include <cooperative_groups.h>

#include <type_traits>

namespace pyops::cuda {

template <typename T>
struct Shared {
  MaxSum<T> max_sum[32];
  T values[32];
};

template <typename T>
struct Widen {
  template <typename S>
  __device__ T operator()(S v) const { return static_cast<T>(v); }
};

// out[i] = fn(i, row[i]) by the block's threads, packed when allowed, last packs first.
template <typename scalar_t, typename Fn>
__device__ __forceinline__ void map_row_backwards(const scalar_t* row, scalar_t* out, int64_t n,
                                                  bool packed, Fn fn) {
  constexpr int kVec = vec_size<scalar_t>();
  int64_t tail = 0;
  if (packed) {
    const int64_t packs = n / kVec;
    tail = packs * kVec;
    for (int64_t p = packs - 1 - threadIdx.x; p >= 0; p -= blockDim.x) {
      const Pack<scalar_t> pack = reinterpret_cast<const Pack<scalar_t>*>(row)[p];
      Pack<scalar_t> result;
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        result.v[j] = static_cast<scalar_t>(fn(p * kVec + j, pack.v[j]));
      }
      reinterpret_cast<Pack<scalar_t>*>(out)[p] = result;
    }
  }
  for (int64_t i = tail + threadIdx.x; i < n; i += blockDim.x) {
    out[i] = static_cast<scalar_t>(fn(i, row[i]));
  }
}

struct BlockWalk {
  int64_t base;
  bool packed;

  __device__ int64_t at(int64_t c) const { return base + c; }
  __device__ bool leader() const { return threadIdx.x == 0; }
  template <typename scalar_t, typename Fn>
  __device__ void read(const scalar_t* data, int64_t n, Fn fn) const {
    for_row(data + base, n, packed, fn);
  }
  template <typename scalar_t, typename Fn>
  __device__ void map(const scalar_t* data, scalar_t* out, int64_t n, Fn fn) const {
    map_row_backwards(data + base, out + base, n, packed, fn);
  }
  template <typename T>
  __device__ T sum(T v, Shared<T>& shared) const { return block_sum(v, shared.values); }
  template <typename scalar_t, typename T = at::opmath_type<scalar_t>, typename Load = Widen<T>>
  __device__ MaxSum<T> max_sum(const scalar_t* x, int64_t n, Shared<T>& shared,
                               Load load = {}) const {
    auto part = MaxSum<T>::empty();
    read(x, n, [&](int64_t, scalar_t v) { part.add(load(v)); });
    return block_max_sum(part, shared.max_sum);
  }
};

// The most packs a thread of a kernel caching one row holds: 64 elements of float, 16 of
// double, 64 of the half types (8 packs). Measured on an H200 (benchmarks/NOTES.md, v2): more
// spilled registers, and a bfloat16 row held in 16 packs ran at 41 % of copy.
template <typename scalar_t>
constexpr int max_packs_per_thread() { return sizeof(scalar_t) == 4 ? 16 : 8; }

// The most threads of a block whose threads hold kPacks each: their registers must fit the
// multiprocessor's 64K (64 per thread at 1024 threads, 128 at 512). Also the kernels' launch
// bounds.
constexpr int cached_threads_limit(int packs_per_thread) {
  return packs_per_thread <= 4 ? 1024 : 512;
}

template <typename scalar_t, int kPacks>
struct CachedWalk {
  static constexpr int kVec = vec_size<scalar_t>();
  const scalar_t* source;  // the cached row's tensor; reads of other tensors go to memory
  int64_t base, packs;
  Pack<scalar_t> cache[kPacks];

  // Loads row `base` of `x` (n elements, n % kVec == 0, 16-byte aligned), all loads in flight
  // before any is used.
  __device__ CachedWalk(const scalar_t* x, int64_t base, int64_t n)
      : source(x), base(base), packs(n / kVec) {
    const Pack<scalar_t>* row = reinterpret_cast<const Pack<scalar_t>*>(x + base);
#pragma unroll
    for (int k = 0; k < kPacks; ++k) {
      const int64_t p = threadIdx.x + int64_t{k} * blockDim.x;
      if (p < packs) cache[k] = row[p];
    }
  }

  __device__ int64_t at(int64_t c) const { return base + c; }
  __device__ bool leader() const { return threadIdx.x == 0; }

  template <typename Fn>
  __device__ void each_cached(Fn fn) const {
#pragma unroll
    for (int k = 0; k < kPacks; ++k) {
      const int64_t p = threadIdx.x + int64_t{k} * blockDim.x;
      if (p < packs) {
#pragma unroll
        for (int j = 0; j < kVec; ++j) fn(p * kVec + j, cache[k].v[j]);
      }
    }
  }
  template <typename Fn>
  __device__ void read(const scalar_t* data, int64_t n, Fn fn) const {
    if (data == source) {
      each_cached(fn);
    } else {
      for_row(data + base, n, true, fn);
    }
  }
  template <typename Fn>
  __device__ void map(const scalar_t* data, scalar_t* out, int64_t n, Fn fn) const {
    if (data != source) {
      map_row_backwards(data + base, out + base, n, true, fn);
      return;
    }
    Pack<scalar_t>* row = reinterpret_cast<Pack<scalar_t>*>(out + base);
#pragma unroll
    for (int k = 0; k < kPacks; ++k) {
      const int64_t p = threadIdx.x + int64_t{k} * blockDim.x;
      if (p < packs) {
        Pack<scalar_t> result;
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          result.v[j] = static_cast<scalar_t>(fn(p * kVec + j, cache[k].v[j]));
        }
        row[p] = result;
      }
    }
  }
  template <typename T>
  __device__ T sum(T v, Shared<T>& shared) const { return block_sum(v, shared.values); }
  template <typename T = at::opmath_type<scalar_t>, typename Load = Widen<T>>
  __device__ MaxSum<T> max_sum(const scalar_t*, int64_t, Shared<T>& shared,
                               Load load = {}) const {
    return max_sum_over<T>([&](T v) { return block_max(v, shared.values); },
                           [&](T v) { return block_sum(v, shared.values); }, load);
  }
  // The max first, then one exp per element: no rescaling, as the row is at hand. max_of and
  // sum_of finish the threads' parts over the row (a block's, or a cluster's).
  template <typename T = at::opmath_type<scalar_t>, typename MaxOf, typename SumOf,
            typename Load = Widen<T>>
  __device__ MaxSum<T> max_sum_over(MaxOf max_of, SumOf sum_of, Load load = {}) const {
    T max = -INFINITY;
    each_cached([&](int64_t, scalar_t v) { max = nan_max(max, load(v)); });
    max = max_of(max);
    T total = 0;
    each_cached([&](int64_t, scalar_t v) { total += fast_exp(load(v) - max); });
    return {max, sum_of(total)};
  }
};

// Sum of term(c) for c < n by one thread, in blocks of 64 whose sums are added: a long row
// loses far less to rounding than in one running sum.
template <typename T, typename Term>
__device__ __forceinline__ T blocked_sum(int64_t n, Term term) {
  constexpr int64_t kBlock = 64;
  T total = 0;
  for (int64_t begin = 0; begin < n; begin += kBlock) {
    T part = 0;
    const int64_t end = begin + kBlock < n ? begin + kBlock : n;
    for (int64_t c = begin; c < end; ++c) part += term(c);
    total += part;
  }
  return total;
}

struct ThreadWalk {
  int64_t base, stride;

  __device__ int64_t at(int64_t c) const { return base + c * stride; }
  __device__ bool leader() const { return true; }
  template <typename scalar_t, typename Fn>
  __device__ void read(const scalar_t* data, int64_t n, Fn fn) const {
    for (int64_t c = 0; c < n; ++c) fn(c, data[at(c)]);
  }
  template <typename scalar_t, typename Fn>
  __device__ void map(const scalar_t* data, scalar_t* out, int64_t n, Fn fn) const {
    for (int64_t c = 0; c < n; ++c) out[at(c)] = static_cast<scalar_t>(fn(c, data[at(c)]));
  }
  template <typename T>
  __device__ T sum(T v, Shared<T>&) const { return v; }
  // Online in blocks of 64, merged: the rounding of blocked_sum.
  template <typename scalar_t, typename T = at::opmath_type<scalar_t>, typename Load = Widen<T>>
  __device__ MaxSum<T> max_sum(const scalar_t* x, int64_t n, Shared<T>&, Load load = {}) const {
    constexpr int64_t kBlock = 64;
    auto total = MaxSum<T>::empty();
    for (int64_t begin = 0; begin < n; begin += kBlock) {
      auto part = MaxSum<T>::empty();
      const int64_t end = begin + kBlock < n ? begin + kBlock : n;
      for (int64_t c = begin; c < end; ++c) part.add(load(x[at(c)]));
      total.merge(part);
    }
    return total.max == T(-INFINITY) ? MaxSum<T>{total.max, T(NAN)} : total;
  }
};

constexpr int kClusterBlocks = 8;  // the portable cluster size

// The packs of a row's slice that each block of its cluster holds.
__host__ __device__ inline int64_t cluster_slice(int64_t packs) {
  return (packs + kClusterBlocks - 1) / kClusterBlocks;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// op over one value per block of the cluster (each block's own reduction), in rank order, so
// every block gets the same bits; through distributed shared memory.
template <typename T, typename Op>
__device__ T cluster_reduce(T block_value, Op op) {
  __shared__ T value;  // this block's part, read by the other blocks of its cluster
  auto cluster = cooperative_groups::this_cluster();
  if (threadIdx.x == 0) value = block_value;
  cluster.sync();
  T total = *cluster.map_shared_rank(&value, 0);
  for (int rank = 1; rank < kClusterBlocks; ++rank) {
    total = op(total, *cluster.map_shared_rank(&value, rank));
  }
  cluster.sync();  // every block has read `value` before any writes it again or exits
  return total;
}

// Row `row` (n elements from x + row * n, packed) split over the cluster: this block holds
// packs [rank * slice, (rank + 1) * slice) in registers. Indices passed to fn are the row's;
// sums and max_sum span the cluster; the leader is the first block's first thread.
template <typename scalar_t, int kPacks>
struct ClusterWalk {
  static constexpr int kVec = vec_size<scalar_t>();
  int64_t row_base, offset, count;  // the row's first element; the slice's offset and length
  CachedWalk<scalar_t, kPacks> slice;

  __device__ ClusterWalk(const scalar_t* x, int64_t row, int64_t n, int64_t rank)
      : row_base(row * n),
        offset(std::min(rank * cluster_slice(n / kVec), n / kVec) * kVec),
        count(std::min(cluster_slice(n / kVec) * kVec, n - offset)),
        slice(x, row_base + offset, count) {}

  __device__ int64_t at(int64_t c) const { return row_base + c; }
  __device__ bool leader() const {
    return threadIdx.x == 0 && cooperative_groups::this_cluster().block_rank() == 0;
  }
  template <typename Fn>
  __device__ void read(const scalar_t* data, int64_t, Fn fn) const {
    slice.read(data, count, [&](int64_t i, scalar_t v) { fn(offset + i, v); });
  }
  template <typename Fn>
  __device__ void map(const scalar_t* data, scalar_t* out, int64_t, Fn fn) const {
    slice.map(data, out, count, [&](int64_t i, scalar_t v) { return fn(offset + i, v); });
  }
  template <typename T>
  __device__ T sum(T v, Shared<T>& shared) const {
    return cluster_reduce(block_sum(v, shared.values), Plus{});
  }
  template <typename T = at::opmath_type<scalar_t>, typename Load = Widen<T>>
  __device__ MaxSum<T> max_sum(const scalar_t*, int64_t, Shared<T>& shared,
                               Load load = {}) const {
    return slice.template max_sum_over<T>(
        [&](T v) { return cluster_reduce(block_max(v, shared.values), NanMax{}); },
        [&](T v) { return sum(v, shared); }, load);
  }
};
#endif

// Launch shape of a block-per-row kernel: kPacks packs per thread held in registers
// (CachedWalk), or 0 for BlockWalk.
struct RowLaunch {
  int packs_per_thread;
  int threads;
};

// How to cache a row of n elements: with the fewest packs per thread (up to max_per_thread)
// that keep the block within preferred_threads, else within the register limit; BlockWalk when
// the row is not packable or too long for that. Measured on an H200 (v2): softmax prefers 256
// threads (98 % of copy at 32768x4096 float32), cross-entropy's larger kernel 1024.
template <typename scalar_t>
RowLaunch row_launch(int64_t n, bool packable, int max_per_thread, int preferred_threads) {
  const int64_t packs = n / vec_size<scalar_t>();
  if (packable) {
    for (const int64_t limit : {int64_t{preferred_threads}, int64_t{1024}}) {
      for (int per_thread = 1; per_thread <= max_per_thread; per_thread *= 2) {
        const int64_t threads = (packs + per_thread - 1) / per_thread;
        if (threads <= std::min<int64_t>(limit, cached_threads_limit(per_thread))) {
          return {per_thread, static_cast<int>(std::max<int64_t>(32, (threads + 31) / 32 * 32))};
        }
      }
    }
  }
  return {0, row_threads(n)};
}

// Launch bounds of a block-per-row kernel instantiated with kPacks (0: BlockWalk, up to 1024).
constexpr int row_kernel_threads(int packs_per_thread) {
  return packs_per_thread == 0 ? 1024 : cached_threads_limit(packs_per_thread);
}

// The launch shape of a cluster-per-row kernel for rows of n packable elements: each block
// caches its slice as row_launch would have it. packs_per_thread 0 where a cluster does not
// apply: before sm_90, or a slice too long for one block's registers.
template <typename scalar_t>
RowLaunch cluster_row_launch(int64_t n, int max_per_thread, int preferred_threads) {
  if (at::cuda::getCurrentDeviceProperties()->major < 9) return {0, 0};
  const int64_t slice = cluster_slice(n / vec_size<scalar_t>()) * vec_size<scalar_t>();
  return row_launch<scalar_t>(slice, /*packable=*/true, max_per_thread, preferred_threads);
}

// Calls launch(std::integral_constant<int, kPacks>) for the kPacks of `shape`.
template <typename Launch>
void with_packs_per_thread(const RowLaunch& shape, Launch launch) {
  switch (shape.packs_per_thread) {
    case 1: return launch(std::integral_constant<int, 1>{});
    case 2: return launch(std::integral_constant<int, 2>{});
    case 4: return launch(std::integral_constant<int, 4>{});
    case 8: return launch(std::integral_constant<int, 8>{});
    case 16: return launch(std::integral_constant<int, 16>{});
    default: return launch(std::integral_constant<int, 0>{});
  }
}

// Launches kernel_of(std::integral_constant<int, kPacks>) with shape's packs per thread, in
// clusters of kClusterBlocks along x, a cluster per row (`rows` of them, the kernel striding over
// any beyond the grid). False (nothing launched) where shape holds no row in registers or no
// cluster of that shape fits the device, e.g. a partition with too few multiprocessors per GPC.
template <typename KernelOf, typename... Args>
bool launch_clusters(const RowLaunch& shape, KernelOf kernel_of, int64_t rows,
                     cudaStream_t stream, Args... args) {
  bool launched = false;
  with_packs_per_thread(shape, [&](auto packs) {
    if constexpr (decltype(packs)::value > 0) {
      const auto kernel = kernel_of(packs);
      cudaLaunchConfig_t config = {};
      config.gridDim =
          dim3(static_cast<unsigned>(std::min<int64_t>(rows, 1 << 27) * kClusterBlocks));
      config.blockDim = dim3(shape.threads);
      config.stream = stream;
      cudaLaunchAttribute cluster;
      cluster.id = cudaLaunchAttributeClusterDimension;
      cluster.val.clusterDim.x = kClusterBlocks;
      cluster.val.clusterDim.y = 1;
      cluster.val.clusterDim.z = 1;
      config.attrs = &cluster;
      config.numAttrs = 1;
      int fitting = 0;
      if (cudaOccupancyMaxActiveClusters(&fitting, kernel, &config) != cudaSuccess ||
          fitting == 0) {
        (void)cudaGetLastError();  // not sticky: clear it, the caller takes another kernel
        return;
      }
      C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, args...));
      launched = true;
    }
  });
  return launched;
}

// The walk of row `row` (n elements from x + row * n) for a kernel instantiated with kPacks.
template <typename scalar_t, int kPacks>
__device__ auto row_walk(const scalar_t* x, int64_t row, int64_t n, bool packed) {
  if constexpr (kPacks == 0) {
    return BlockWalk{row * n, packed};
  } else {
    return CachedWalk<scalar_t, kPacks>(x, row * n, n);
  }
}

}  // namespace pyops::cuda
