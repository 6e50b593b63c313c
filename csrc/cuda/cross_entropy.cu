// cross_entropy (class-index or probability targets), nll_loss and their backward ops on CUDA,
// with the formulas of csrc/cpu/cross_entropy.cpp.
//
// Positions (the entries of the loss before reduction) are walked as softmax walks rows: a block
// per position when the classes are innermost in memory (16-byte packs where aligned), a thread
// per position otherwise, e.g. (N, C, d1, ...). The forward reads the logits once (twice with
// label smoothing or probability targets) and writes one loss and one float32 log-sum-exp per
// position; the backward reads them once and writes the gradient once.
//
// No host synchronisation: a target out of range trips a device-side assert, as in torch, and
// the 'mean' denominator (the summed weights of the targets) stays on the device. Reductions go
// through ATen's sum over per-position values, so the same input gives the same bits. A reduced
// loss takes three launches (the pass, one sum of its per-position values, one finishing
// thread) and its backward two to four: small, launch-bound shapes pay for little else.
#include "row_walk.cuh"
#include "../loss_inputs.h"
#include "../kernel_lists.h"

namespace pyops::cuda {
namespace {

// The loss' arguments in the accumulation type T, shared by every position.
template <typename T>
struct ClassArgs {
  int64_t classes;
  int64_t ignore_index;
  T keep;                // 1 - label_smoothing
  T eps_c;               // label_smoothing / classes
  const T* weight;       // classes entries, or nullptr for all ones
  const T* weight_sum;   // a device scalar, or nullptr for `classes`
  T z;                   // lse_square_scale
  T cap;                 // softcap, 0 for none

  __device__ T w(int64_t c) const { return weight ? weight[c] : T(1); }
  __device__ T total_weight() const { return weight_sum ? *weight_sum : T(classes); }
  // A logit as the loss sees it: capped to cap * tanh(x / cap) with a softcap.
  template <typename scalar_t>
  __device__ T logit(scalar_t v) const {
    const T x = static_cast<T>(v);
    return cap != T(0) ? cap * ::tanh(x / cap) : x;
  }
  // The gradient with respect to capped logit z made one with respect to the logit.
  __device__ T through_cap(T g, T z_logit) const {
    if (cap == T(0)) return g;
    const T t = z_logit / cap;
    return g * ((T(1) - t) * (T(1) + t));
  }
  __device__ T with_z(T loss, T lse) const { return z != T(0) ? loss + z * lse * lse : loss; }
  __device__ T with_z_share(T a, T lse) const { return z != T(0) ? a + T(2) * z * lse : a; }
};

// The upstream gradient of position p: per position for reduction='none', else one device
// scalar (already divided by the 'mean' denominator).
template <typename T>
struct Scale {
  const T* ptr;
  int64_t stride;
  __device__ T operator[](int64_t p) const { return ptr[p * stride]; }
};

// Per-position results of the forward (see csrc/cpu/cross_entropy.cpp for why `smooth` is kept
// apart from `loss`).
template <typename T>
struct ForwardOut {
  T* loss;
  T* smooth;  // nullptr unless ClassOptions::split_smoothing
  T* weight;  // class targets: w_t, 0 where ignored (the 'mean' denominator's terms)
  T* lse;
};

// The input gradient of one position, given its log-sum-exp:
//   class targets: s * (softmax_c * A - eps_c * w_c) - s * keep * w_t [c == t],
//                  A = keep * w_t + eps_c * sum(w)
//   probabilities: s * (softmax_c * sum(w q') - w_c q'_c), q' = keep * q + eps_c,
// with z-loss's 2 z lse added to A (or sum(w q')), softmax and the gradient taken of the capped
// logits and then multiplied by the cap's slope.
// An ignored position gets 0 * softmax: zero, or NaN where its log-sum-exp is NaN, as torch.
template <typename scalar_t, typename T, typename Walk>
__device__ __forceinline__ void ce_gradient(const Walk& walk, const scalar_t* x, const scalar_t* q,
                                            int64_t target, T s, T lse, const ClassArgs<T>& a,
                                            scalar_t* gi, Shared<T>& shared) {
  const int64_t C = a.classes;
  if (q) {
    T wq = 0;
    walk.read(q, C, [&](int64_t c, scalar_t v) {
      wq += a.w(c) * (static_cast<T>(v) * a.keep + a.eps_c);
    });
    wq = a.with_z_share(walk.sum(wq, shared), lse);
    walk.map(x, gi, C, [&](int64_t c, scalar_t v) {
      const T coef = a.w(c) * (static_cast<T>(q[walk.at(c)]) * a.keep + a.eps_c);
      const T z = a.logit(v);
      return a.through_cap(s * (fast_exp(z - lse) * wq - coef), z);
    });
    return;
  }
  if (target == a.ignore_index) {
    const T fill = lse != lse ? lse : T(0);
    walk.map(x, gi, C, [&](int64_t, scalar_t) { return fill; });
    return;
  }
  checked_target(target, C);
  const T w_t = a.w(target);
  const T coef = a.with_z_share(a.keep * w_t + a.eps_c * a.total_weight(), lse);
  const T at_target = s * a.keep * w_t;
  walk.map(x, gi, C, [&](int64_t c, scalar_t v) {
    const T z = a.logit(v);
    const T g = s * (fast_exp(z - lse) * coef - a.eps_c * a.w(c));
    return a.through_cap(c == target ? g - at_target : g, z);
  });
}

// The forward of one position; with `gi`, the gradient too (the fused path), scaled by `s`.
template <typename scalar_t, typename T, typename Walk>
__device__ __forceinline__ void ce_position(const Walk& walk, int64_t p, const scalar_t* x,
                                            const scalar_t* q, const int64_t* targets,
                                            const ClassArgs<T>& a, const ForwardOut<T>& out,
                                            scalar_t* gi, Scale<T> scale, Shared<T>& shared) {
  const int64_t C = a.classes;
  const int64_t target = q ? 0 : targets[p];
  const bool ignored = !q && target == a.ignore_index;
  if (!q && !ignored) checked_target(target, C);
  // Read before the reduction's barrier: the fused path may overwrite x (in place) after it.
  const T x_t = (!q && !ignored && walk.leader()) ? a.logit(x[walk.at(target)]) : T(0);
  const MaxSum<T> total =
      walk.max_sum(x, C, shared, [&](scalar_t v) { return a.logit(v); });
  const T max = total.max, log_sum = ::log(total.sum), lse = max + log_sum;
  if (walk.leader()) out.lse[p] = lse;
  if (q) {  // sum_c w_c q'_c (max - x_c + log_sum)
    T wq = 0, gap = 0;
    walk.read(x, C, [&](int64_t c, scalar_t v) {
      const T coef = a.w(c) * (static_cast<T>(q[walk.at(c)]) * a.keep + a.eps_c);
      wq += coef;
      gap += coef * (max - a.logit(v));
    });
    wq = walk.sum(wq, shared);
    gap = walk.sum(gap, shared);
    if (walk.leader()) out.loss[p] = a.with_z(gap + wq * log_sum, lse);
  } else {
    T smooth = 0;
    if (a.eps_c != T(0)) {  // sum_c w_c (max - x_c + log_sum)
      if (!ignored) {
        walk.read(x, C, [&](int64_t c, scalar_t v) { smooth += a.w(c) * (max - a.logit(v)); });
      }
      smooth = walk.sum(smooth, shared) + a.total_weight() * log_sum;
    }
    if (walk.leader()) {
      const T nll = a.w(target) * ((max - x_t) + log_sum);
      if (out.smooth) {  // torch's split: the two reduced apart
        out.smooth[p] = ignored ? T(0) : smooth;
        out.loss[p] = ignored ? T(0) : nll;
      } else {
        const T mixed = a.eps_c != T(0) ? a.keep * nll + a.eps_c * smooth : nll;
        out.loss[p] = ignored ? T(0) : a.with_z(mixed, lse);
      }
      out.weight[p] = ignored ? T(0) : a.w(target);
    }
  }
  if (gi) ce_gradient(walk, x, q, target, scale[p], lse, a, gi, shared);
}

// Streaming (uncached) rows take at most 512 threads: 128 registers each hold the kernels
// without spills, where 1024 threads' 64 spilled (ptxas).
constexpr int kStreamThreads = 512;

template <typename scalar_t, typename T, int kPacks>
__global__ void __launch_bounds__(kPacks == 0 ? kStreamThreads : cached_threads_limit(kPacks))
ce_rows_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ q,
               const int64_t* __restrict__ targets, ClassArgs<T> a, ForwardOut<T> out,
               scalar_t* __restrict__ gi, Scale<T> scale, int64_t positions, bool packed) {
  __shared__ Shared<T> shared;
  for (int64_t p = blockIdx.x; p < positions; p += gridDim.x) {
    ce_position(row_walk<scalar_t, kPacks>(x, p, a.classes, packed), p, x, q, targets, a, out, gi,
                scale, shared);
  }
}

// A row too long for one block: a cluster of blocks per row (sm_90), launched along x, cluster c
// walking positions c, c + clusters, ...; the row is read once.
template <typename scalar_t, typename T, int kPacks>
__global__ void __launch_bounds__(kStreamThreads)
ce_cluster_rows_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ q,
                       const int64_t* __restrict__ targets, ClassArgs<T> a, ForwardOut<T> out,
                       scalar_t* __restrict__ gi, Scale<T> scale, int64_t positions) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  __shared__ Shared<T> shared;
  const int64_t rank = cooperative_groups::this_cluster().block_rank();
  for (int64_t p = blockIdx.x / kClusterBlocks; p < positions; p += gridDim.x / kClusterBlocks) {
    ce_position(ClusterWalk<scalar_t, kPacks>(x, p, a.classes, rank), p, x, q, targets, a, out,
                gi, scale, shared);
  }
#endif
}

// Launches ce_cluster_rows_kernel where it applies (a packed row too long for one block, on
// sm_90, its slices within kStreamThreads threads); false where it does not.
template <typename scalar_t, typename T>
bool launch_forward_clusters(const scalar_t* x, const scalar_t* q, const int64_t* t,
                             const ClassArgs<T>& a, const ForwardOut<T>& out, scalar_t* gi,
                             Scale<T> scale, int64_t positions, cudaStream_t stream) {
  const RowLaunch shape =
      cluster_row_launch<scalar_t>(a.classes, max_packs_per_thread<scalar_t>(), kStreamThreads);
  if (shape.threads > kStreamThreads) return false;
  const auto kernel_of = [](auto packs) {
    return ce_cluster_rows_kernel<scalar_t, T, decltype(packs)::value>;
  };
  return launch_clusters(shape, kernel_of, positions, stream, x, q, t, a, out, gi, scale,
                         positions);
}

template <typename scalar_t, typename T>
__global__ void ce_columns_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ q,
                                  const int64_t* __restrict__ targets, ClassArgs<T> a,
                                  ForwardOut<T> out, scalar_t* __restrict__ gi, Scale<T> scale,
                                  int64_t positions, int64_t inner) {
  Shared<T> unused;  // a thread per position shares nothing
  for (int64_t p = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; p < positions;
       p += int64_t{blockDim.x} * gridDim.x) {
    const ThreadWalk walk{(p / inner) * a.classes * inner + p % inner, inner};
    ce_position(walk, p, x, q, targets, a, out, gi, scale, unused);
  }
}

template <typename scalar_t, typename T>
__global__ void __launch_bounds__(kStreamThreads)
    ce_backward_rows_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ q,
                            const int64_t* __restrict__ targets, ClassArgs<T> a,
                            const T* __restrict__ lse, scalar_t* __restrict__ gi, Scale<T> scale,
                            int64_t positions, bool packed) {
  __shared__ Shared<T> shared;
  for (int64_t p = blockIdx.x; p < positions; p += gridDim.x) {
    ce_gradient(BlockWalk{p * a.classes, packed}, x, q, q ? 0 : targets[p], scale[p], lse[p], a,
                gi, shared);
  }
}

template <typename scalar_t, typename T>
__global__ void ce_backward_columns_kernel(const scalar_t* __restrict__ x,
                                           const scalar_t* __restrict__ q,
                                           const int64_t* __restrict__ targets, ClassArgs<T> a,
                                           const T* __restrict__ lse, scalar_t* __restrict__ gi,
                                           Scale<T> scale, int64_t positions, int64_t inner) {
  Shared<T> unused;  // a thread per position shares nothing
  for (int64_t p = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; p < positions;
       p += int64_t{blockDim.x} * gridDim.x) {
    const ThreadWalk walk{(p / inner) * a.classes * inner + p % inner, inner};
    ce_gradient(walk, x, q, q ? 0 : targets[p], scale[p], lse[p], a, gi, unused);
  }
}

// w_t of every position (0 where ignored), checking the targets.
template <typename T>
__global__ void target_weights_kernel(const int64_t* __restrict__ targets,
                                      const T* __restrict__ weight, int64_t ignore_index,
                                      int64_t classes, int64_t positions, T* __restrict__ out) {
  for (int64_t p = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; p < positions;
       p += int64_t{blockDim.x} * gridDim.x) {
    const int64_t t = targets[p];
    if (t == ignore_index) {
      out[p] = 0;
    } else {
      checked_target(t, classes);
      out[p] = weight ? weight[t] : T(1);
    }
  }
}

// The reduced loss from the float64 sums of the per-position values, in one thread:
// (1 - eps) * nll + eps / C * smooth with label smoothing on class targets, else nll; for
// 'mean' each sum divided by the denominator (summed target weights, or `count` positions).
struct Finish {
  int smooth_slot;  // index into the sums, or -1
  int weight_slot;  // index into the sums, or -1: the denominator is `count`
  double count;
  bool mean;
  bool unbatched_nll;  // class targets of a 1-D input
  double keep, eps_c;
};

template <typename scalar_t>
__global__ void finish_loss_kernel(const double* __restrict__ sums, Finish f,
                                   scalar_t* __restrict__ out) {
  const double denominator = f.weight_slot >= 0 ? sums[f.weight_slot] : f.count;
  double nll = sums[0];
  // torch's CUDA nll kernel gives an unbatched input whose one target is ignored 0, not 0 / 0.
  if (f.mean) nll /= (f.unbatched_nll && denominator == 0) ? 1.0 : denominator;
  if (f.smooth_slot < 0) {
    *out = static_cast<scalar_t>(nll);
    return;
  }
  const double smooth = f.mean ? sums[f.smooth_slot] / denominator : sums[f.smooth_slot];
  *out = static_cast<scalar_t>(nll * f.keep + smooth * f.eps_c);
}

// upstream_scale of a reduced loss in one launch: grad, or grad / denominator for 'mean'
// (summed target weights on the device, or `count` positions), as one device scalar in T.
template <typename scalar_t, typename T>
__global__ void reduced_scale_kernel(const scalar_t* __restrict__ grad,
                                     const double* __restrict__ denominator, double count,
                                     bool mean, T* __restrict__ out) {
  const double g = static_cast<double>(*grad);
  *out = static_cast<T>(mean ? g / (denominator ? *denominator : count) : g);
}

// ---- host side ------------------------------------------------------------------------------

// w_t of every position into `out` (accumulation dtype), checking every target on the device.
void write_target_weights(const Prepared& p, int64_t ignore_index, const at::Tensor& out) {
  const int64_t positions = p.target.numel();
  if (positions == 0) return;
  PYOPS_DISPATCH_FLOAT_DOUBLE(out.scalar_type(), p.op, [&] {
    target_weights_kernel<<<blocks_for(positions), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        p.target.const_data_ptr<int64_t>(),
        p.weight.defined() ? p.weight.const_data_ptr<scalar_t>() : nullptr, ignore_index,
        p.shape.dim, positions, out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// The 'mean' denominator of class targets as a float64 device scalar: the summed weights of the
// targets that are not ignored.
at::Tensor target_weight_sum(const Prepared& p, int64_t ignore_index) {
  const auto acc = acc_dtype(p.input.scalar_type());
  auto weights = at::empty({p.target.numel()}, p.input.options().dtype(acc));
  write_target_weights(p, ignore_index, weights);
  return weights.sum(at::kDouble);
}

at::Tensor denominator_of(const Prepared& p, int64_t ignore_index) {
  return p.soft ? soft_denominator(p) : target_weight_sum(p, ignore_index);
}

// The per-position values a forward writes, one row each of [rows, positions] in the
// accumulation dtype, so that one sum reduces them all: the losses; the smoothing terms (class
// targets with label smoothing); the target weights (class targets).
struct PositionValues {
  at::Tensor rows, loss, smooth, weight;  // loss, smooth and weight are rows, or undefined
  int smooth_row = -1, weight_row = -1;   // their indices in rows, -1 where absent
};

PositionValues position_values(int64_t positions, bool smooth, bool weight,
                               const at::TensorOptions& options) {
  PositionValues v;
  v.rows = at::empty({1 + int64_t{smooth} + int64_t{weight}, positions}, options);
  v.loss = v.rows[0];
  int next = 1;
  if (smooth) {
    v.smooth_row = next++;
    v.smooth = v.rows[v.smooth_row];
  }
  if (weight) {
    v.weight_row = next++;
    v.weight = v.rows[v.weight_row];
  }
  return v;
}

// The loss output in `dtype`: per position for 'none'; else one sum over the positions and one
// finishing thread.
at::Tensor loss_output(const PositionValues& v, const Prepared& p, int64_t reduction,
                       double label_smoothing, at::ScalarType dtype) {
  if (reduction == kNone) {
    return class_loss_output(v.loss, v.smooth, reduction, at::Tensor(), at::Tensor(), p,
                             label_smoothing, dtype);
  }
  const auto sums = v.rows.sum(/*dim=*/1, /*keepdim=*/false, at::kDouble);
  auto out = at::empty({}, p.input.options().dtype(dtype));
  const Finish f{v.smooth_row,
                 v.weight_row,
                 soft_denominator_value(p),
                 reduction == kMean,
                 p.class_dim == 0 && !p.soft,
                 1.0 - label_smoothing,
                 label_smoothing / static_cast<double>(p.shape.dim)};
  PYOPS_DISPATCH_FLOATING(dtype, p.op, [&] {
    finish_loss_kernel<<<1, 1, 0, at::cuda::getCurrentCUDAStream()>>>(
        sums.const_data_ptr<double>(), f, out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// The upstream gradient as the kernels read it (see upstream_scale). A reduced loss' grad of the
// input's dtype on its device, as autograd passes it, takes one launch (with the 'mean'
// denominator of class targets, two more).
at::Tensor scale_for(const at::Tensor& grad, int64_t reduction, const Prepared& p,
                     int64_t ignore_index) {
  const int64_t positions = p.shape.outer * p.shape.inner;
  const auto acc = acc_dtype(p.input.scalar_type());
  const bool mean = reduction == kMean;
  if (reduction == kNone || grad.scalar_type() != p.input.scalar_type() ||
      grad.device() != p.input.device()) {
    return upstream_scale(grad, reduction, mean ? denominator_of(p, ignore_index) : at::Tensor(),
                          positions, acc);
  }
  check_upstream_grad(grad, reduction, positions);
  const auto denominator = mean && !p.soft ? target_weight_sum(p, ignore_index) : at::Tensor();
  auto scale = at::empty({}, grad.options().dtype(acc));
  const auto g = grad.reshape({});
  PYOPS_DISPATCH_FLOATING(grad.scalar_type(), p.op, [&] {
    using T = at::opmath_type<scalar_t>;
    reduced_scale_kernel<<<1, 1, 0, at::cuda::getCurrentCUDAStream()>>>(
        g.const_data_ptr<scalar_t>(),
        denominator.defined() ? denominator.const_data_ptr<double>() : nullptr,
        soft_denominator_value(p), mean, scale.mutable_data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return scale;
}

// upstream_scale's result as the kernels read it: per position, or one value for all.
template <typename T>
Scale<T> scale_of(const at::Tensor& scale) {
  return {scale.const_data_ptr<T>(), scale.dim() == 0 ? 0 : 1};
}

template <typename T>
ClassArgs<T> class_args(const Prepared& p, const ClassOptions& o, const at::Tensor& weight_sum) {
  const int64_t classes = p.shape.dim;
  const bool weighted = p.weight.defined();
  return {classes,
          o.ignore_index,
          static_cast<T>(1.0 - o.label_smoothing),
          static_cast<T>(o.label_smoothing / static_cast<double>(classes)),
          weighted ? p.weight.const_data_ptr<T>() : nullptr,
          weighted ? weight_sum.const_data_ptr<T>() : nullptr,
          static_cast<T>(o.lse_square_scale),
          static_cast<T>(o.softcap)};
}

at::Tensor sum_of_weights(const Prepared& p) {
  return p.weight.defined() ? p.weight.sum() : at::Tensor();
}

// Runs the forward kernel over every position (gi: also write the gradient, scaled by `scale`).
template <typename scalar_t, typename T>
void launch_forward(const Prepared& p, const ClassArgs<T>& a, const ForwardOut<T>& out,
                    scalar_t* gi, Scale<T> scale) {
  const auto& s = p.shape;
  const int64_t positions = s.outer * s.inner;
  const scalar_t* x = p.input.const_data_ptr<scalar_t>();
  const scalar_t* q = p.soft ? p.target.const_data_ptr<scalar_t>() : nullptr;
  const int64_t* t = p.soft ? nullptr : p.target.const_data_ptr<int64_t>();
  const auto stream = at::cuda::getCurrentCUDAStream();
  if (s.inner == 1) {
    const bool packed = rows_packable(x, gi, s.dim) && (!q || aligned16(q));
    // Only a second pass over the row (the gradient, the smoothing term, soft targets) gains
    // from one block holding it: the plain forward streams it once (80 % of copy at 8192x128256
    // float32). A row one block cannot hold goes to a cluster of blocks where one fits: read
    // once, its exps taken after the max is known (a streamed bfloat16 row reached 41 %).
    const bool second_pass = gi || q || a.eps_c != T(0);
    RowLaunch shape = row_launch<scalar_t>(s.dim, packed, max_packs_per_thread<scalar_t>(), 1024);
    if (packed && shape.packs_per_thread == 0 &&
        launch_forward_clusters(x, q, t, a, out, gi, scale, positions, stream)) {
      return;
    }
    if (!second_pass) shape.packs_per_thread = 0;
    if (shape.packs_per_thread == 0) shape.threads = row_threads(s.dim, kStreamThreads);
    with_packs_per_thread(shape, [&](auto packs) {
      ce_rows_kernel<scalar_t, T, decltype(packs)::value>
          <<<row_blocks(positions), shape.threads, 0, stream>>>(x, q, t, a, out, gi, scale,
                                                                positions, packed);
    });
  } else {
    ce_columns_kernel<<<blocks_for(positions), kThreads, 0, stream>>>(
        x, q, t, a, out, gi, scale, positions, s.inner);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The forward, the loss in `loss_dtype`; with a defined `grad_out` (laid out like the prepared
// input), the gradient of the reduced loss too, for an upstream gradient of one.
std::tuple<at::Tensor, at::Tensor> ce_forward(const char* op, const at::Tensor& input,
                                              const at::Tensor& target,
                                              const std::optional<at::Tensor>& weight,
                                              int64_t reduction, const ClassOptions& options,
                                              const at::Tensor& grad_out,
                                              at::ScalarType loss_dtype) {
  check_reduction(reduction);
  const int64_t ignore_index = options.ignore_index;
  const c10::cuda::CUDAGuard guard(input.device());
  const Prepared prep = prepare_classes(op, input, target, weight, /*allow_soft=*/true);
  const auto acc = acc_dtype(input.scalar_type());
  const auto& s = prep.shape;
  const int64_t positions = s.outer * s.inner;
  const auto values = position_values(positions, options.split_smoothing(prep.soft),
                                      /*weight=*/!prep.soft, input.options().dtype(acc));
  auto lse = at::empty(prep.position_shape, input.options().dtype(acc));
  const auto weight_sum = sum_of_weights(prep);
  at::Tensor scale;
  if (grad_out.defined()) {  // the fused gradient needs the 'mean' denominator before the pass
    scale = upstream_scale(at::ones({}, input.options().dtype(acc)), reduction,
                           reduction == kMean ? denominator_of(prep, ignore_index) : at::Tensor(),
                           positions, acc);
  }
  if (positions > 0 && s.dim > 0) {
    PYOPS_DISPATCH_FLOATING(input.scalar_type(), op, [&] {
      using T = at::opmath_type<scalar_t>;
      const auto row = [](const at::Tensor& t) {
        return t.defined() ? t.mutable_data_ptr<T>() : nullptr;
      };
      const ForwardOut<T> out{row(values.loss), row(values.smooth), row(values.weight),
                              lse.mutable_data_ptr<T>()};
      launch_forward<scalar_t, T>(
          prep, class_args<T>(prep, options, weight_sum), out,
          grad_out.defined() ? grad_out.mutable_data_ptr<scalar_t>() : nullptr,
          grad_out.defined() ? scale_of<T>(scale) : Scale<T>{nullptr, 0});
    });
  } else {  // no positions or no classes: still every target checked, as torch
    values.rows.zero_();
    if (values.weight.defined()) write_target_weights(prep, ignore_index, values.weight);
    lse.fill_(-std::numeric_limits<double>::infinity());
    if (grad_out.defined()) grad_out.zero_();
  }
  return {loss_output(values, prep, reduction, options.label_smoothing, loss_dtype), lse};
}

std::tuple<at::Tensor, at::Tensor> cross_entropy(const at::Tensor& input, const at::Tensor& target,
                                                 const std::optional<at::Tensor>& weight,
                                                 int64_t reduction, int64_t ignore_index,
                                                 double label_smoothing, double lse_square_scale,
                                                 double softcap) {
  return ce_forward("pyops::cross_entropy", input, target, weight, reduction,
                    class_options(ignore_index, label_smoothing, lse_square_scale, softcap),
                    at::Tensor(), input.scalar_type());
}

// The kernels of cross_entropy_backward's host code (loss_inputs.h).
struct CrossEntropyKernels {
  static at::Tensor scale(const at::Tensor& grad, int64_t reduction, const Prepared& prep,
                          int64_t ignore_index) {
    return scale_for(grad, reduction, prep, ignore_index);
  }

  template <typename scalar_t>
  static void backward(const Prepared& prep, const ClassOptions& options, const at::Tensor& lse,
                       const at::Tensor& scale, at::Tensor& result) {
    using T = at::opmath_type<scalar_t>;
    const auto& s = prep.shape;
    const int64_t positions = s.outer * s.inner;
    const auto weight_sum = sum_of_weights(prep);
    const auto a = class_args<T>(prep, options, weight_sum);
    const scalar_t* x = prep.input.const_data_ptr<scalar_t>();
    const scalar_t* q = prep.soft ? prep.target.const_data_ptr<scalar_t>() : nullptr;
    const int64_t* t = prep.soft ? nullptr : prep.target.const_data_ptr<int64_t>();
    scalar_t* gi = result.mutable_data_ptr<scalar_t>();
    const Scale<T> sc = scale_of<T>(scale);
    const auto stream = at::cuda::getCurrentCUDAStream();
    if (s.inner == 1) {
      const bool packed = rows_packable(x, gi, s.dim) && (!q || aligned16(q));
      ce_backward_rows_kernel<<<row_blocks(positions), row_threads(s.dim, kStreamThreads), 0,
                                stream>>>(x, q, t, a, lse.const_data_ptr<T>(), gi, sc, positions,
                                          packed);
    } else {
      ce_backward_columns_kernel<<<blocks_for(positions), kThreads, 0, stream>>>(
          x, q, t, a, lse.const_data_ptr<T>(), gi, sc, positions, s.inner);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

// The logits are read once: the gradient is written in the same pass as the loss, into
// grad_input directly when it has the layout the kernel walks (input itself included).
at::Tensor cross_entropy_grad_in_forward(const at::Tensor& input, const at::Tensor& target,
                                         const std::optional<at::Tensor>& weight,
                                         int64_t reduction, int64_t ignore_index,
                                         double label_smoothing, at::Tensor& grad_input,
                                         double lse_square_scale, double softcap) {
  check_grad_in_forward(input, reduction, grad_input);
  const auto walked = dense(input);
  const bool direct = grad_input.strides() == walked.strides() &&
                      positions_in_logical_order(walked, input.dim() == 1 ? 0 : 1);
  auto buffer = direct ? grad_input : at::empty_like(walked);
  auto loss = std::get<0>(ce_forward(
      "pyops::cross_entropy_grad_in_forward", input, target, weight, reduction,
      class_options(ignore_index, label_smoothing, lse_square_scale, softcap), buffer,
      acc_dtype(input.scalar_type())));
  if (!direct) grad_input.copy_(buffer);
  return loss;
}

template <typename scalar_t, typename T>
__global__ void scale_unless_one_kernel(scalar_t* __restrict__ data, const T* __restrict__ scale,
                                        int64_t n) {
  const T s = *scale;
  if (s == T(1)) return;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n;
       i += int64_t{blockDim.x} * gridDim.x) {
    data[i] = static_cast<scalar_t>(static_cast<T>(data[i]) * s);
  }
}

void scale_unless_one_(at::Tensor& self, const at::Tensor& scale) {
  TORCH_CHECK(scale.numel() == 1, "scale_unless_one_: scale must have one element");
  TORCH_CHECK(self.is_non_overlapping_and_dense(), "scale_unless_one_: self must be dense");
  const c10::cuda::CUDAGuard guard(self.device());
  if (self.numel() == 0) return;
  constexpr const char* op = "pyops::scale_unless_one_";
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, self.scalar_type(), op, [&] {
    using T = at::opmath_type<scalar_t>;
    const auto s = scale.reshape({}).to(self.device(), c10::CppTypeToScalarType<T>::value);
    scale_unless_one_kernel<<<blocks_for(self.numel()), kThreads, 0,
                              at::cuda::getCurrentCUDAStream()>>>(
        self.mutable_data_ptr<scalar_t>(), s.const_data_ptr<T>(), self.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// ---- nll_loss -------------------------------------------------------------------------------

// Loss and target weight (forward) or gradient (backward) of every position from its target's
// element.
template <typename scalar_t, typename T>
__global__ void nll_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ targets,
                           const T* __restrict__ weight, int64_t ignore_index, Shape3 s,
                           T* __restrict__ losses, T* __restrict__ target_weights,
                           scalar_t* __restrict__ gi, Scale<T> scale) {
  const int64_t positions = s.outer * s.inner;
  for (int64_t p = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; p < positions;
       p += int64_t{blockDim.x} * gridDim.x) {
    const int64_t t = targets[p];
    const bool ignored = t == ignore_index;
    if (!ignored) checked_target(t, s.dim);
    const T w = ignored ? T(0) : (weight ? weight[t] : T(1));
    const int64_t at = (p / s.inner) * s.dim * s.inner + t * s.inner + p % s.inner;
    if (losses) {
      losses[p] = ignored ? T(0) : -w * static_cast<T>(x[at]);
      target_weights[p] = w;
    }
    if (gi && !ignored) gi[at] = static_cast<scalar_t>(-w * scale[p]);
  }
}

template <typename scalar_t, typename T>
void launch_nll(const Prepared& p, int64_t ignore_index, T* losses, T* target_weights,
                scalar_t* gi, Scale<T> scale) {
  const int64_t positions = p.shape.outer * p.shape.inner;
  if (positions == 0) return;
  nll_kernel<<<blocks_for(positions), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      p.input.const_data_ptr<scalar_t>(), p.target.const_data_ptr<int64_t>(),
      p.weight.defined() ? p.weight.const_data_ptr<T>() : nullptr, ignore_index, p.shape, losses,
      target_weights, gi, scale);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor nll_loss(const at::Tensor& input, const at::Tensor& target,
                    const std::optional<at::Tensor>& weight, int64_t reduction,
                    int64_t ignore_index) {
  check_reduction(reduction);
  const c10::cuda::CUDAGuard guard(input.device());
  const Prepared prep =
      prepare_classes("pyops::nll_loss", input, target, weight, /*allow_soft=*/false);
  const int64_t positions = prep.shape.outer * prep.shape.inner;
  const auto values = position_values(positions, /*smooth=*/false, /*weight=*/true,
                                      input.options().dtype(acc_dtype(input.scalar_type())));
  PYOPS_DISPATCH_FLOATING(input.scalar_type(), prep.op, [&] {
    using T = at::opmath_type<scalar_t>;
    launch_nll<scalar_t, T>(prep, ignore_index, values.loss.mutable_data_ptr<T>(),
                            values.weight.mutable_data_ptr<T>(), nullptr, {nullptr, 0});
  });
  return loss_output(values, prep, reduction, /*label_smoothing=*/0.0,
                     input.scalar_type());
}

at::Tensor nll_loss_backward(const at::Tensor& grad, const at::Tensor& input,
                             const at::Tensor& target, const std::optional<at::Tensor>& weight,
                             int64_t reduction, int64_t ignore_index) {
  check_reduction(reduction);
  const c10::cuda::CUDAGuard guard(input.device());
  const Prepared prep =
      prepare_classes("pyops::nll_loss_backward", input, target, weight, /*allow_soft=*/false);
  auto result = at::zeros_like(prep.input);
  const auto scale = scale_for(grad, reduction, prep, ignore_index);
  PYOPS_DISPATCH_FLOATING(input.scalar_type(), prep.op, [&] {
    using T = at::opmath_type<scalar_t>;
    launch_nll<scalar_t, T>(prep, ignore_index, nullptr, nullptr,
                            result.mutable_data_ptr<scalar_t>(), scale_of<T>(scale));
  });
  return in_input_layout(input, result);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CUDA, m) { PYOPS_CROSS_ENTROPY_KERNELS(m); }

}  // namespace pyops::cuda
