// linear_cross_entropy: cross_entropy(input @ linear_weight^T + linear_bias, target) without the
// logits of all positions at once. A chunk of positions at a time, its logits go into one reused
// buffer (ATen's matmul: oneDNN/MKL on CPU, cuBLAS on CUDA), the fused cross-entropy kernel turns
// them into their gradient in place, and two more matmuls give the chunk's share of the input's,
// weight's and bias' gradients. Host code only (ATen and pyops operators through the
// dispatcher), the same for every backend. The loss comes out in float32 for half types (torch's
// under autocast; the cross-entropy kernels' 'sum' is float32 through the fused one only);
// pyops.functional rounds it to the input's dtype elsewhere.
#include "loss_inputs.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/cpu/Utils.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdlib>

namespace pyops {
namespace {

using at::Tensor;
using OptionalTensor = std::optional<Tensor>;
using Mask = std::array<bool, 3>;  // gradients wanted: input, linear_weight, linear_bias

// A chunk's buffers (its logits, and a CPU half-type chunk's weight gradient) at most this many
// bytes, when the caller gives no chunk size: 64 MB in all with the matmuls' own workspace.
// Matmuls of fewer rows run markedly slower.
constexpr int64_t kChunkBytes = int64_t{56} << 20;
// A CPU half-type chunk's weight gradient is rounded and added a block of classes at a time,
// through a buffer of at most this many bytes.
constexpr int64_t kProductBytes = int64_t{4} << 20;

struct Args {
  const Tensor& input;          // (N, H)
  const Tensor& linear_weight;  // (C, H)
  const OptionalTensor& linear_bias;
  const Tensor& target;         // (N) class indices or (N, C) probabilities
  const OptionalTensor& weight;
  int64_t reduction, ignore_index;
  double label_smoothing;
  int64_t chunk_size;

  int64_t rows() const { return input.size(0); }
  int64_t classes() const { return linear_weight.size(0); }
  bool soft() const { return target.is_floating_point(); }
  // Whether a half-type chunk's logits go to the cross-entropy kernels widened to float32: for
  // float32 losses per position, and for float32 class weights or probabilities (autocast's),
  // which the half type would round. The kernels take one dtype.
  bool widened_chunks() const {
    const auto dtype = input.scalar_type(), acc = acc_dtype(dtype);
    return acc != dtype && (reduction == kNone || (soft() && target.scalar_type() == acc) ||
                            (weight && weight->defined() && weight->scalar_type() == acc));
  }
  // The dtype the cross-entropy kernels see.
  at::ScalarType kernel_dtype() const {
    return widened_chunks() ? acc_dtype(input.scalar_type()) : input.scalar_type();
  }
  // The class weights, and a chunk's target, in the kernels' dtype (they take one).
  OptionalTensor kernel_weight() const {
    return weight && weight->defined() ? OptionalTensor(weight->to(kernel_dtype())) : weight;
  }
  Tensor kernel_target(int64_t r, int64_t rows) const {
    const auto t = target.narrow(0, r, rows);
    return soft() ? t.to(kernel_dtype()) : t;
  }
  const Tensor* bias() const {
    return linear_bias && linear_bias->defined() ? &*linear_bias : nullptr;
  }
  int64_t chunk() const {
    if (chunk_size > 0) return chunk_size;
    const bool product = input.is_cpu() && acc_dtype(input.scalar_type()) != input.scalar_type();
    const int64_t product_bytes =
        product ? std::min(linear_weight.numel() * input.element_size(), kProductBytes) : 0;
    const int64_t budget = std::max(kChunkBytes / 4, kChunkBytes - product_bytes);
    const int64_t row_bytes = classes() * (input.element_size() + (widened_chunks() ? 4 : 0));
    const int64_t fit = budget / std::max<int64_t>(1, row_bytes);
    // Whole multiples of 64 rows: oneDNN's bfloat16 matmul of 851 rows took 1.3x that of 852.
    return fit >= 64 ? fit - fit % 64 : std::max<int64_t>(fit, 1);
  }
};

constexpr const char* kName = "pyops::linear_cross_entropy";

void check(const Args& a) {
  check_reduction(a.reduction);
  TORCH_CHECK(a.input.dim() == 2 && a.linear_weight.dim() == 2, kName,
              ": expected input (N, H) and linear_weight (C, H), got ", shape_str(a.input.sizes()),
              " and ", shape_str(a.linear_weight.sizes()));
  TORCH_CHECK(a.input.size(1) == a.linear_weight.size(1), kName,
              ": expected equal input and linear_weight last dimensions, got ",
              num_str(a.input.size(1)), " and ", num_str(a.linear_weight.size(1)));
  TORCH_CHECK(a.input.scalar_type() == a.linear_weight.scalar_type() &&
                  (!a.bias() || a.bias()->scalar_type() == a.input.scalar_type()),
              kName, ": input, linear_weight and linear_bias must have one dtype");
  // Class weights and probabilities may also come in float32 for half types (autocast's), so
  // that the losses of 'none', widened, use them as given.
  const auto dtype = a.input.scalar_type();
  const auto fits = [&](const Tensor& t) {
    return t.scalar_type() == dtype || t.scalar_type() == acc_dtype(dtype);
  };
  TORCH_CHECK(!a.weight || !a.weight->defined() || fits(*a.weight), kName,
              ": expected weight of dtype ", a.input.scalar_type(),
              " (or float32 for half types), got ", a.weight->scalar_type());
  TORCH_CHECK(!a.soft() || fits(a.target), kName, ": expected probabilities of dtype ",
              a.input.scalar_type(), " (or float32 for half types), got ",
              a.target.scalar_type());
  TORCH_CHECK(!a.bias() || (a.bias()->dim() == 1 && a.bias()->size(0) == a.classes()), kName,
              ": expected linear_bias of shape [", num_str(a.classes()), "], got ",
              shape_str(a.bias()->sizes()));
  const bool target_fits = a.soft() ? (a.target.dim() == 2 && a.target.size(0) == a.rows() &&
                                        a.target.size(1) == a.classes())
                                     : (a.target.dim() == 1 && a.target.size(0) == a.rows());
  TORCH_CHECK(target_fits,
              kName, ": expected target of shape [", num_str(a.rows()), "] (class indices) or [",
              num_str(a.rows()), ", ", num_str(a.classes()), "] (probabilities), got ",
              shape_str(a.target.sizes()));
}

// pyops::<kName> through the dispatcher, looked up once.
template <const char* kName, typename Signature>
const c10::TypedOperatorHandle<Signature>& op() {
  static const auto handle =
      c10::Dispatcher::singleton().findSchemaOrThrow(kName, "").template typed<Signature>();
  return handle;
}

constexpr char kCrossEntropy[] = "pyops::cross_entropy";
constexpr char kGradInForward[] = "pyops::cross_entropy_grad_in_forward";
constexpr char kCrossEntropyBackward[] = "pyops::cross_entropy_backward";

using CrossEntropySig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&,
                                                   const OptionalTensor&, int64_t, int64_t, double,
                                                   double, double);
using GradInForwardSig = Tensor(const Tensor&, const Tensor&, const OptionalTensor&, int64_t,
                                int64_t, double, Tensor&, double, double);
using CrossEntropyBackwardSig = Tensor(const Tensor&, const Tensor&, const Tensor&,
                                       const OptionalTensor&, int64_t, int64_t, double,
                                       const Tensor&, double, double);

// Runs fn(first row, rows, logits of those rows, the same in the kernels' dtype) chunk by chunk;
// the logits live in one buffer, their widened copy (where Args::widened_chunks) in another.
template <typename Fn>
void for_each_chunk(const Args& a, const Fn& fn) {
  const int64_t n = a.rows(), step = std::min(a.chunk(), std::max<int64_t>(n, 1));
  Tensor buffer = at::empty({step, a.classes()}, a.input.options());
  const auto kernel_dtype = a.kernel_dtype();
  const bool widens = kernel_dtype != buffer.scalar_type();
  const Tensor widened = widens ? at::empty(buffer.sizes(), buffer.options().dtype(kernel_dtype))
                                : Tensor();
  const auto w_t = a.linear_weight.t();
  for (int64_t r = 0; r < n; r += step) {
    const int64_t rows = std::min(step, n - r);
    auto logits = buffer.narrow(0, 0, rows);
    const auto x = a.input.narrow(0, r, rows);
    if (a.bias()) {
      at::addmm_out(logits, *a.bias(), x, w_t);
    } else {
      at::mm_out(logits, x, w_t);
    }
    fn(r, rows, logits, widens ? widened.narrow(0, 0, rows).copy_(logits) : logits);
  }
}

// The 'mean' denominator, as cross_entropy's: the positions for probabilities, else the summed
// weights of the targets not ignored. A tensor, so no host synchronisation.
Tensor mean_denominator(const Args& a, const OptionalTensor& weight) {
  const auto opts = a.input.options().dtype(at::kDouble);
  if (a.soft()) return at::scalar_tensor(static_cast<double>(a.rows()), opts);
  const auto kept = a.target != a.ignore_index;
  if (!weight || !weight->defined()) return kept.sum(at::kDouble);
  const auto safe = at::where(kept, a.target, at::zeros({}, a.target.options()));
  return at::where(kept, weight->to(at::kDouble).index_select(0, safe),
                   at::zeros({}, opts)).sum();
}

// The gradients of the matmuls, accumulated chunk by chunk; the weight's and the bias' in float32
// for half types.
struct Gradients {
  Mask mask;
  Tensor input, weight, bias, weight_product;  // weight_product: a half-type chunk's, on CPU

  Gradients(const Args& a, const Mask& m) : mask(m) {
    const auto acc = acc_dtype(a.input.scalar_type());
    const auto none = at::empty({0}, a.input.options());
    input = m[0] ? at::empty_like(a.input, at::MemoryFormat::Contiguous) : none;
    weight = m[1] ? at::zeros(a.linear_weight.sizes(), a.input.options().dtype(acc)) : none;
    bias = m[2] ? at::zeros({a.classes()}, a.input.options().dtype(acc)) : none;
  }

  void add(const Args& a, int64_t r, int64_t rows, const Tensor& grad_logits) {
    const auto x = a.input.narrow(0, r, rows);
    if (mask[0]) {
      auto rows_of = input.narrow(0, r, rows);
      at::mm_out(rows_of, grad_logits, a.linear_weight);
    }
    if (mask[1]) {
      const auto g_t = grad_logits.t();
      if (weight.scalar_type() == x.scalar_type()) {
        weight.addmm_(g_t, x);
      } else if (weight.is_cuda()) {  // cuBLAS accumulates half products into float32
        at::addmm_out(weight, weight, g_t, x, weight.scalar_type());
      } else {  // CPU matmuls have no float32 output for half inputs: round each chunk once,
                // a block of classes at a time (a small buffer, not a second weight)
        const int64_t classes = weight.size(0);
        const int64_t block = std::clamp<int64_t>(
            kProductBytes / std::max<int64_t>(1, x.size(1) * x.element_size()), 1, classes);
        if (!weight_product.defined()) weight_product = at::empty({block, x.size(1)}, x.options());
        for (int64_t c = 0; c < classes; c += block) {
          const int64_t n = std::min(block, classes - c);
          auto product = weight_product.narrow(0, 0, n);
          at::mm_out(product, g_t.narrow(0, c, n), x);
          weight.narrow(0, c, n).add_(product);
        }
      }
    }
    if (mask[2]) bias.add_(grad_logits.sum(0, false, bias.scalar_type()));
  }

  // In the parameters' dtypes, divided by the 'mean' denominator where given. A denominator of
  // 0 (every target ignored) leaves the zero gradients as they are, as in torch.
  std::tuple<Tensor, Tensor, Tensor> finish(const Args& a, const Tensor& denominator) {
    const auto divisor = denominator.defined()
        ? at::where(denominator == 0, at::ones_like(denominator), denominator) : Tensor();
    const auto finish_one = [&](Tensor& g, at::ScalarType dtype) {
      if (divisor.defined() && g.numel()) g.div_(divisor);
      return as_dtype(g, dtype);
    };
    const auto dtype = a.input.scalar_type();
    return {finish_one(input, dtype), finish_one(weight, dtype), finish_one(bias, dtype)};
  }
};

// Whether this CPU has instructions for matmuls in the half type `dtype`: without them oneDNN
// emulates those matmuls, several times slower than float32's (10-60x here, by layout).
// PYOPS_ASSUME_NATIVE_HALF_MATMUL=1 says yes anyway, so that the tests of a CPU without them
// also run the half-type path that CUDA and such CPUs take.
bool native_cpu_matmul(at::ScalarType dtype) {
  static const bool assumed = std::getenv("PYOPS_ASSUME_NATIVE_HALF_MATMUL") != nullptr;
  if (assumed) return true;
  static const auto caps = at::cpu::get_cpu_capabilities();
  const auto has = [](const char* name) {
    const auto it = caps.find(name);
    return it != caps.end() && it->second.isBool() && it->second.toBool();
  };
  return dtype == at::kBFloat16 ? has("avx512_bf16") || has("amx_bf16")
                                : has("avx512_fp16") || has("amx_fp16");
}

// There the head computes in float32 and rounds its results once (the inputs widened: more
// memory, but more accurate than torch's half logits, and faster than torch).
bool widen(const Tensor& input) {
  return input.is_cpu() && at::isReducedFloatingType(input.scalar_type()) &&
         !native_cpu_matmul(input.scalar_type());
}

Tensor wide(const Tensor& t) { return t.is_floating_point() ? t.to(at::kFloat) : t; }
OptionalTensor wide(const OptionalTensor& t) {
  return t && t->defined() ? OptionalTensor(wide(*t)) : t;
}

template <typename... T>
std::tuple<T...> narrowed(std::tuple<T...> results, at::ScalarType dtype) {
  return std::apply([&](auto&... r) { return std::tuple<T...>{r.to(dtype)...}; }, results);
}

Tensor linear_cross_entropy(const Tensor& input, const Tensor& linear_weight,
                            const OptionalTensor& linear_bias, const Tensor& target,
                            const OptionalTensor& weight, int64_t reduction, int64_t ignore_index,
                            double label_smoothing, int64_t chunk_size, double lse_square_scale,
                            double softcap) {
  const Args a{input, linear_weight, linear_bias, target, weight, reduction, ignore_index,
               label_smoothing, chunk_size};
  check(a);
  if (widen(input)) {
    return linear_cross_entropy(wide(input), wide(linear_weight), wide(linear_bias), wide(target),
                                wide(weight), reduction, ignore_index, label_smoothing,
                                chunk_size, lse_square_scale, softcap);
  }
  const auto& ce = op<kCrossEntropy, CrossEntropySig>();
  const auto kernel_dtype = a.kernel_dtype(), acc = acc_dtype(input.scalar_type());
  const auto w = a.kernel_weight();
  if (reduction == kNone) {
    auto losses = at::empty({a.rows()}, input.options().dtype(acc));
    for_each_chunk(a, [&](int64_t r, int64_t rows, const Tensor&, const Tensor& z) {
      const auto t = a.kernel_target(r, rows);
      losses.narrow(0, r, rows).copy_(std::get<0>(ce.call(z, t, w, kNone, ignore_index,
                                                          label_smoothing, lse_square_scale,
                                                          softcap)));
    });
    return losses;
  }
  // Half types take the fused kernel, whose loss is float32 (the gradient it writes over the
  // logits goes unused); cross_entropy's would be rounded to the half type.
  const auto& fused = op<kGradInForward, GradInForwardSig>();
  auto total = at::zeros({}, input.options().dtype(at::kDouble));
  for_each_chunk(a, [&](int64_t r, int64_t rows, const Tensor&, Tensor z) {
    const auto t = a.kernel_target(r, rows);
    total.add_(acc == kernel_dtype
                   ? std::get<0>(ce.call(z, t, w, kSum, ignore_index, label_smoothing,
                                         lse_square_scale, softcap))
                   : fused.call(z, t, w, kSum, ignore_index, label_smoothing, z,
                                lse_square_scale, softcap));
  });
  return (reduction == kMean ? total / mean_denominator(a, w) : total).to(acc);
}

// The loss of 'mean' or 'sum' and its gradients for an upstream gradient of one: each chunk's
// logits become their gradient in place as the loss is computed.
std::tuple<Tensor, Tensor, Tensor, Tensor> linear_cross_entropy_grads(
    const Tensor& input, const Tensor& linear_weight, const OptionalTensor& linear_bias,
    const Tensor& target, const OptionalTensor& weight, int64_t reduction, int64_t ignore_index,
    double label_smoothing, int64_t chunk_size, Mask mask, double lse_square_scale,
    double softcap) {
  const Args a{input, linear_weight, linear_bias, target, weight, reduction, ignore_index,
               label_smoothing, chunk_size};
  check(a);
  if (widen(input)) {
    const auto [loss, gi, gw, gb] = linear_cross_entropy_grads(
        wide(input), wide(linear_weight), wide(linear_bias), wide(target), wide(weight), reduction,
        ignore_index, label_smoothing, chunk_size, mask, lse_square_scale, softcap);
    const auto dtype = input.scalar_type();
    return {loss, gi.to(dtype), gw.to(dtype), gb.to(dtype)};
  }
  TORCH_CHECK(reduction != kNone, kName,
              ": gradients in the forward need reduction 'mean' or 'sum'");
  const auto& fused = op<kGradInForward, GradInForwardSig>();
  const auto dtype = input.scalar_type();
  const auto w = a.kernel_weight();
  Gradients grads(a, mask);
  auto total = at::zeros({}, input.options().dtype(at::kDouble));
  for_each_chunk(a, [&](int64_t r, int64_t rows, Tensor logits, Tensor z) {
    total.add_(fused.call(z, a.kernel_target(r, rows), w, kSum, ignore_index,
                          label_smoothing, z, lse_square_scale, softcap));
    grads.add(a, r, rows, z.scalar_type() == dtype ? z : logits.copy_(z));
  });
  const auto denominator = reduction == kMean ? mean_denominator(a, w) : Tensor();
  auto [gi, gw, gb] = grads.finish(a, denominator);
  const auto loss = denominator.defined() ? total / denominator : total;
  return {loss.to(acc_dtype(dtype)), gi, gw, gb};
}

// The gradients for any upstream gradient, recomputing the logits chunk by chunk.
std::tuple<Tensor, Tensor, Tensor> linear_cross_entropy_backward(
    const Tensor& grad, const Tensor& input, const Tensor& linear_weight,
    const OptionalTensor& linear_bias, const Tensor& target, const OptionalTensor& weight,
    int64_t reduction, int64_t ignore_index, double label_smoothing, int64_t chunk_size,
    Mask mask, double lse_square_scale, double softcap) {
  const Args a{input, linear_weight, linear_bias, target, weight, reduction, ignore_index,
               label_smoothing, chunk_size};
  check(a);
  if (widen(input)) {
    return narrowed(linear_cross_entropy_backward(wide(grad), wide(input), wide(linear_weight),
                                                  wide(linear_bias), wide(target), wide(weight),
                                                  reduction, ignore_index, label_smoothing,
                                                  chunk_size, mask, lse_square_scale, softcap),
                    input.scalar_type());
  }
  check_upstream_grad(grad, reduction, a.rows());
  const auto& ce = op<kCrossEntropy, CrossEntropySig>();
  const auto& backward = op<kCrossEntropyBackward, CrossEntropyBackwardSig>();
  const auto dtype = input.scalar_type();
  const auto w = a.kernel_weight();
  Gradients grads(a, mask);
  const auto up = reduction == kNone ? grad.reshape({-1}) : grad.reshape({});
  for_each_chunk(a, [&](int64_t r, int64_t rows, Tensor logits, const Tensor& z) {
    const auto t = a.kernel_target(r, rows);
    const auto lse = std::get<1>(ce.call(z, t, w, kNone, ignore_index, label_smoothing,
                                         lse_square_scale, softcap));
    const auto g = reduction == kNone ? up.narrow(0, r, rows) : up.expand({rows});
    const auto grad_logits = backward.call(g, z, t, w, kNone, ignore_index, label_smoothing, lse,
                                           lse_square_scale, softcap);
    grads.add(a, r, rows, grad_logits.scalar_type() == dtype ? grad_logits
                                                             : logits.copy_(grad_logits));
  });
  return grads.finish(a, reduction == kMean ? mean_denominator(a, w) : Tensor());
}

}  // namespace
}  // namespace pyops

// The same host code serves every backend: the kernels it reaches are the backend's.
TORCH_LIBRARY_IMPL(pyops, CPU, m) {
  m.impl("linear_cross_entropy", &pyops::linear_cross_entropy);
  m.impl("linear_cross_entropy_grads", &pyops::linear_cross_entropy_grads);
  m.impl("linear_cross_entropy_backward", &pyops::linear_cross_entropy_backward);
}

TORCH_LIBRARY_IMPL(pyops, CUDA, m) {
  m.impl("linear_cross_entropy", &pyops::linear_cross_entropy);
  m.impl("linear_cross_entropy_grads", &pyops::linear_cross_entropy_grads);
  m.impl("linear_cross_entropy_backward", &pyops::linear_cross_entropy_backward);
}
